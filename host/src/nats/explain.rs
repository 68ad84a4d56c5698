//! The wording of a failed first connection: what is wrong and what to check.

use anyhow::anyhow;
use async_nats::ConnectErrorKind;

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
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host of the URL: connect with a host name (or IP) the certificate lists".to_string(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_string(),
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
