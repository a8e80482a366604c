//! Types that both halves of Tollgate agree on.
//!
//! The broker writes [`CallRecord`]s into its store and the console (and the broker's own `audit`
//! command) reads them back, so the record's shape lives here, in one place, with serde
//! round-trip tests. Everything is plain data: no I/O, no async.
//!
//! [`console`] holds the console WebSocket protocol and [`audit`] the hash-chained audit entry.

pub mod audit;
#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
pub mod console;
mod digest;
pub mod fs;
mod json_text;
mod names;
mod record;
pub mod report;
pub mod signing;
#[cfg(feature = "sshsig")]
pub mod sshsig;
pub mod sync;
#[cfg(feature = "tls")]
pub mod tls;

pub use digest::{ArgsHash, Digest, Fingerprint, hex, unhex};
pub use json_text::JsonText;
pub use names::{Name, intern};
pub use record::{
    CallRecord, Decision, Finding, Hold, HoldMode, Outcome, RuleKind, RuleRef, Signals, Timings,
    UnknownOutcome, Verdict, without_sessions,
};

/// Version of the record format and wire protocol in this crate. Bumped on any change that an
/// older reader could misread.
pub const PROTOCOL_VERSION: u32 = 2;
