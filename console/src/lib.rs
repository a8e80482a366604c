//! The approver's console for Tollgate, as a library: the binary `tollgate` (in `main.rs`) is
//! argument parsing on top of it, and the benchmarks drive its state and rendering directly.
//!
//! [`client`] talks to the broker's console API; [`cli`] is the scriptable commands; the TUI is
//! [`app`] (state and `update`), [`ui`] (pure rendering) and [`tui`] (the terminal loop), with
//! [`keys`] for bindings, [`alert`] for the bell and desktop notifications, and [`fmt`] for
//! text helpers.

pub mod alert;
pub mod app;
pub mod cli;
pub mod client;
pub mod fmt;
pub mod keys;
pub mod signing;
pub mod tui;
pub mod ui;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod triage_tests;
