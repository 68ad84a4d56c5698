//! The wording of a failed first connection: what is wrong and what to check.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use async_nats::ConnectErrorKind;
use base64::Engine as _;

use crate::config::{NatsAuth, NatsConfig};

/// Turn a failed first connection into a message that says what is wrong
/// and what to check.
pub(super) fn explain_connect_error(
    error: &async_nats::ConnectError,
    shown: &str,
    config: &NatsConfig,
    auth: &NatsAuth,
) -> anyhow::Error {
    if let Some(tls) = tls_cause(error) {
        return anyhow!("{}", explain_tls(&tls, shown, config));
    }
    match error.kind() {
        ConnectErrorKind::AuthorizationViolation => {
            if let NatsAuth::CredsFile(path) = auth
                && let Some(problem) = user_jwt_validity(path, SystemTime::now())
            {
                return anyhow!(
                    "NATS at {shown} refused the login (authorization violation): the user JWT in nats.creds_file {} {problem}. Get fresh credentials for this user (`nsc generate creds`, after `nsc edit user --expiry` if its expiry is set too short) and point nats.creds_file at them",
                    path.display()
                );
            }
            let check = match auth {
                NatsAuth::None => {
                    return anyhow!(
                        "NATS at {shown} refused the login (authorization violation): the server requires credentials and none are configured. Set nats.user and nats.password, nats.token, nats.nkey_seed_file or nats.creds_file (or put them in the URL)"
                    );
                }
                NatsAuth::UserPassword { .. } => {
                    "that the user name and password are right and that the server's authorization config lists this user"
                }
                NatsAuth::Token { .. } => {
                    "that the token is the one the server's authorization config expects"
                }
                NatsAuth::NkeySeedFile(_) => {
                    "that the server's authorization config lists the public key of this seed (`nk -inkey FILE -pubout`)"
                }
                NatsAuth::CredsFile(_) => {
                    "that the server trusts the account that signed this user (operator mode, with a resolver that knows the account), and that the user JWT has not expired or been revoked"
                }
            };
            anyhow!(
                "NATS at {shown} refused the login (authorization violation) for {}. Check {check}",
                auth.describe()
            )
        }
        ConnectErrorKind::Authentication => anyhow!(
            "could not answer the login challenge of NATS at {shown} with {}: {error}. Check that the file holds a valid user NKey seed",
            auth.describe()
        ),
        ConnectErrorKind::Tls => anyhow!(
            "could not set up TLS for NATS at {shown}: {}. Check that nats.tls_ca_file, nats.tls_cert_file and nats.tls_key_file are PEM files (CA certificates, the client certificate and its private key)",
            source_text(error)
        ),
        ConnectErrorKind::TimedOut => anyhow!(
            "could not connect to NATS at {shown}: timed out after {} ms (nats.connect_timeout_ms). Is the server reachable, and does it speak TLS when the URL says tls://?",
            config.connect_timeout_ms
        ),
        ConnectErrorKind::Dns => anyhow!(
            "could not connect to NATS at {shown}: the host name does not resolve ({})",
            source_text(error)
        ),
        ConnectErrorKind::ServerParse => anyhow!(
            "could not connect to NATS at {shown}: the server advertised an address that is not a valid URL ({})",
            source_text(error)
        ),
        _ => anyhow!(
            "could not connect to NATS at {shown}: {}. Is a nats-server running there? \
             Start one (`nats-server`), or pass --nats with the right URL",
            source_text(error)
        ),
    }
}

/// The error and its sources, as one line.
fn source_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// The TLS failure inside a connect error, if that is what it is.
fn tls_cause(error: &async_nats::ConnectError) -> Option<async_nats::rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<async_nats::rustls::Error>() {
            return Some(tls.clone());
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<async_nats::rustls::Error>()
        {
            return Some(tls.clone());
        }
        source = cause.source();
    }
    None
}

