//! Tollgate's pure checks: everything the broker decides about a call that needs no I/O.
//!
//! - [`rules`]: the policy, an ordered list of rules over tool patterns ([`glob`]) and
//!   conditions, evaluated to allow, deny or hold for approval;
//! - [`guards`]: DLP secret scanning, rate limits, budgets and loop detection, which run before
//!   the policy so people only judge intent;
//! - [`fingerprint`]: canonical JSON, argument hashes and the exact and shape fingerprints that
//!   group repeated calls;
//! - [`identity`]: who talks to the broker (names, roles, server scopes) and how a bearer token
//!   is matched to one without leaking timing;
//! - [`approval`]: who may decide a held call and what a decision does to it.
//!
//! Every function here is a plain function over values (the guards keep their counters behind
//! a lock, with the time passed in), so all of it is tested without a runtime, a socket or a
//! disk. The layers above (store, queue, gateway) call into it.

pub mod approval;
pub mod fingerprint;
pub mod glob;
pub mod guards;
pub mod identity;
pub mod rules;

pub use glob::ToolPattern;
pub use rules::{
    Action, CallView, Cmp, Condition, HoldTerms, NEVER, Policy, Rule, Subject, Test, Verdict,
};
