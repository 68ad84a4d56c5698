//! Lets a request through only with `Authorization: Bearer <token>`, where
//! the token is the plugin's `token` config value. Otherwise it answers the
//! client itself: 401 without a token, 403 with a wrong one, with a JSON body.
//! Paths listed (comma-separated) in the `public_paths` config key pass freely.

use natsplug_sdk::prelude::*;

struct Authz;

#[natsplug_sdk::plugin]
impl Plugin for Authz {
    fn request_filter(_ctx: Context, request: Request) -> RequestDecision {
        let public = config::get("public_paths").unwrap_or_default();
        if public
            .split(',')
            .any(|p| !p.is_empty() && p.trim() == request.path)
        {
            return RequestDecision::next();
        }
        let Some(expected) = config::get("token") else {
            warn!("no `token` configured: refusing every request");
            return deny(403, "forbidden", "the plugin has no token configured").into();
        };
        match request.bearer_token() {
            None => deny(401, "unauthorized", "a bearer token is required")
                .header("www-authenticate", "Bearer")
                .into(),
            Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
                RequestChanges::new().remove_header("authorization").into()
            }
            Some(_) => {
                info!("rejected a wrong token", path = request.path.as_str());
                deny(403, "forbidden", "the bearer token is not valid").into()
            }
        }
    }
}

fn deny(status: u16, error: &str, message: &str) -> LocalResponse {
    let body = format!(r#"{{"error":"{error}","message":"{message}"}}"#);
    LocalResponse::new(status)
        .header("content-type", "application/json")
        .body(body)
}

/// Compare without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
