//! What a proxy changes in the headers it forwards (RFC 9110 §7.6): the
//! hop-by-hop fields go, `Via` and the forwarding fields (`Forwarded`,
//! `X-Forwarded-For`/`-Host`/`-Proto`) are added, and every exchange
//! carries a W3C `traceparent`, the client's or a new one.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use natsplug_protocol::HeaderList;

/// The pseudonym the gateway gives itself in `Via`.
pub const VIA_PSEUDONYM: &str = "natsplug";

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1;
/// `Proxy-Connection` and `Keep-Alive` from HTTP/1.0 practice, `TE` and
/// `Trailer` as Pingora strips them towards the upstream).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Whether `name` (any case) is a hop-by-hop field, or one the
/// `Connection` field lists (`nominated`, lower case).
pub fn is_hop_by_hop(name: &str, nominated: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || nominated.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// The field names listed in the `Connection` fields of `headers`.
pub fn nominated(headers: &HeaderList) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// `headers` without the hop-by-hop fields.
pub fn without_hop_by_hop(headers: HeaderList) -> HeaderList {
    let nominated = nominated(&headers);
    headers
        .into_iter()
        .filter(|(name, _)| !is_hop_by_hop(name, &nominated))
        .collect()
}

/// Who asked, as the forwarding fields tell it.
#[derive(Debug, Clone)]
pub struct Client<'a> {
    /// The client's address, when known.
    pub ip: Option<IpAddr>,
    /// The `Host` (or `:authority`) the client asked for.
    pub host: Option<&'a str>,
    /// The protocol version of the client's request: `1.0`, `1.1` or `2`.
    pub version: &'a str,
}

/// Add the forwarding fields for `client` to a request's `headers`:
/// `X-Forwarded-For` (the client's address appended), `Forwarded` (an
/// element appended), `X-Forwarded-Host`, `X-Forwarded-Proto` and `Via`.
pub fn add_forwarding(headers: &mut HeaderList, client: &Client<'_>) {
    if let Some(ip) = client.ip {
        append_to(headers, "x-forwarded-for", &ip.to_string());
    }
    let mut element = Vec::new();
    if let Some(ip) = client.ip {
        element.push(match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        });
    }
    if let Some(host) = client.host {
        element.push(format!("host=\"{}\"", host.replace(['"', '\\'], "")));
    }
    element.push("proto=http".into());
    append_to(headers, "forwarded", &element.join(";"));
    if let Some(host) = client.host
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-host"))
    {
        headers.push(("x-forwarded-host".into(), host.to_string()));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-proto"))
    {
        headers.push(("x-forwarded-proto".into(), "http".into()));
    }
    add_via(headers, client.version);
}

/// Append this gateway to the `Via` field of `headers`, for a message
/// received with protocol `version`.
pub fn add_via(headers: &mut HeaderList, version: &str) {
    append_to(headers, "via", &format!("{version} {VIA_PSEUDONYM}"));
}

/// Append `value` to the list field `name`: joined to its last line with
/// `, `, or as a new line when the field is absent.
fn append_to(headers: &mut HeaderList, name: &str, value: &str) {
    match headers
        .iter_mut()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        Some((_, existing)) if !existing.trim().is_empty() => {
            existing.push_str(", ");
            existing.push_str(value);
        }
        Some((_, existing)) => *existing = value.to_string(),
        None => headers.push((name.to_string(), value.to_string())),
    }
}

/// The exchange's `traceparent`: the client's when it is a valid W3C
/// trace context (version 00: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero), else a new one. Returns it and whether it was made here.
pub fn traceparent(headers: &HeaderList) -> (String, bool) {
    let given = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
        .map(|(_, v)| v.trim());
    match given {
        Some(value) if valid_traceparent(value) => (value.to_string(), false),
        _ => (new_traceparent(), true),
    }
}

/// Whether `value` is a well-formed version-00 `traceparent`.
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && nonzero(parts[1])
        && hex(parts[2], 16)
        && nonzero(parts[2])
        && hex(parts[3], 2)
}

/// A new sampled `traceparent` with random trace and span ids.
pub fn new_traceparent() -> String {
    let (a, b, c) = (random_u64(), random_u64(), random_u64());
    // Never all zero: the lowest bit of each id is set.
    format!("00-{a:016x}{:016x}-{:016x}-01", b | 1, c | 1)
}

fn random_u64() -> u64 {
    // Each RandomState has fresh per-process random keys; hashing a
    // counter through it gives uniformly spread, unpredictable ids.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::list;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_dropped() {
        let headers = list(&[
            ("Host", "a"),
            ("Connection", "keep-alive, X-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("x-secret", "1"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        assert_eq!(
            without_hop_by_hop(headers),
            list(&[("Host", "a"), ("accept", "*/*")])
        );
    }

    #[test]
    fn forwarding_fields_are_appended() {
        let mut headers = list(&[("x-forwarded-for", "10.0.0.1"), ("via", "1.1 edge")]);
        let client = Client {
            ip: Some("192.0.2.7".parse().unwrap()),
            host: Some("api.example.com:8080"),
            version: "1.1",
        };
        add_forwarding(&mut headers, &client);
        assert_eq!(
            headers,
            list(&[
                ("x-forwarded-for", "10.0.0.1, 192.0.2.7"),
                ("via", "1.1 edge, 1.1 natsplug"),
                (
                    "forwarded",
                    "for=192.0.2.7;host=\"api.example.com:8080\";proto=http"
                ),
                ("x-forwarded-host", "api.example.com:8080"),
                ("x-forwarded-proto", "http"),
            ])
        );
        let mut v6 = HeaderList::new();
        let client = Client {
            ip: Some("::1".parse().unwrap()),
            host: None,
            version: "2",
        };
        add_forwarding(&mut v6, &client);
        assert_eq!(
            v6[1],
            ("forwarded".into(), "for=\"[::1]\";proto=http".into())
        );
        assert_eq!(v6[3], ("via".into(), "2 natsplug".into()));
    }

    #[test]
    fn a_valid_traceparent_is_kept_and_a_missing_or_bad_one_replaced() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent(&list(&[("traceparent", given)])),
            (given.to_string(), false)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let (made, new) = traceparent(&list(&[("traceparent", bad)]));
            assert!(new && valid_traceparent(&made), "{bad:?} → {made}");
        }
        assert_ne!(new_traceparent(), new_traceparent());
    }
}
