//! What a proxy changes in the headers it forwards (RFC 9110 §7.6): the
//! hop-by-hop fields go, `Via` and the forwarding fields (`Forwarded`,
//! `X-Forwarded-For`/`-Host`/`-Proto`) are added, and every exchange
//! carries a W3C `traceparent`, the client's or a new one.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;

use http::HeaderName;

use crate::headers::Head;

/// The pseudonym the gateway gives itself in `Via`.
pub const VIA_PSEUDONYM: &str = "natsplug";

/// The fields the gateway reads and writes, parsed once.
mod names {
    use http::HeaderName;

    pub static CONNECTION: HeaderName = http::header::CONNECTION;
    pub static FORWARDED: HeaderName = http::header::FORWARDED;
    pub static VIA: HeaderName = http::header::VIA;
    pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
}

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1;
/// `Proxy-Connection` and `Keep-Alive` from HTTP/1.0 practice, `TE` and
/// `Trailer` as Pingora strips them towards the upstream).
static HOP_BY_HOP: [HeaderName; 8] = [
    http::header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// The valid field names listed in the `Connection` fields of `head`.
pub fn nominated(head: &impl Head) -> Vec<HeaderName> {
    let mut names = Vec::new();
    head.each_value(&names::CONNECTION, |value| {
        names.extend(
            value
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|token| !token.is_empty())
                .filter_map(|token| HeaderName::from_bytes(token).ok()),
        );
    });
    names
}

/// Remove the hop-by-hop fields from `head`, and the ones its `Connection`
/// fields name, except those `keep` keeps (given their lower-case names).
pub fn remove_hop_by_hop(head: &mut impl Head, keep: impl Fn(&str) -> bool) {
    let nominated = nominated(head);
    for name in HOP_BY_HOP.iter().chain(&nominated) {
        if !keep(name.as_str()) {
            head.remove_all(name);
        }
    }
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

/// Add the forwarding fields for `client` to a request's `head`:
/// `X-Forwarded-For` (the client's address appended), `Forwarded` (an
/// element appended), `X-Forwarded-Host`, `X-Forwarded-Proto` and `Via`.
pub fn add_forwarding(head: &mut impl Head, client: &Client<'_>) {
    let mut text = String::with_capacity(64);
    if let Some(ip) = client.ip {
        let address = ip_text(ip);
        head.add_to_list(&names::X_FORWARDED_FOR, &address);
        let (open, close) = match ip {
            IpAddr::V4(_) => ("for=", ";"),
            IpAddr::V6(_) => ("for=\"[", "]\";"),
        };
        text.push_str(open);
        text.push_str(&address);
        text.push_str(close);
    }
    if let Some(host) = client.host {
        text.push_str("host=\"");
        text.extend(host.chars().filter(|c| !matches!(c, '"' | '\\')));
        text.push_str("\";");
    }
    text.push_str("proto=http");
    head.add_to_list(&names::FORWARDED, &text);
    if let Some(host) = client.host
        && !head.has(&names::X_FORWARDED_HOST)
    {
        head.add(&names::X_FORWARDED_HOST, host);
    }
    if !head.has(&names::X_FORWARDED_PROTO) {
        head.add(&names::X_FORWARDED_PROTO, "http");
    }
    add_via(head, client.version);
}

/// `ip` as text, as `Display` writes it; an IPv4 address (the common
/// case, written for every exchange) without the formatter.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Append this gateway to the `Via` field of `head`, for a message
/// received with protocol `version`.
pub fn add_via(head: &mut impl Head, version: &str) {
    let mut text = String::with_capacity(version.len() + 1 + VIA_PSEUDONYM.len());
    text.push_str(version);
    text.push(' ');
    text.push_str(VIA_PSEUDONYM);
    head.add_to_list(&names::VIA, &text);
}

/// The exchange's `traceparent`: the client's when it is a valid W3C
/// trace context (version 00: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all
/// zero), else a new one. Returns it and whether it was made here.
pub fn traceparent(head: &impl Head) -> (String, bool) {
    let given = head
        .first_value(&names::TRACEPARENT)
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(str::trim);
    match given {
        Some(value) if valid_traceparent(value) => (value.to_string(), false),
        _ => (new_traceparent(), true),
    }
}

/// Make `value` the one `traceparent` of `head`: left where it is when
/// `head` holds exactly it, else every other one removed and it added.
pub fn set_traceparent(head: &mut impl Head, value: &str) {
    let mut count = 0;
    let mut same = true;
    head.each_value(&names::TRACEPARENT, |given| {
        count += 1;
        same &= given == value.as_bytes();
    });
    if count == 1 && same {
        return;
    }
    head.remove_all(&names::TRACEPARENT);
    head.add(&names::TRACEPARENT, value);
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
    let [a, b, c] = random_u64s();
    // Never all zero: the lowest bit of each id is set.
    let mut text = String::with_capacity(55);
    text.push_str("00-");
    push_hex(&mut text, a);
    push_hex(&mut text, b | 1);
    text.push('-');
    push_hex(&mut text, c | 1);
    text.push_str("-01");
    text
}

/// `value` as 16 lower-case hex digits.
fn push_hex(text: &mut String, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        text.push(DIGITS[(value >> (shift * 4)) as usize & 0xf] as char);
    }
}

