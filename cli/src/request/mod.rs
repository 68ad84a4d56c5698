//! The phase request of `call`, `invoke` and `bench`: read from a JSON or
//! YAML request file ([`file`]), built from flags, or both (flags win over
//! the file).

pub mod file;

use std::path::PathBuf;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use file::{RequestFile, read_request_file};
use natsplug_protocol::Phase;
use natsplug_protocol::{
    self as protocol, BodyChunk, HeaderList, HttpRequest, HttpResponse, PhaseRequest,
};

/// The request flags shared by `call`, `invoke` and `bench`.
#[derive(Debug, Clone, Default, Args)]
pub struct RequestArgs {
    /// Read the request from a JSON or YAML file (see the format below).
    #[arg(long, short = 'r', value_name = "FILE")]
    pub request: Option<PathBuf>,
    /// HTTP method [default: GET].
    #[arg(long)]
    pub method: Option<String>,
    /// Request path [default: /].
    #[arg(long)]
    pub path: Option<String>,
    /// Query string, without the `?`.
    #[arg(long)]
    pub query: Option<String>,
    /// Request header `name: value`; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request body (the chunk for response_body_filter); `@FILE` reads a file.
    #[arg(long)]
    pub body: Option<String>,
    /// Upstream status, for response phases and logging [default: 200].
    #[arg(long)]
    pub status: Option<u16>,
    /// Session id shared by the phases of one exchange.
    #[arg(long)]
    pub session_id: Option<u64>,
    /// Request id, echoed in the reply [default: generated].
    #[arg(long)]
    pub request_id: Option<String>,
}

impl RequestArgs {
    /// Read the request file, if any, and check the flags.
    pub fn load(&self) -> anyhow::Result<RequestSpec> {
        let file = match &self.request {
            Some(path) => Some(read_request_file(path)?),
            None => None,
        };
        let headers = self
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let body = match &self.body {
            Some(spec) => Some(match spec.strip_prefix('@') {
                Some(file) => std::fs::read(file).with_context(|| {
                    format!("reading body file {file} (write --body @FILE with an existing file, or the body itself without `@`)")
                })?,
                None => spec.clone().into_bytes(),
            }),
            None => None,
        };
        Ok(RequestSpec {
            args: self.clone(),
            file: file.unwrap_or_default(),
            headers,
            body,
        })
    }
}

/// A request file and the flags over it, ready to become a [`PhaseRequest`].
#[derive(Debug)]
pub struct RequestSpec {
    args: RequestArgs,
    file: RequestFile,
    headers: HeaderList,
    body: Option<Vec<u8>>,
}

impl RequestSpec {
    /// The phase the request file names, if it names one.
    pub fn file_phase(&self) -> anyhow::Result<Option<Phase>> {
        self.file.phase.as_deref().map(parse_phase).transpose()
    }

    /// The request for `phase`; `default_id` is its request id unless the
    /// flags or the file set one.
    pub fn build(&self, phase: Phase, default_id: &str) -> anyhow::Result<PhaseRequest> {
        if let Some(named) = self.file_phase()?
            && named != phase
        {
            bail!(
                "the request file is for phase `{named}` but `{phase}` was asked for: change its `phase` field, or leave the field out"
            );
        }
        let file = &self.file;
        let args = &self.args;
        let base = file.request.clone().unwrap_or_default();
        let mut headers = base.headers.0;
        headers.extend(self.headers.iter().cloned());
        let mut request = HttpRequest {
            method: args
                .method
                .clone()
                .or(base.method)
                .unwrap_or_else(|| "GET".into()),
            path: args
                .path
                .clone()
                .or(base.path)
                .unwrap_or_else(|| "/".into()),
            query: args.query.clone().or(base.query),
            host: base.host,
            client_ip: base.client_ip,
            headers,
            body: base.body.map(|b| b.0),
        };
        let mut response = file.response.clone().map(|r| HttpResponse {
            status: r.status.unwrap_or(200),
            headers: r.headers.0,
            body: r.body.map(|b| b.0),
        });
        if phase != Phase::RequestFilter && response.is_none() {
            response = Some(HttpResponse {
                status: 200,
                headers: Vec::new(),
                body: None,
            });
        }
        if let (Some(status), Some(response)) = (args.status, response.as_mut()) {
            response.status = status;
        }
        let mut chunk = file.chunk.clone().map(|c| BodyChunk {
            data: c.data.map(|d| d.0).unwrap_or_default(),
            end_of_stream: c.end_of_stream.unwrap_or(true),
            state: c.state.map(|s| s.0),
        });
        if phase == Phase::ResponseBodyFilter {
            let chunk = chunk.get_or_insert_with(|| BodyChunk {
                data: Vec::new(),
                end_of_stream: true,
                state: None,
            });
            if let Some(body) = &self.body {
                chunk.data = body.clone();
            }
        } else if let Some(body) = &self.body {
            request.body = Some(body.clone());
        }
        Ok(PhaseRequest {
            version: file.version.unwrap_or(protocol::PROTOCOL_VERSION),
            request_id: args
                .request_id
                .clone()
                .or(file.request_id.clone())
                .unwrap_or_else(|| default_id.to_string()),
            session_id: args.session_id.or(file.session_id),
            phase: phase.as_str().to_string(),
            request,
            response,
            chunk,
            duration_ms: file.duration_ms.or((phase == Phase::Logging).then_some(0)),
        })
    }
}

