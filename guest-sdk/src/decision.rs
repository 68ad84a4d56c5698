//! Building a phase's decision. Each phase has its own decision type, so a
//! decision can only say what its phase can do:
//!
//! - `request-filter`: [`RequestChanges`] (headers, body, path) or a
//!   [`LocalResponse`], or a failure;
//! - `response-filter`: [`ResponseChanges`] (status, headers) or a
//!   [`LocalResponse`], or a failure;
//! - `response-body-filter`: [`ChunkChanges`] (the chunk's data, the state
//!   carried to the next chunk), or a failure.
//!
//! Each builder turns into its decision with `.into()`.

use crate::{
    ChunkChanges, ChunkDecision, HeaderChanges, LocalResponse, RequestChanges, RequestDecision,
    ResponseChanges, ResponseDecision,
};

fn changes(slot: &mut Option<HeaderChanges>) -> &mut HeaderChanges {
    slot.get_or_insert_with(|| HeaderChanges {
        remove: Vec::new(),
        set: Vec::new(),
    })
}

impl RequestDecision {
    /// Go on upstream with the request unchanged.
    pub fn next() -> Self {
        RequestDecision::Next(RequestChanges::new())
    }

    /// Fail the exchange; `reason` goes to the caller's logs.
    pub fn fail(reason: impl Into<String>) -> Self {
        RequestDecision::Fail(reason.into())
    }
}

impl ResponseDecision {
    /// Go on with the upstream response unchanged.
    pub fn next() -> Self {
        ResponseDecision::Next(ResponseChanges::new())
    }

    /// Fail the exchange; `reason` goes to the caller's logs.
    pub fn fail(reason: impl Into<String>) -> Self {
        ResponseDecision::Fail(reason.into())
    }
}

impl ChunkDecision {
    /// Send the chunk on unchanged.
    pub fn next() -> Self {
        ChunkDecision::Next(ChunkChanges::new())
    }

    /// Fail the exchange; `reason` goes to the caller's logs.
    pub fn fail(reason: impl Into<String>) -> Self {
        ChunkDecision::Fail(reason.into())
    }
}

impl RequestChanges {
    /// No change yet.
    pub fn new() -> Self {
        RequestChanges {
            headers: None,
            body: None,
            path: None,
        }
    }

    /// Set request header `name`, replacing every value it had.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        changes(&mut self.headers)
            .set
            .push((name.into(), value.into()));
        self
    }

    /// Remove every request header called `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        changes(&mut self.headers).remove.push(name.into());
        self
    }

    /// Replace the request body.
    pub fn replace_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Send the request upstream with this path (a query may follow a `?`).
    pub fn rewrite_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
}

impl Default for RequestChanges {
    fn default() -> Self {
        Self::new()
    }
}

impl From<RequestChanges> for RequestDecision {
    fn from(changes: RequestChanges) -> Self {
        RequestDecision::Next(changes)
    }
}

impl ResponseChanges {
    /// No change yet.
    pub fn new() -> Self {
        ResponseChanges {
            status: None,
            headers: None,
        }
    }

    /// Replace the upstream status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Set response header `name`, replacing every value it had.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        changes(&mut self.headers)
            .set
            .push((name.into(), value.into()));
        self
    }

    /// Remove every response header called `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        changes(&mut self.headers).remove.push(name.into());
        self
    }
}

impl Default for ResponseChanges {
    fn default() -> Self {
        Self::new()
    }
}

impl From<ResponseChanges> for ResponseDecision {
    fn from(changes: ResponseChanges) -> Self {
        ResponseDecision::Next(changes)
    }
}

impl ChunkChanges {
    /// No change yet.
    pub fn new() -> Self {
        ChunkChanges {
            data: None,
            state: None,
        }
    }

    /// Send this instead of the chunk's data.
    pub fn replace_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = Some(data.into());
        self
    }

    /// Bytes the caller hands back with the next chunk of the same
    /// exchange, as [`crate::Chunk::state`].
    pub fn carry_state(mut self, state: impl Into<Vec<u8>>) -> Self {
        self.state = Some(state.into());
        self
    }
}

impl Default for ChunkChanges {
    fn default() -> Self {
        Self::new()
    }
}

impl From<ChunkChanges> for ChunkDecision {
    fn from(changes: ChunkChanges) -> Self {
        ChunkDecision::Next(changes)
    }
}

impl LocalResponse {
    /// A response with `status` (100 to 599), no headers and no body.
    pub fn new(status: u16) -> Self {
        LocalResponse {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    /// Add header `name`; a name set twice keeps its last value.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The response body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl From<LocalResponse> for RequestDecision {
    fn from(response: LocalResponse) -> Self {
        RequestDecision::End(response)
    }
}

impl From<LocalResponse> for ResponseDecision {
    fn from(response: LocalResponse) -> Self {
        ResponseDecision::End(response)
    }
}
