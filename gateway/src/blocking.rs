//! Running the chain from Pingora's synchronous body hook.
//!
//! Pingora 0.9 calls `response_body_filter` as a plain function, while a
//! body chunk's phase calls are NATS requests to await. A proxy thread's
//! runtime is a multi-thread runtime of one worker, which may block: the
//! worker hands the runtime, with the thread's other exchanges and its
//! NATS connection, to a new thread and waits for the chunk's calls. Only
//! exchanges whose chain implements `response_body_filter` come here.

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
            "response_body_filter needs a multi-thread proxy runtime",
        ));
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(future)))
}
