//! A plugin that writes `init` and all four phases and echoes what each
//! received, for the tests of contract 0.2.0: what the host lowers into a
//! call comes back in the decision (headers, bodies, log fields), so a test
//! asserts both directions through one round trip.
//!
//! - `init` keeps its configuration entries; `request-filter` echoes them
//!   in `x-init`.
//! - `request-filter` answers `/end` itself (418), fails on `/fail`, and
//!   otherwise sets `x-seen` (the request headers as received), `x-first`
//!   and `x-all` (lookups of `x-dup`), `x-request` (the other fields and the
//!   context) and `x-init`, removes `x-drop`, replaces the body and
//!   rewrites the path.
//! - `response-filter` answers `/end` itself (502), fails on `/fail`, and
//!   otherwise adds one to the status, sets `x-seen` (the response headers),
//!   `x-request-seen` and `x-response-body`, and removes `server`.
//! - `response-body-filter` fails on a chunk `fail`, and otherwise replaces
//!   the data with what it got (the response head, the state, the data)
//!   and carries every byte so far as state, until the end of the stream.
//! - `logging` emits one `logged` record with what it got as fields.

use std::sync::OnceLock;

use natsplug_sdk::log::{Level, Value};
use natsplug_sdk::prelude::*;

struct EveryPhase;

/// The entries `init` received, on this instance.
static CONFIG: OnceLock<Vec<(String, String)>> = OnceLock::new();

#[natsplug_sdk::plugin]
impl Plugin for EveryPhase {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let _ = CONFIG.set(config);
        Ok(())
    }

    fn request_filter(ctx: Context, request: Request) -> RequestDecision {
        let seen = summary(request.fields());
        match request.path.as_str() {
            "/end" => LocalResponse::new(418)
                .header("content-type", "text/plain")
                .header("x-seen", seen)
                .body(format!("ended {} {}", request.method, request.path))
                .into(),
            "/fail" => RequestDecision::fail(format!("told to fail at {}", request.path)),
            _ => {
                let first = request.header("x-dup").unwrap_or("-").to_string();
                let all = request
                    .header_all("x-dup")
                    .map(String::from_utf8_lossy)
                    .collect::<Vec<_>>()
                    .join(",");
                let init = CONFIG.get().map_or("init not run".to_string(), |config| {
                    config
                        .iter()
                        .map(|(key, value)| format!("{key}={value}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                let body = match &request.body {
                    Some(body) => format!("got: {}", String::from_utf8_lossy(body)),
                    None => "got no body".to_string(),
                };
                RequestChanges::new()
                    .remove_header("x-drop")
                    .set_header("x-seen", seen)
                    .set_header("x-first", first)
                    .set_header("x-all", all)
                    .set_header("x-request", describe(&ctx, &request))
                    .set_header("x-init", init)
                    .replace_body(body)
                    .rewrite_path(format!("/rewritten{}", request.path))
                    .into()
            }
        }
    }

    fn response_filter(_ctx: Context, request: Request, response: Response) -> ResponseDecision {
        match request.path.as_str() {
            "/end" => LocalResponse::new(502)
                .header("x-upstream-status", response.status.to_string())
                .body("replaced by every-phase")
                .into(),
            "/fail" => ResponseDecision::fail(format!(
                "told to fail on status {} at {}",
                response.status, request.path
            )),
            _ => ResponseChanges::new()
                .status(response.status + 1)
                .remove_header("server")
                .set_header("x-seen", summary(response.fields()))
                .set_header(
                    "x-request-seen",
                    format!(
                        "{} {} {}",
                        request.method,
                        request.path,
                        summary(request.fields())
                    ),
                )
                .set_header("x-response-body", text(response.body.as_deref()))
                .into(),
        }
    }

    fn response_body_filter(
        _ctx: Context,
        response: Option<ResponseHead>,
        chunk: Chunk,
    ) -> ChunkDecision {
        if chunk.data == b"fail" {
            return ChunkDecision::fail("told to fail on a chunk `fail`");
        }
        let head = match &response {
            Some(head) => format!("{} {}", head.status, summary(head.fields())),
            None => "no head".to_string(),
        };
        let data = format!(
            "head={head}; state={}; data={}; end={}",
            text(chunk.state.as_deref()),
            String::from_utf8_lossy(&chunk.data),
            chunk.end_of_stream
        );
        let changes = ChunkChanges::new().replace_data(data);
        if chunk.end_of_stream {
            changes.into()
        } else {
            let mut state = chunk.state.unwrap_or_default();
            state.extend_from_slice(&chunk.data);
            changes.carry_state(state).into()
        }
    }

    fn logging(
        ctx: Context,
        request: Request,
        response: Option<Response>,
        duration_ms: Option<u64>,
    ) {
        let mut fields = vec![
            field("method", request.method.as_str()),
            field("path", request.path.as_str()),
            field("request_headers", summary(request.fields())),
            field("request_body", text(request.body.as_deref())),
        ];
        match &response {
            Some(response) => fields.extend([
                field("status", response.status),
                field("response_headers", summary(response.fields())),
                field("response_body", text(response.body.as_deref())),
            ]),
            None => fields.push(field("response", "none")),
        }
        match duration_ms {
            Some(duration) => fields.push(field("duration_ms", duration)),
            None => fields.push(field("duration_ms", "none")),
        }
        if let Some(session) = ctx.session_id {
            fields.push(field("session", session));
        }
        natsplug_sdk::log::log(Level::Info, "logged", &fields);
    }
}

/// A header list as `N fields: name=value, ...`, in order, as received.
fn summary(fields: Fields<'_>) -> String {
    let listed: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{name}={}", String::from_utf8_lossy(value)))
        .collect();
    format!("{} fields: {}", listed.len(), listed.join(", "))
}

/// The request's other fields and the call's context, one line.
fn describe(ctx: &Context, request: &Request) -> String {
    format!(
        "{} {} query={} host={} client-ip={} request-id={} session-id={} trace-id={}",
        request.method,
        request.path,
        request.query.as_deref().unwrap_or("none"),
        request.host.as_deref().unwrap_or("none"),
        request.client_ip.as_deref().unwrap_or("none"),
        ctx.request_id,
        ctx.session_id
            .map_or("none".to_string(), |id| id.to_string()),
        ctx.trace_id.as_deref().unwrap_or("none"),
    )
}

/// Bytes as text, or `none`.
fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or("none".to_string(), |b| {
        String::from_utf8_lossy(b).into_owned()
    })
}

fn field(name: &str, value: impl Into<Value>) -> (String, Value) {
    (name.to_string(), value.into())
}
