//! A plugin that misbehaves on request, for the sandbox tests. The request
//! path picks the misbehaviour; `/ok` (or anything unknown) behaves, and
//! `/nap` is slow but harmless.

use std::sync::atomic::{AtomicU64, Ordering};

use natsplug_sdk::prelude::*;

struct Misbehave;

static CALLS: AtomicU64 = AtomicU64::new(0);

#[natsplug_sdk::plugin]
impl Plugin for Misbehave {
    fn request_filter(_ctx: Context, request: Request) -> Decision {
        // Counts calls served by this instance: shows instance reuse.
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        match request.path.as_str() {
            "/loop" => loop {
                std::hint::black_box(calls);
            },
            "/alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "/recurse" => Decision::next().status(recurse(u64::MAX) as u16),
            "/panic" => panic!("the plugin gave up"),
            "/bad-status" => Decision::respond(9999, "nope"),
            "/bad-header" => Decision::next().set_request_header("bad header", "x"),
            "/huge" => Decision::respond(200, vec![b'x'; 3 << 20]),
            "/flood" => {
                for i in 0..5000u32 {
                    info!("flood", index = i);
                }
                Decision::next()
            }
            "/sleep" => {
                // Busy for about 100 ms, then fine.
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(100) {
                    std::hint::black_box(calls);
                }
                Decision::next().set_request_header("x-calls", calls.to_string())
            }
            "/nap" => {
                // Asleep for 200 ms (a slow backend call, not CPU), then
                // names the host that answered, from the `host` config key.
                std::thread::sleep(std::time::Duration::from_millis(200));
                let host = natsplug_sdk::config::get("host").unwrap_or_default();
                Decision::next().set_request_header("x-host", host)
            }
            _ => Decision::next().set_request_header("x-calls", calls.to_string()),
        }
    }
}

fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        0
    } else {
        std::hint::black_box(recurse(depth - 1)) + 1
    }
}
