//! Adds `x-plugin: header-injector` to every request, plus the header named
//! by the `header` config key (default `x-request-id`) carrying the call's
//! request id.

use std::sync::OnceLock;

use natsplug_sdk::prelude::*;

struct HeaderInjector;

/// The header name, set by `init` on each new instance.
static HEADER: OnceLock<String> = OnceLock::new();

#[natsplug_sdk::plugin]
impl Plugin for HeaderInjector {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let header = config
            .into_iter()
            .find_map(|(key, value)| (key == "header").then_some(value))
            .unwrap_or_else(|| "x-request-id".into());
        let _ = HEADER.set(header);
        Ok(())
    }

    fn request_filter(ctx: Context, _request: Request) -> RequestDecision {
        let header = HEADER.get().map_or("x-request-id", String::as_str);
        RequestChanges::new()
            .set_header("x-plugin", "header-injector")
            .set_header(header, ctx.request_id)
            .into()
    }
}
