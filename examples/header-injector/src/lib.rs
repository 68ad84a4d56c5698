//! Adds `x-plugin: header-injector` to every request, plus the header named
//! by the `header` config key (default `x-request-id`) carrying the call's
//! request id.

use std::sync::OnceLock;

use natsplug_sdk::prelude::*;

struct HeaderInjector;

/// The header name, read from the config once per instance: a plugin's
/// config does not change while an instance lives.
fn header_name() -> &'static str {
    static HEADER: OnceLock<String> = OnceLock::new();
    HEADER.get_or_init(|| config::get("header").unwrap_or_else(|| "x-request-id".into()))
}

#[natsplug_sdk::plugin]
impl Plugin for HeaderInjector {
    fn request_filter(ctx: Context, _request: Request) -> Decision {
        Decision::next()
            .set_request_header("x-plugin", "header-injector")
            .set_request_header(header_name(), ctx.request_id)
    }
}
