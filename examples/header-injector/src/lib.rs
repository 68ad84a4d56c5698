//! Adds `x-plugin: header-injector` to every request, plus the header named
//! by the `header` config key (default `x-request-id`) carrying the call's
//! request id.

use natsplug_sdk::prelude::*;

struct HeaderInjector;

#[natsplug_sdk::plugin]
impl Plugin for HeaderInjector {
    fn request_filter(ctx: Context, _request: Request) -> Decision {
        let header = config::get("header").unwrap_or_else(|| "x-request-id".into());
        Decision::next()
            .set_request_header("x-plugin", "header-injector")
            .set_request_header(header, ctx.request_id)
    }
}
