//! Running the chain from Pingora's synchronous body hook.
//!
//! Pingora 0.9 calls `response_body_filter` as a plain function, while a
//! body chunk's phase calls are NATS requests to await. The gateway runs
//! its proxy on Pingora's work-stealing runtime, where a worker thread may
//! block: the thread hands its other tasks to the rest of the pool and
//! waits for the chunk's calls. Only exchanges whose chain implements
//! `response_body_filter` come here.

use std::future::Future;

use pingora::{Error, ErrorType, Result};
use tokio::runtime::{Handle, RuntimeFlavor};

/// Run `future` to completion on this thread.
pub fn run<F: Future>(future: F) -> Result<F::Output> {
    let handle = Handle::try_current().map_err(|_| {
        Error::explain(
            ErrorType::InternalError,
            "a body filter ran outside the proxy runtime",
        )
    })?;
    if handle.runtime_flavor() != RuntimeFlavor::MultiThread {
        return Err(Error::explain(
            ErrorType::InternalError,
            "response_body_filter needs the work-stealing proxy runtime",
        ));
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(future)))
}
