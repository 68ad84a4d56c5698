//! Builders for [`Decision`], the answer a plugin gives for a phase.

use crate::{Action, Decision, HeaderMutations};

impl Decision {
    fn with_action(action: Action) -> Self {
        Decision {
            action,
            request_headers: None,
            response_headers: None,
            status: None,
            body: None,
            error: None,
            path: None,
            state: None,
        }
    }

    /// Continue unchanged; chain the mutation methods to change things.
    pub fn next() -> Self {
        Self::with_action(Action::Next)
    }

    /// Answer the client now with `status` and `body` (no upstream call).
    pub fn respond(status: u16, body: impl Into<Vec<u8>>) -> Self {
        let mut decision = Self::with_action(Action::End);
        decision.status = Some(status);
        decision.body = Some(body.into());
        decision
    }

    /// Fail the phase with a message for the caller's logs.
    pub fn fail(message: impl Into<String>) -> Self {
        let mut decision = Self::with_action(Action::Fail);
        decision.error = Some(message.into());
        decision
    }

    /// Set request header `name` (replacing every value it had).
    pub fn set_request_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        mutations(&mut self.request_headers)
            .set
            .push((name.into(), value.into()));
        self
    }

    /// Remove every request header called `name`.
    pub fn remove_request_header(mut self, name: impl Into<String>) -> Self {
        mutations(&mut self.request_headers)
            .remove
            .push(name.into());
        self
    }

    /// Set response header `name`; with [`Decision::respond`] this sets a
    /// header of the local response.
    pub fn set_response_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        mutations(&mut self.response_headers)
            .set
            .push((name.into(), value.into()));
        self
    }

    /// Remove every response header called `name`.
    pub fn remove_response_header(mut self, name: impl Into<String>) -> Self {
        mutations(&mut self.response_headers)
            .remove
            .push(name.into());
        self
    }

    /// Replace the body: the request body in `request_filter`, the chunk in
    /// `response_body_filter`.
    pub fn replace_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Set the status (of the local response with `respond`, or the upstream
    /// response in `response_filter`).
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// `request_filter`: send the request upstream with this path (a query
    /// may follow a `?`).
    pub fn rewrite_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// `response_body_filter`: bytes the caller hands back with the next
    /// chunk of the same exchange, as [`crate::Chunk::state`].
    pub fn carry_state(mut self, state: impl Into<Vec<u8>>) -> Self {
        self.state = Some(state.into());
        self
    }
}

fn mutations(slot: &mut Option<HeaderMutations>) -> &mut HeaderMutations {
    slot.get_or_insert_with(|| HeaderMutations {
        set: Vec::new(),
        remove: Vec::new(),
    })
}