/// The phase called `name`, or an error listing the phases.
pub fn parse_phase(name: &str) -> anyhow::Result<Phase> {
    Phase::parse(name).ok_or_else(|| {
        anyhow!(
            "unknown phase `{name}`: use request_filter, response_filter, response_body_filter or logging"
        )
    })
}

fn parse_header(header: &str) -> anyhow::Result<(String, String)> {
    header
        .split_once(':')
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| anyhow!("header `{header}` is not `name: value` (e.g. -H 'accept: */*')"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(file: &str, extension: &str, args: RequestArgs) -> RequestSpec {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("request.{extension}"));
        std::fs::write(&path, file).unwrap();
        RequestArgs {
            request: Some(path),
            ..args
        }
        .load()
        .unwrap()
    }

    #[test]
    fn json_and_yaml_files_give_the_same_request() {
        let json = spec(
            r#"{"request_id": "r-1", "session_id": 7, "request": {"method": "POST", "path": "/x",
               "headers": [["a", "1"], "b: 2", ["a", "3"]], "body": {"base64": "AAEC"}}}"#,
            "json",
            RequestArgs::default(),
        );
        let yaml = spec(
            "request_id: r-1\nsession_id: 7\nrequest:\n  method: POST\n  path: /x\n  headers:\n    - [a, '1']\n    - 'b: 2'\n    - [a, 3]\n  body: {base64: AAEC}\n",
            "yaml",
            RequestArgs::default(),
        );
        let a = json.build(Phase::RequestFilter, "x").unwrap();
        let b = yaml.build(Phase::RequestFilter, "x").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.request_id, "r-1");
        assert_eq!(a.session_id, Some(7));
        assert_eq!(
            a.request.headers,
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "3".to_string()),
            ]
        );
        assert_eq!(a.request.body, Some(vec![0, 1, 2]));
        assert_eq!(a.response, None);
    }

    #[test]
    fn header_maps_keep_their_order_and_flags_win() {
        let spec = spec(
            "request:\n  path: /file\n  headers:\n    zeta: z\n    alpha: 1\n",
            "yml",
            RequestArgs {
                path: Some("/flag".into()),
                headers: vec!["x-extra: yes".into()],
                body: Some("chunk".into()),
                status: Some(503),
                ..Default::default()
            },
        );
        let request = spec.build(Phase::ResponseBodyFilter, "id-1").unwrap();
        assert_eq!(request.request_id, "id-1");
        assert_eq!(request.request.path, "/flag");
        assert_eq!(request.request.method, "GET");
        assert_eq!(
            request.request.headers,
            vec![
                ("zeta".to_string(), "z".to_string()),
                ("alpha".to_string(), "1".to_string()),
                ("x-extra".to_string(), "yes".to_string()),
            ]
        );
        assert_eq!(request.request.body, None);
        assert_eq!(request.response.unwrap().status, 503);
        let chunk = request.chunk.unwrap();
        assert_eq!(chunk.data, b"chunk");
        assert!(chunk.end_of_stream);
    }

    #[test]
    fn mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, r#"{"request": {"methd": "GET"}}"#).unwrap();
        let args = RequestArgs {
            request: Some(path.clone()),
            ..Default::default()
        };
        let error = format!("{:#}", args.load().unwrap_err());
        assert!(error.contains("unknown field `methd`"), "{error}");
        assert!(error.contains("is not a valid JSON request"), "{error}");

        std::fs::write(&path, r#"{"request": {"body": {"hex": "00"}}}"#).unwrap();
        let error = format!("{:#}", args.load().unwrap_err());
        assert!(error.contains("unexpected key `hex`"), "{error}");

        std::fs::write(&path, r#"{"phase": "logging"}"#).unwrap();
        let error = args
            .load()
            .unwrap()
            .build(Phase::RequestFilter, "x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "the request file is for phase `logging` but `request_filter` was asked for: change its `phase` field, or leave the field out"
        );
        assert!(
            RequestArgs {
                headers: vec!["no colon".into()],
                ..Default::default()
            }
            .load()
            .is_err()
        );
    }

    #[test]
    fn flags_alone_build_the_default_request() {
        let spec = RequestArgs::default().load().unwrap();
        let request = spec.build(Phase::Logging, "d").unwrap();
        assert_eq!(request.version, protocol::PROTOCOL_VERSION);
        assert_eq!(request.request.method, "GET");
        assert_eq!(request.request.path, "/");
        assert_eq!(request.response.unwrap().status, 200);
        assert_eq!(request.duration_ms, Some(0));
        assert_eq!(request.chunk, None);
    }
}
