//! The caller side of natsplug: what an HTTP proxy embeds to hand the
//! phases of each exchange to plugin chains over NATS (docs/protocol.md).
//!
//! A [`Chain`] is an ordered list of plugins. For each HTTP exchange the
//! proxy makes an [`Exchange`] and hands it to the chain phase by phase:
//!
//! - [`Chain::request_filter`] before going upstream: each plugin sees the
//!   request as the plugins before it changed it; the first `end` answers
//!   the client ([`Verdict::Respond`]).
//! - [`Chain::response_filter`] when the upstream headers arrive, likewise.
//! - [`Chain::response_body_filter`] per body chunk: each plugin's output
//!   feeds the next, each plugin's carried `state` comes back to it with
//!   the next chunk.
//! - [`Chain::logging`] after the exchange: sent without waiting.
//!
//! Each plugin and phase has a [`PhasePolicy`]: a timeout that is the whole
//! budget of the call (default 200 ms), retries inside it after no
//! responders or a timeout (default 2), and a [`FailureMode`]: `closed`
//! stops the exchange with a [`PhaseFailure`] whose
//! [`status`](PhaseFailure::status) the client gets (504 timeout, 502 no
//! responders, 503 overload, 500 plugin failure), `open` goes on without
//! the plugin. The chain learns from the hosts' `$SRV.INFO` which phases
//! each plugin implements and skips the others ([`PhaseDirectory`]),
//! refreshed on a timer, after no responders, and at once when a host
//! announces a reloaded plugin's phases; and it counts everything per
//! plugin and phase ([`Chain::stats`]).
//!
//! [`PhaseCaller`] is the single-call layer under the chain: one request,
//! one typed outcome, every failure a [`CallError`].
//!
//! A chain takes any `async_nats::Client`, and an exchange may carry
//! another one in [`Exchange::connection`] for its calls: a proxy that
//! runs a runtime per thread gives each thread a connection of its own, so
//! that a call's request and reply stay on the thread that waits for them.
//! To connect with the options a host takes (its `[nats]` section: several
//! servers, user/password, token, NKey, `.creds`, TLS and mTLS, reconnect
//! backoff) and its explained connection errors, as `natsplug gateway`
//! does, use `natsplug::nats::connect_with` from the host library. With the
//! `prometheus` feature, `metrics::ChainCollector` exports a chain's
//! counters.
//!
//! ```no_run
//! use natsplug_client::{Chain, FailureMode, HttpRequest, HttpResponse, PluginConfig, Verdict};
//!
//! # async fn proxy() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let chain = Chain::builder(nats)
//!     .plugin("authz")
//!     .plugin_with(PluginConfig::new("header-injector").failure_mode(FailureMode::Open))
//!     .plugin("body-redactor")
//!     .build()
//!     .await?;
//!
//! let request = HttpRequest { method: "GET".into(), path: "/doc".into(), ..Default::default() };
//! let mut exchange = chain.exchange(request);
//! match chain.request_filter(&mut exchange).await {
//!     Ok(Verdict::Continue) => {} // send exchange.request upstream
//!     Ok(Verdict::Respond(local)) => return Ok(println!("{} from {}", local.status, local.plugin)),
//!     Err(failure) => return Ok(println!("answer {}: {failure}", failure.status())),
//! }
//! let upstream = HttpResponse { status: 200, ..Default::default() };
//! if let Ok(Verdict::Continue) = chain.response_filter(&mut exchange, upstream).await {
//!     for (chunk, last) in [(b"a sec".to_vec(), false), (b"ret".to_vec(), true)] {
//!         let output = chain.response_body_filter(&mut exchange, chunk, last).await?;
//!         print!("{}", String::from_utf8_lossy(&output.data)); // to the client
//!     }
//! }
//! chain.logging(&mut exchange);
//! # Ok(())
//! # }
//! ```

mod builder;
mod call;
mod chain;
mod exchange;
#[cfg(feature = "prometheus")]
pub mod metrics;
mod mutations;
mod phases;
mod policy;
mod retry;
mod stats;

pub use builder::{BuildError, ChainBuilder};
pub use call::{CallError, PhaseCaller};
pub use chain::Chain;
pub use exchange::{BodyOutput, Exchange, LocalResponse, PhaseFailure, Verdict};
pub use mutations::{apply_mutations, apply_to_request, apply_to_response, local_headers};
pub use natsplug_protocol::{HeaderList, HeaderMutations, HttpRequest, HttpResponse, Phase};
pub use phases::{Knowledge, PhaseDirectory};
pub use policy::{
    ChainConfig, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, DiscoveryConfig, FailureMode, PhasePolicy,
    PluginConfig, PolicyOverrides,
};
pub use stats::{LATENCY_BUCKETS_MICROS, LatencySnapshot, PhaseStats, PluginStats, StatsSnapshot};
