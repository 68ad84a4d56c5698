//! The request file of `--request`: its format (for `--help`), reading it
//! as JSON or YAML, and the forms its fields take (bodies as text or
//! `{base64: ...}`, headers as a map or a list).

use std::path::Path;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::parse_header;
use natsplug_protocol::HeaderList;

/// The request-file format, for `--help`.
pub const FORMAT: &str = "Request file (--request FILE, JSON or YAML; `-` reads standard input):
  the phase request of docs/protocol.md, every field optional:
    request_id: r-1               # default: a generated id
    session_id: 7
    phase: request_filter         # must match the PHASE argument
    request:
      method: POST                # default GET
      path: /login                # default /
      query: a=1
      host: example.com
      client_ip: 10.0.0.1
      headers:                    # a map, or a list of [name, value] pairs
        content-type: application/json
      body: '{\"user\": \"ann\"}'
    response: {status: 200, headers: [], body: ...}   # response phases, logging
    chunk: {data: ..., end_of_stream: true, state: ...}  # response_body_filter
    duration_ms: 12                                      # logging
  A body (or chunk data, or state) is a UTF-8 string, or {base64: \"...\"} for binary.
  Without `response`, phases after request_filter get a 200 with no headers.
  Flags given with --request win over the file; -H headers are added to it.";

/// Read a request file: YAML for `.yaml`/`.yml`, JSON for `.json`, and by
/// its first character otherwise (`{` means JSON).
pub fn read_request_file(path: &Path) -> anyhow::Result<RequestFile> {
    let (text, shown) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the request from standard input")?;
        (text, "standard input".to_string())
    } else {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading request file {} (it must exist and be UTF-8 JSON or YAML)",
                path.display()
            )
        })?;
        (text, path.display().to_string())
    };
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let yaml = match extension.as_deref() {
        Some("yaml" | "yml") => true,
        Some("json") => false,
        _ => !text.trim_start().starts_with('{'),
    };
    let parsed = if yaml {
        serde_saphyr::from_str::<RequestFile>(&text).map_err(|e| anyhow!("{e}"))
    } else {
        serde_json::from_str::<RequestFile>(&text).map_err(anyhow::Error::from)
    };
    parsed.with_context(|| {
        format!(
            "request file {shown} is not a valid {} request (see `natsplug call --help` for the format)",
            if yaml { "YAML" } else { "JSON" }
        )
    })
}

/// The request file: the phase request of the protocol with every field
/// optional, bodies as text or `{base64: ...}` and headers as a map or pairs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    pub version: Option<u16>,
    pub request_id: Option<String>,
    pub session_id: Option<u64>,
    pub phase: Option<String>,
    pub request: Option<FileRequest>,
    pub response: Option<FileResponse>,
    pub chunk: Option<FileChunk>,
    pub duration_ms: Option<u64>,
}

/// `request` of a request file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    pub method: Option<String>,
    pub path: Option<String>,
    pub query: Option<String>,
    pub host: Option<String>,
    pub client_ip: Option<String>,
    #[serde(default)]
    pub headers: Headers,
    pub body: Option<Body>,
}

/// `response` of a request file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResponse {
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: Headers,
    pub body: Option<Body>,
}

/// `chunk` of a request file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChunk {
    pub data: Option<Body>,
    pub end_of_stream: Option<bool>,
    pub state: Option<Body>,
}

/// Bytes written as a UTF-8 string or as `{base64: "..."}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Body(pub Vec<u8>);

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> Visitor<'de> for BodyVisitor {
            type Value = Body;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a UTF-8 string or {\"base64\": \"...\"}")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Body, E> {
                Ok(Body(text.as_bytes().to_vec()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                let mut bytes = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "base64" || bytes.is_some() {
                        return Err(de::Error::custom(format!(
                            "unexpected key `{key}`: binary bytes are written {{\"base64\": \"...\"}}"
                        )));
                    }
                    let text = map.next_value::<String>()?;
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .map_err(|e| de::Error::custom(format!("invalid base64: {e}")))?;
                    bytes = Some(decoded);
                }
                bytes.map(Body).ok_or_else(|| {
                    de::Error::custom("binary bytes are written {\"base64\": \"...\"}")
                })
            }
        }
        deserializer.deserialize_any(BodyVisitor)
    }
}

/// Headers written as a map (`{name: value}`, order kept) or as a list of
/// `[name, value]` pairs or `"name: value"` strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers(pub HeaderList);

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of header values, or a list of [name, value] pairs")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Headers, E> {
                Ok(Headers::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, Scalar>()? {
                    headers.push((name, value.0));
                }
                Ok(Headers(headers))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Headers, A::Error> {
                let mut headers = Vec::new();
                while let Some(entry) = seq.next_element::<HeaderEntry>()? {
                    headers.push(entry.0);
                }
                Ok(Headers(headers))
            }
        }
        deserializer.deserialize_any(HeadersVisitor)
    }
}

/// One header of a list: `[name, value]` or `"name: value"`.
struct HeaderEntry((String, String));

impl<'de> Deserialize<'de> for HeaderEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = HeaderEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [name, value] pair or a \"name: value\" string")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<HeaderEntry, E> {
                parse_header(text)
                    .map(HeaderEntry)
                    .map_err(|e| de::Error::custom(e.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<HeaderEntry, A::Error> {
                let name = seq
                    .next_element::<String>()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let value = seq
                    .next_element::<Scalar>()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(HeaderEntry((name, value.0)))
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// A header value: text, or a number or boolean taken as its text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a header value (text, number or boolean)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}
