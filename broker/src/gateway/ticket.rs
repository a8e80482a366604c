//! A forwarded call's ticket: its record, written once the upstream's answer has been relayed
//! (or has failed), so an allowed call costs one store write for its outcome.

use std::sync::Arc;

use tollgate_policy::guards::Scrub;
use tollgate_shared::CallRecord;
use tollgate_shared::clock::now_ms;
use tollgate_store::{Backend, Writes};

/// A forwarded call whose completion is still to be recorded.
pub struct Ticket {
    pub(super) record: Option<Box<CallRecord>>,
    pub(super) store: Arc<dyn Backend>,
    /// DLP rewrote the request's arguments: re-serialise it before forwarding.
    pub rewritten: bool,
    /// Keeps the call's secrets out of its recorded error.
    pub(super) scrub: Option<Scrub>,
}

impl Ticket {
    /// The call's span, for the log lines of its forwarding.
    pub fn span(&self) -> tracing::Span {
        self.record
            .as_deref()
            .map_or_else(tracing::Span::none, super::call_span)
    }

    /// Take the record (and the call's scrub) out without recording a completion (someone
    /// else will).
    pub fn disarm(mut self) -> Option<(CallRecord, Option<Scrub>)> {
        let scrub = self.scrub.take();
        self.record.take().map(|r| (*r, scrub))
    }

    /// Record that the upstream answered (`error` is `Some` when forwarding failed).
    pub fn complete(mut self, error: Option<String>) {
        self.finish(error);
    }

    fn finish(&mut self, error: Option<String>) {
        if let Some(mut record) = self.record.take() {
            record.timings.completed_ms = Some(now_ms());
            record.error = match &self.scrub {
                Some(s) => error.map(|e| s.text(e)),
                None => error,
            };
            let store = self.store.clone();
            tokio::spawn(async move { store.write(Arc::new(*record), Writes::Record).await });
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.finish(Some(
                "the response was not relayed in full: the client or upstream went away".into(),
            ));
        }
    }
}