fn explain_tls(error: &async_nats::rustls::Error, shown: &str, config: &NatsConfig) -> String {
    use async_nats::rustls::{AlertDescription, CertificateError, Error};
    let ca = match &config.tls_ca_file {
        Some(path) => format!("nats.tls_ca_file ({})", path.display()),
        None => "the system's trusted roots (no nats.tls_ca_file is set)".to_string(),
    };
    let advice = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | Error::InvalidCertificate(CertificateError::BadSignature) => format!(
            "the server's certificate is not signed by a CA this host trusts: it checked against {ca}. Set nats.tls_ca_file to the CA certificate that signed the server's certificate"
        ),
        Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => {
            let expected = expected.to_str();
            let names = presented.iter().map(|name| plain_name(name)).collect::<Vec<_>>();
            let listed = if names.is_empty() {
                "it names no host at all (it has no subject alternative names)".to_string()
            } else {
                format!("it names only {}", names.join(", "))
            };
            format!(
                "the server's certificate is not valid for {expected}, the host of the URL: {listed}. Connect with a name the certificate lists, or reissue the certificate with {expected} among its subject alternative names"
            )
        }
        Error::InvalidCertificate(CertificateError::NotValidForName) => "the server's certificate does not name the host of the URL: connect with a host name (or IP) the certificate lists, or reissue the certificate for that name".to_string(),
        Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => {
            let ago = time.as_secs().saturating_sub(not_after.as_secs());
            format!(
                "the server's certificate expired at {} ({} ago, by this machine's clock). Renew the server's certificate (the cert_file of its tls block) and reload the server; if it should still be valid, check this machine's clock",
                humantime::format_rfc3339_seconds(unix_time(not_after.as_secs())),
                rough_duration(ago)
            )
        }
        Error::InvalidCertificate(CertificateError::Expired) => "the server's certificate has expired (by this machine's clock): renew the server's certificate (the cert_file of its tls block), or check this machine's clock".to_string(),
        Error::InvalidCertificate(CertificateError::NotValidYetContext { not_before, .. }) => format!(
            "the server's certificate is not valid before {}, by this machine's clock: check the clocks of this machine and of the machine that issued it",
            humantime::format_rfc3339_seconds(unix_time(not_before.as_secs()))
        ),
        Error::InvalidCertificate(CertificateError::NotValidYet) => "the server's certificate is not valid yet, by this machine's clock: check the clocks of this machine and of the machine that issued it".to_string(),
        Error::InvalidCertificate(_) => format!(
            "the server's certificate was rejected; it was checked against {ca}"
        ),
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure
            | AlertDescription::CertificateUnknown,
        ) => if config.tls_cert_file.is_some() {
            "the server rejected this host's client certificate: it must be signed by a CA the server trusts (its tls.ca_file)".to_string()
        } else {
            "the server requires a client certificate (mutual TLS): set nats.tls_cert_file and nats.tls_key_file".to_string()
        },
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } if config.tls_required => {
            "the server did not answer in TLS; nats.tls_required is set, so check that the server has TLS enabled".to_string()
        }
        _ => format!("check {ca} and the server's TLS settings"),
    };
    format!("TLS with NATS at {shown} failed ({error}): {advice}")
}

/// A name as webpki lists it (`DnsName("a.example")`, `IpAddress(10.0.0.1)`),
/// without the wrapping.
fn plain_name(name: &str) -> &str {
    for (start, end) in [("DnsName(\"", "\")"), ("IpAddress(", ")")] {
        if let Some(inner) = name.strip_prefix(start).and_then(|n| n.strip_suffix(end)) {
            return inner;
        }
    }
    name
}

fn unix_time(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

/// `seconds` in its two largest units ("3years 2months", "1m 30s").
fn rough_duration(seconds: u64) -> String {
    let full = humantime::format_duration(Duration::from_secs(seconds)).to_string();
    full.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What is wrong with the validity period of the user JWT in the `.creds`
/// file at `path` at `now` (expired, or not valid yet), if anything.
fn user_jwt_validity(path: &Path, now: SystemTime) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let jwt = text
        .lines()
        .map(str::trim)
        .skip_while(|line| !line.contains("BEGIN NATS USER JWT"))
        .nth(1)?;
    let claims = jwt.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    let now_secs = unix_seconds(now);
    let seconds = |key: &str| claims.get(key).and_then(serde_json::Value::as_u64);
    if let Some(exp) = seconds("exp").filter(|&exp| exp > 0 && exp <= now_secs) {
        return Some(format!(
            "expired at {} ({} ago)",
            humantime::format_rfc3339_seconds(unix_time(exp)),
            rough_duration(now_secs - exp)
        ));
    }
    if let Some(nbf) = seconds("nbf").filter(|&nbf| nbf > now_secs) {
        return Some(format!(
            "is not valid before {} (check this machine's clock, and the one that issued it)",
            humantime::format_rfc3339_seconds(unix_time(nbf))
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webpki_names_lose_their_wrapping() {
        assert_eq!(plain_name("DnsName(\"nats.example\")"), "nats.example");
        assert_eq!(plain_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(
            plain_name("UniformResourceIdentifier(\"x\")"),
            "UniformResourceIdentifier(\"x\")"
        );
    }

    #[test]
    fn the_validity_of_a_creds_user_jwt_is_read_from_its_claims() {
        let dir = tempfile::tempdir().unwrap();
        let creds = |claims: serde_json::Value| {
            let encode = |v: &serde_json::Value| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
            };
            let jwt = format!(
                "{}.{}.c2ln",
                encode(&serde_json::json!({"typ": "JWT"})),
                encode(&claims)
            );
            let path = dir.path().join("user.creds");
            std::fs::write(
                &path,
                format!("-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n"),
            )
            .unwrap();
            path
        };
        let now = unix_time(1_000_000);
        let path = creds(serde_json::json!({"exp": 1_000_000 - 90}));
        assert_eq!(
            user_jwt_validity(&path, now).as_deref(),
            Some("expired at 1970-01-12T13:45:10Z (1m 30s ago)")
        );
        assert_eq!(rough_duration(400 * 86_400 + 7), "1year 1month");
        let path = creds(serde_json::json!({"exp": 1_000_001}));
        assert_eq!(user_jwt_validity(&path, now), None);
        let path = creds(serde_json::json!({"nbf": 1_000_060}));
        assert!(
            user_jwt_validity(&path, now)
                .is_some_and(|p| p.starts_with("is not valid before 1970-01-12T13:47:40Z")),
        );
        let path = creds(serde_json::json!({"name": "no times"}));
        assert_eq!(user_jwt_validity(&path, now), None);
        assert_eq!(user_jwt_validity(&dir.path().join("missing"), now), None);
    }
}
