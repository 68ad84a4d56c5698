//! A plugin that misbehaves on request, for the sandbox tests. The request
//! path picks the misbehaviour; `/ok` (or anything unknown) behaves, and
//! `/nap` is slow but harmless. With the config entry `init = "refuse"` its
//! `init` hook refuses the configuration.

use std::sync::atomic::{AtomicU64, Ordering};

use natsplug_sdk::prelude::*;

struct Misbehave;

static CALLS: AtomicU64 = AtomicU64::new(0);

#[natsplug_sdk::plugin]
impl Plugin for Misbehave {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if config.iter().any(|(k, v)| k == "init" && v == "refuse") {
            return Err("`init = \"refuse\"` is set".into());
        }
        Ok(())
    }

    fn request_filter(_ctx: Context, request: Request) -> RequestDecision {
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
            "/recurse" => RequestChanges::new()
                .set_header("x-depth", recurse(u64::MAX).to_string())
                .into(),
            "/panic" => panic!("the plugin gave up"),
            "/bad-status" => LocalResponse::new(9999).body("nope").into(),
            "/bad-header" => RequestChanges::new().set_header("bad header", "x").into(),
            "/binary-header" => RequestChanges::new()
                .set_header("x-binary", vec![0xff, 0xfe])
                .into(),
            "/huge" => LocalResponse::new(200).body(vec![b'x'; 3 << 20]).into(),
            "/flood" => {
                for i in 0..5000u32 {
                    info!("flood", index = i);
                }
                RequestDecision::next()
            }
            "/sleep" => {
                // Busy for about 100 ms, then fine.
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_millis(100) {
                    std::hint::black_box(calls);
                }
                RequestChanges::new()
                    .set_header("x-calls", calls.to_string())
                    .into()
            }
            "/nap" => {
                // Asleep for 200 ms (a slow backend call, not CPU), then
                // names the host that answered, from the `host` config key.
                std::thread::sleep(std::time::Duration::from_millis(200));
                let host = natsplug_sdk::config::get("host").unwrap_or_default();
                RequestChanges::new().set_header("x-host", host).into()
            }
            _ => RequestChanges::new()
                .set_header("x-calls", calls.to_string())
                .into(),
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