fn random_u64s() -> [u64; 3] {
    // Each RandomState has fresh per-process random keys; hashing a
    // counter through it gives uniformly spread, unpredictable ids.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    [0, 1, 2].map(|index| {
        hasher.write_u8(index);
        hasher.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{header_list, list};
    use http::HeaderValue;
    use natsplug_protocol::HeaderList;
    use pingora::http::{RequestHeader, ResponseHeader};

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for octet in 0..=255u8 {
            let v4 = IpAddr::from([octet, 255 - octet, octet / 3, 10]);
            assert_eq!(ip_text(v4), v4.to_string());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_text(v6), "2001:db8::1");
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_dropped() {
        let mut headers = list(&[
            ("Host", "a"),
            ("Connection", "keep-alive, X-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("x-secret", "1"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut headers, |_| false);
        assert_eq!(headers, list(&[("Host", "a"), ("accept", "*/*")]));
        let mut response = ResponseHeader::build(101, None).unwrap();
        for (name, value) in [
            ("Connection", "upgrade, x-secret"),
            ("Upgrade", "websocket"),
            ("X-Secret", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Keep-Alive", "timeout=5"),
        ] {
            response.append_header(name, value).unwrap();
        }
        remove_hop_by_hop(&mut response, |name| {
            matches!(name, "transfer-encoding" | "upgrade" | "connection")
        });
        assert_eq!(
            header_list(&response.headers),
            list(&[
                ("connection", "upgrade, x-secret"),
                ("upgrade", "websocket"),
                ("transfer-encoding", "chunked"),
            ])
        );
    }

    /// The plugins see a header list and the upstream gets a Pingora head;
    /// the gateway's changes must leave both saying the same, or the
    /// plugins' changes would be written back wrongly.
    #[test]
    fn a_header_list_and_a_pingora_head_get_the_same_changes() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in [
            ("Host", "api.example.com"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("Forwarded", " "),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("traceparent", "second"),
            ("accept", "*/*"),
        ] {
            request.append_header(name, value).unwrap();
        }
        request
            .append_header("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .unwrap();
        let client = Client {
            ip: Some("192.0.2.7".parse().unwrap()),
            host: Some("api.example.com"),
            version: "1.1",
        };
        let mut shown = header_list(&request.headers);
        let (trace, made) = traceparent(&request);
        assert!(!made);
        set_traceparent(&mut shown, &trace);
        add_forwarding(&mut shown, &client);
        set_traceparent(&mut request, &trace);
        add_forwarding(&mut request, &client);
        // A map keeps each name's values together, not the order of names.
        let by_name = |mut list: HeaderList| {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            list
        };
        assert_eq!(by_name(header_list(&request.headers)), by_name(shown));
        assert_eq!(
            request.headers.get("x-raw").unwrap().as_bytes(),
            b"caf\xe9",
            "a value nobody changed keeps its bytes"
        );
        let fields: Vec<_> = request.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(fields, ["10.0.0.1", "10.0.0.2, 192.0.2.7"]);
        assert_eq!(
            request.headers.get("forwarded").unwrap(),
            "for=192.0.2.7;host=\"api.example.com\";proto=http"
        );
        assert_eq!(request.headers.get_all("traceparent").iter().count(), 1);
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
