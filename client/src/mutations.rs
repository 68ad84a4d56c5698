//! Applying a `next` reply's changes: header mutations (docs/protocol.md,
//! "Header mutation semantics"), and the request's path and body or the
//! response's status.

use natsplug_protocol::{HeaderList, HeaderMutations, HttpRequest, HttpResponse, PhaseReply};

/// Apply `mutations` to `headers`: first every header named in `remove` is
/// deleted, then each `[name, value]` of `set`, in order, deletes every
/// header called `name` and appends itself. Names compare
/// case-insensitively; the order of the headers left is kept.
pub fn apply_mutations(headers: &mut HeaderList, mutations: &HeaderMutations) {
    if !mutations.remove.is_empty() {
        headers.retain(|(name, _)| {
            !mutations
                .remove
                .iter()
                .any(|gone| gone.eq_ignore_ascii_case(name))
        });
    }
    for (name, value) in &mutations.set {
        headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(name));
        headers.push((name.clone(), value.clone()));
    }
}

/// The headers of a local response: `mutations` applied to an empty list.
pub fn local_headers(mutations: Option<&HeaderMutations>) -> HeaderList {
    let mut headers = HeaderList::new();
    if let Some(mutations) = mutations {
        apply_mutations(&mut headers, mutations);
    }
    headers
}

/// Apply a `request_filter` `next` reply to `request`: its
/// `request_headers`, its `path` (the new target: path, and the query after
/// a `?`, none without one) and its `body`.
pub fn apply_to_request(request: &mut HttpRequest, reply: PhaseReply) {
    if let Some(mutations) = &reply.request_headers {
        apply_mutations(&mut request.headers, mutations);
    }
    if let Some(target) = reply.path {
        match target.split_once('?') {
            Some((path, query)) => {
                request.path = path.to_string();
                request.query = Some(query.to_string());
            }
            None => {
                request.path = target;
                request.query = None;
            }
        }
    }
    if let Some(body) = reply.body {
        request.body = Some(body);
    }
}

/// Apply a `response_filter` `next` reply to `response`: its
/// `response_headers` and its `status`.
pub fn apply_to_response(response: &mut HttpResponse, reply: &PhaseReply) {
    if let Some(mutations) = &reply.response_headers {
        apply_mutations(&mut response.headers, mutations);
    }
    if let Some(status) = reply.status {
        response.status = status;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_target_replaces_path_and_query() {
        let mut request = HttpRequest {
            method: "GET".into(),
            path: "/old".into(),
            query: Some("a=1".into()),
            body: Some(b"kept".to_vec()),
            ..Default::default()
        };
        let mut reply = PhaseReply::next("r");
        reply.path = Some("/v2/items?b=2".into());
        apply_to_request(&mut request, reply.clone());
        assert_eq!(
            (request.path.as_str(), request.query.as_deref()),
            ("/v2/items", Some("b=2"))
        );
        assert_eq!(request.body.as_deref(), Some(&b"kept"[..]));
        reply.path = Some("/plain".into());
        reply.body = Some(b"new".to_vec());
        apply_to_request(&mut request, reply);
        assert_eq!(
            (request.path.as_str(), request.query.as_deref()),
            ("/plain", None)
        );
        assert_eq!(request.body.as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_response_filter_may_change_the_status() {
        let mut response = HttpResponse {
            status: 200,
            headers: list(&[("server", "up")]),
            body: None,
        };
        let mut reply = PhaseReply::next("r");
        reply.status = Some(203);
        reply.response_headers = Some(HeaderMutations {
            set: vec![("x-filtered".into(), "1".into())],
            remove: vec!["Server".into()],
        });
        apply_to_response(&mut response, &reply);
        assert_eq!(response.status, 203);
        assert_eq!(response.headers, list(&[("x-filtered", "1")]));
    }

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn removals_come_first_then_each_set_replaces_its_name() {
        let mut headers = list(&[
            ("Accept", "*/*"),
            ("X-Tag", "a"),
            ("Cookie", "c=1"),
            ("x-tag", "b"),
        ]);
        let mutations = HeaderMutations {
            set: vec![
                ("x-tag".into(), "one".into()),
                ("x-new".into(), "1".into()),
                ("X-TAG".into(), "two".into()),
                ("cookie".into(), "kept".into()),
            ],
            remove: vec!["COOKIE".into()],
        };
        apply_mutations(&mut headers, &mutations);
        assert_eq!(
            headers,
            list(&[
                ("Accept", "*/*"),
                ("x-new", "1"),
                ("X-TAG", "two"),
                ("cookie", "kept"),
            ])
        );
    }

    #[test]
    fn a_local_response_starts_from_no_headers() {
        assert_eq!(local_headers(None), HeaderList::new());
        let mutations = HeaderMutations {
            set: vec![("content-type".into(), "text/plain".into())],
            remove: vec!["content-type".into()],
        };
        assert_eq!(
            local_headers(Some(&mutations)),
            list(&[("content-type", "text/plain")])
        );
    }
}
