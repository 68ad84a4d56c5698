//! A route's upstream: its URL, the address it resolves to, and the
//! Pingora peer (with the route's timeouts) each exchange connects with.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context as _, bail};
use pingora::upstreams::peer::HttpPeer;

/// Where a route sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as configured, for messages.
    pub url: String,
    /// Whether to speak TLS to it (`https://`).
    pub tls: bool,
    /// The host name (for TLS, its SNI and certificate check).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl Upstream {
    /// Parse `http://host[:port][/]` or `https://host[:port][/]`. A path is
    /// refused: the gateway forwards the client's path as it is.
    pub fn parse(url: &str) -> anyhow::Result<Upstream> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            bail!("`{url}` is not an http:// or https:// URL");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            bail!("`{url}` names no host");
        }
        if authority.contains(['/', '?', '#', '@']) {
            bail!(
                "`{url}` has a path, query or user part; give only the scheme, host and port (the client's path is forwarded as it is)"
            );
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .with_context(|| format!("`{url}`: unclosed `[` in the host"))?;
                let port = match after.strip_prefix(':') {
                    Some(port) => parse_port(url, port)?,
                    None if after.is_empty() => default_port,
                    None => bail!("`{url}`: unexpected `{after}` after the host"),
                };
                (host.to_string(), port)
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), parse_port(url, port)?),
                None => (authority.to_string(), default_port),
            },
        };
        if host.is_empty() {
            bail!("`{url}` names no host");
        }
        Ok(Upstream {
            url: url.to_string(),
            tls,
            host,
            port,
        })
    }

    /// The first address the host name resolves to (at start-up: the
    /// gateway does not re-resolve while it runs).
    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving the upstream {}", self.url))?
            .next()
            .with_context(|| format!("the upstream {} resolves to no address", self.url))
    }
}

fn parse_port(url: &str, port: &str) -> anyhow::Result<u16> {
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => bail!("`{url}`: `{port}` is not a port"),
    }
}

/// The resolved upstream and the peer settings every exchange starts from.
#[derive(Debug, Clone)]
pub struct UpstreamPeer {
    /// What was configured.
    pub upstream: Upstream,
    peer: HttpPeer,
}

impl UpstreamPeer {
    /// Resolve `upstream` and set its timeouts.
    pub fn new(
        upstream: Upstream,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> anyhow::Result<UpstreamPeer> {
        let address = upstream.resolve()?;
        let mut peer = HttpPeer::new(address, upstream.tls, upstream.host.clone());
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(read_timeout);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(UpstreamPeer { upstream, peer })
    }

    /// A peer for one exchange.
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_to_scheme_host_and_port() {
        let parsed = Upstream::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            (parsed.tls, parsed.host.as_str(), parsed.port),
            (false, "127.0.0.1", 9000)
        );
        let parsed = Upstream::parse("https://api.internal/").unwrap();
        assert_eq!(
            (parsed.tls, parsed.host.as_str(), parsed.port),
            (true, "api.internal", 443)
        );
        let parsed = Upstream::parse("http://[::1]:81").unwrap();
        assert_eq!((parsed.host.as_str(), parsed.port), ("::1", 81));
        for bad in [
            "127.0.0.1:9000",
            "http://",
            "http://a:0",
            "http://a:x",
            "http://a/path",
            "http://u@a",
            "http://[::1",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
