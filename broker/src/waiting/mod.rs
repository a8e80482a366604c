//! How a client waits for a held call, and how the answer reaches it.
//!
//! Three ways to wait: on the open request (an SSE stream with progress keep-alives; the
//! client may drop and resume it), by polling an MCP task, or not at all (retry mode, which
//! the gateway answers at once). Each held call that a client waits for gets a [`Feed`]
//! ([`feed`]): the events its client should see. The [`driver`] sees the call through
//! (keep-alives, cancellation by a closed stream, forwarding on approval); [`stream`] serves
//! the feed to the client's request or resumption; [`tasks`] answers `tasks/*` for calls the
//! client polls; [`recover`] rebuilds the request of a call held before a restart.

mod driver;
mod feed;
mod recover;
mod stream;
pub mod tasks;

pub use driver::{Drive, outcome_unknown, start};
pub use feed::Feeds;
pub use recover::rebuild;
pub use stream::{respond, resume};
