//! `tollgate-broker` as a library: a transparent MCP gateway that applies policy to every
//! `tools/call`. The binary's `main.rs` only calls [`cli::main`].
//!
//! The modules form layers; each imports only the layers below it (checked by
//! `tests/layers.rs`; `docs/architecture.md` has the diagram, the path of a call and where to
//! add things). Under them are the crates `tollgate-shared` (wire types, clock, locks),
//! `tollgate-policy` (pure checks) and `tollgate-store` (the store).
//!
//! | layer | modules | what it holds |
//! |---|---|---|
//! | 0 leaves | [`jsonrpc`], [`sse`], [`reply`], [`trim`], [`tls`], [`listen`], [`browser`], [`metrics`] | JSON-RPC and SSE framing, rendering answers, memory trimming, the listeners' certificates, accepting connections under limits, the `Origin`/`Host` checks, the Prometheus registry |
//! | 2 identity | [`auth`] | who a request comes from |
//! | 3 queue | [`queue`] | held calls, decisions, expiry, grants, temporary rules |
//! | 3.5 notifications | [`notify`] | telling people of held, escalated, expiring and decided calls |
//! | 4 gateway | [`gateway`] | the decision for one call: guards, policy, allow / refuse / hold |
//! | 5 transports and waiting | [`upstream`], [`waiting`] | stdio and HTTP upstreams; how a client waits for a held call |
//! | 6 edges | [`frontend`], [`console_api`], [`admin`] | the MCP endpoints, the console WebSocket API, metrics and health |
//! | 7 wiring | [`config`], [`reload`], [`serve`], [`diagnostics`], [`bridge`], [`cli`] | config parsed into each layer's types, live reload, the running broker, the commands |

pub(crate) mod admin;
pub(crate) mod auth;
pub(crate) mod bridge;
pub(crate) mod browser;
pub mod cli;
pub mod config;
pub(crate) mod console_api;
pub mod diagnostics;
pub(crate) mod frontend;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod gateway;
pub(crate) mod jsonrpc;
pub(crate) mod listen;
pub(crate) mod metrics;
pub(crate) mod notify;
// Public for the benchmarks, which drive the queue in process (`bench/benches/signing.rs`).
pub mod queue;
pub(crate) mod reload;
pub(crate) mod reply;
pub(crate) mod serve;
pub(crate) mod sse;
pub(crate) mod tls;
#[allow(unsafe_code)]
pub(crate) mod trim;
pub(crate) mod upstream;
pub(crate) mod waiting;
