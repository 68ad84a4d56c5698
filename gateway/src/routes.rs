//! Choosing a route for a request: routes for the request's host first,
//! then routes for any host, and among them the longest path prefix that
//! ends on a segment boundary.

use std::sync::{Arc, Once};

use natsplug_client::Chain;

use crate::upstream::UpstreamPeer;

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The route's label in metrics and logs.
    pub name: String,
    /// The host it serves, lower case; `None` for any.
    pub host: Option<String>,
    /// The path prefix, without a trailing `/` (empty for the root).
    pub prefix: String,
    /// Where its requests go.
    pub upstream: UpstreamPeer,
    /// Its plugins; `None` when the route has none.
    pub chain: Option<Chain>,
    /// Taken the first time a plugin of the chain sets a request body.
    pub request_body_warning: Once,
}

impl Route {
    /// Say, once per route, that a plugin of its chain set a request body
    /// in `request_filter`, which the gateway does not apply.
    pub fn request_body_ignored(&self) {
        self.request_body_warning.call_once(|| {
            tracing::warn!(
                route = %self.name,
                "a plugin of route `{}` set a request body in request_filter; the gateway streams request bodies to the upstream as the client sent them and applies only field and path changes (docs/gateway.md)",
                self.name
            )
        });
    }
}

/// The routes of the gateway.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

/// `prefix` as compared: without trailing slashes (`/` becomes empty).
pub fn normalized_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

impl RouteTable {
    /// A table of `routes`.
    pub fn new(routes: Vec<Route>) -> RouteTable {
        RouteTable {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// Every route, in configuration order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route for a request to `host` (a `Host` header or `:authority`,
    /// possibly with a port) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let host = host.map(host_name);
        let best = |for_host: bool| {
            self.routes
                .iter()
                .filter(|route| match (&route.host, &host) {
                    (Some(wanted), Some(given)) => for_host && wanted.eq_ignore_ascii_case(given),
                    (Some(_), None) => false,
                    (None, _) => !for_host,
                })
                .filter(|route| prefix_matches(&route.prefix, path))
                .max_by_key(|route| route.prefix.len())
        };
        best(true).or_else(|| best(false))
    }
}

/// `host` without its port (`[::1]:80` → `[::1]`, `a:80` → `a`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

/// Whether `path` is under `prefix` (normalized): the prefix itself, or
/// the prefix followed by `/` or `?`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;
    use std::time::Duration;

    fn route(name: &str, host: Option<&str>, prefix: &str) -> Route {
        let upstream = Upstream::parse("http://127.0.0.1:9").unwrap();
        Route {
            name: name.into(),
            host: host.map(str::to_string),
            prefix: normalized_prefix(prefix).to_string(),
            upstream: UpstreamPeer::new(upstream, Duration::from_secs(1), Duration::from_secs(1))
                .unwrap(),
            chain: None,
            request_body_warning: Once::new(),
        }
    }

    fn found(table: &RouteTable, host: Option<&str>, path: &str) -> Option<String> {
        table.find(host, path).map(|r| r.name.clone())
    }

    #[test]
    fn host_routes_win_then_the_longest_prefix_on_a_segment_boundary() {
        let table = RouteTable::new(vec![
            route("root", None, "/"),
            route("api", None, "/api"),
            route("api-v2", None, "/api/v2/"),
            route("admin-host", Some("admin.example.com"), "/"),
        ]);
        assert_eq!(found(&table, Some("x"), "/").as_deref(), Some("root"));
        assert_eq!(found(&table, Some("x"), "/api").as_deref(), Some("api"));
        assert_eq!(
            found(&table, Some("x"), "/api/users").as_deref(),
            Some("api")
        );
        assert_eq!(found(&table, Some("x"), "/api?x=1").as_deref(), Some("api"));
        assert_eq!(found(&table, Some("x"), "/apix").as_deref(), Some("root"));
        assert_eq!(
            found(&table, Some("x"), "/api/v2").as_deref(),
            Some("api-v2")
        );
        assert_eq!(found(&table, None, "/api/v2/a").as_deref(), Some("api-v2"));
        assert_eq!(
            found(&table, Some("ADMIN.example.com:8080"), "/api").as_deref(),
            Some("admin-host")
        );
        let no_root = RouteTable::new(vec![route("api", None, "/api")]);
        assert_eq!(found(&no_root, Some("x"), "/other"), None);
        assert_eq!(host_name("[::1]:80"), "[::1]");
    }
}
