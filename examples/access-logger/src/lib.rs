//! Emits one structured `info` record per finished exchange, through the
//! host's log import: method, path, status, duration and client address.
//! Exchanges answered with a 5xx are logged at `warn`.

use natsplug_sdk::log::Level;
use natsplug_sdk::prelude::*;

struct AccessLogger;

#[natsplug_sdk::plugin]
impl Plugin for AccessLogger {
    fn logging(
        _ctx: Context,
        request: Request,
        response: Option<Response>,
        duration_ms: Option<u64>,
    ) {
        let status = response.as_ref().map(|r| r.status).unwrap_or(0);
        let client = request.client_ip.clone().unwrap_or_default();
        let user_agent = request.header("user-agent").unwrap_or("").to_string();
        let message = format!("{} {} {}", request.method, request.path, status);
        let level = if status >= 500 {
            Level::Warn
        } else {
            Level::Info
        };
        natsplug_sdk::log!(
            level,
            message,
            method = request.method.as_str(),
            path = request.path.as_str(),
            status = status,
            duration_ms = duration_ms.unwrap_or(0),
            client_ip = client,
            user_agent = user_agent
        );
    }
}
