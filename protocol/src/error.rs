//! Error replies: why a request was refused, and the code each reason
//! carries (docs/protocol.md, "Error replies").

/// Why a request was refused before or while it ran, with the code sent in
/// `Nats-Service-Error-Code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The payload is not a valid version-1 phase request (400).
    #[error("{0}")]
    BadRequest(String),
    /// The payload is larger than the host accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// The plugin failed: trap, panic, invalid result (500).
    #[error("{0}")]
    PluginFailed(String),
    /// The host is at its concurrency limit (503).
    #[error("{0}")]
    Overloaded(String),
    /// The plugin call ran past its deadline (504).
    #[error("{0}")]
    Timeout(String),
}

impl RequestError {
    /// Whether the plugin or a limit caused it (as opposed to the caller's
    /// input): these follow the plugin's failure mode.
    pub fn is_plugin_failure(&self) -> bool {
        matches!(
            self,
            RequestError::PluginFailed(_) | RequestError::Overloaded(_) | RequestError::Timeout(_)
        )
    }

    /// The numeric code for `Nats-Service-Error-Code`.
    pub fn code(&self) -> u16 {
        match self {
            RequestError::BadRequest(_) => 400,
            RequestError::TooLarge(_) => 413,
            RequestError::PluginFailed(_) => 500,
            RequestError::Overloaded(_) => 503,
            RequestError::Timeout(_) => 504,
        }
    }
}
