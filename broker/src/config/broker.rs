//! `[broker]`: listeners, storage, timeouts and limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Validator;
use crate::tls::{ClientAuth, TlsSettings};

/// `[broker]`: listeners, storage and limits.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Address of the MCP frontends (`/mcp/<server>`).
    pub listen: SocketAddr,
    /// Directory of the sled store.
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Memory the store may use to cache its pages, in bytes.
    pub store_cache: usize,
    /// How long an upstream may stay silent on a request before the client gets an error.
    pub upstream_timeout: Duration,
    /// How long an idle MCP session (and its stdio child) is kept.
    pub session_idle: Duration,
    /// Browser origins allowed besides loopback ones.
    pub allowed_origins: Vec<String>,
    /// Host names clients may use for the broker besides IP addresses and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// Address of the console WebSocket API (`/v1/console`).
    pub console_listen: SocketAddr,
    /// How long a held call waits for a decision unless its rule says otherwise.
    pub default_expiry: Duration,
    /// Interval of keep-alives (progress notifications, SSE comments) on held calls.
    pub keepalive: Duration,
    /// How long an approved retry-mode call may be repeated (once) to run.
    pub retry_ttl: Duration,
    /// After a restart, how long a recovered held call waits for its client to resume its
    /// stream before it is abandoned.
    pub resume_grace: Duration,
    /// Connections each listener keeps open at once; more get `503` and are closed.
    pub max_connections: usize,
    /// Connections one peer address may keep open on each listener at once.
    pub max_connections_per_peer: usize,
    /// How long a client has to send a request's headers, counted from the connection's
    /// start or the end of its previous request: slow or idle connections are closed then.
    pub header_timeout: Duration,
    /// MCP sessions (with a stdio child each, on a `command` server) one client identity may
    /// keep open per server.
    pub max_sessions_per_client: usize,
    /// MCP sessions a `command` server may have open (one child process each).
    pub max_sessions_per_server: usize,
    /// Forward allowed calls while the store cannot write (`on_store_error = "forward"`);
    /// by default (`"refuse"`) they are refused, since they could not be recorded.
    pub forward_when_store_fails: bool,
    /// How long the records of calls nobody waits for (forwarded, refused, completed) wait
    /// for more writes before they are committed, so they share one sync. Bounds what a
    /// `kill -9` can lose of them. Zero commits each as soon as the store is free.
    pub sync_linger: Duration,
    /// Each forwarded call's audit entry is durable before the call is forwarded
    /// (`sync_before_forward = true`); by default it is written behind it, within
    /// `sync_linger`.
    pub sync_before_forward: bool,
    /// Threads of the async runtime (HTTP, WebSockets, the guards, the stdio pipes); disk
    /// syncs, the store's applier and large scans run on threads of their own.
    pub worker_threads: usize,
    /// `[broker.tls]`: both listeners speak TLS.
    pub tls: Option<TlsSettings>,
    /// Address of `/metrics`, `/livez` and `/readyz`; `None` when `admin_listen = "off"`.
    pub admin_listen: Option<SocketAddr>,
    /// `log_format = "json"` (`--log-format` overrides it).
    pub log_json: bool,
    /// The server `/mcp` serves (`default_server`); without it, `/mcp` serves the only server
    /// when there is one.
    pub default_server: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) data_dir: Option<String>,
    pub(super) auth: Option<Spanned<String>>,
    pub(super) max_body: Option<Spanned<toml::Value>>,
    pub(super) store_cache: Option<Spanned<toml::Value>>,
    pub(super) upstream_timeout: Option<Spanned<String>>,
    pub(super) session_idle: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) allowed_origins: Vec<String>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<String>,
    pub(super) console_listen: Option<Spanned<String>>,
    pub(super) default_expiry: Option<Spanned<String>>,
    pub(super) keepalive: Option<Spanned<String>>,
    pub(super) retry_ttl: Option<Spanned<String>>,
    pub(super) resume_grace: Option<Spanned<String>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_connections_per_peer: Option<Spanned<i64>>,
    pub(super) header_timeout: Option<Spanned<String>>,
    pub(super) max_sessions_per_client: Option<Spanned<i64>>,
    pub(super) max_sessions_per_server: Option<Spanned<i64>>,
    pub(super) on_store_error: Option<Spanned<String>>,
    pub(super) sync_linger: Option<Spanned<String>>,
    pub(super) sync_before_forward: Option<bool>,
    pub(super) worker_threads: Option<Spanned<i64>>,
    pub(super) allow_plaintext: Option<bool>,
    pub(super) admin_listen: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) default_server: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<RawTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Spanned<String>,
    key: Spanned<String>,
    client_ca: Option<Spanned<String>>,
    client_auth: Option<Spanned<String>>,
}

/// Defaults of the connection and session limits (`docs/configuration.md` explains them).
pub mod defaults {
    /// `max_connections`.
    pub const MAX_CONNECTIONS: usize = 4096;
    /// `max_connections_per_peer`.
    pub const MAX_CONNECTIONS_PER_PEER: usize = 1024;
    /// `max_sessions_per_client`.
    pub const MAX_SESSIONS_PER_CLIENT: usize = 16;
    /// `max_sessions_per_server`.
    pub const MAX_SESSIONS_PER_SERVER: usize = 64;

    /// `worker_threads`: half the CPUs, at least one. The broker shares its machine with the
    /// agents and the stdio servers it fronts, and each extra worker adds cross-thread wake-ups
    /// to every call: on 2 CPUs one worker took a fifth less CPU per call than two
    /// (`docs/performance.md`, CPU per call).
    pub fn worker_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }
}

impl Validator<'_> {
    fn address(&mut self, value: Option<Spanned<String>>, port: u16, what: &str) -> SocketAddr {
        let default = SocketAddr::from(([127, 0, 0, 1], port));
        match value {
            None => default,
            Some(l) => l.get_ref().parse().unwrap_or_else(|_| {
                self.problem(
                    l.span(),
                    format!("{what} address {:?} is not host:port", l.get_ref()),
                    Some("for example \"127.0.0.1:8080\"; use an IP address, not a host name"),
                );
                default
            }),
        }
    }

    pub(super) fn broker(&mut self, base: &Path, raw: RawBroker) -> BrokerSettings {
        let spans = [
            raw.listen.as_ref().map_or(0..0, |l| l.span()),
            raw.console_listen.as_ref().map_or(0..0, |l| l.span()),
            raw.admin_listen.as_ref().map_or(0..0, |l| l.span()),
        ];
        let listen = self.address(raw.listen, 8080, "listen");
        let console_listen = self.address(raw.console_listen, 8081, "console_listen");
        let admin_listen = match raw.admin_listen {
            Some(a) if a.get_ref() == "off" => None,
            other => Some(self.address(other, 8082, "admin_listen")),
        };
        let max_body = match raw.max_body {
            None => 4 << 20,
            Some(v) => parse_size(v.get_ref()).unwrap_or_else(|| {
                self.problem(
                    v.span(),
                    "max_body is not a size".into(),
                    Some("write a byte count (1048576) or a size like \"4MiB\" or \"512KiB\""),
                );
                4 << 20
            }),
        };
        let store_cache = match raw.store_cache {
            None => tollgate_store::DEFAULT_CACHE,
            Some(v) => parse_size(v.get_ref()).unwrap_or_else(|| {
                self.problem(
                    v.span(),
                    "store_cache is not a size".into(),
                    Some("write a byte count or a size like \"64MiB\""),
                );
                tollgate_store::DEFAULT_CACHE
            }),
        };
        let data_dir = base.join(raw.data_dir.unwrap_or_else(|| "tollgate-data".into()));
        let forward_when_store_fails = match raw
            .on_store_error
            .as_ref()
            .map(|v| v.get_ref().as_str())
        {
            None | Some("refuse") => false,
            Some("forward") => true,
            Some(other) => {
                if let Some(v) = &raw.on_store_error {
                    self.problem(
                        v.span(),
                        format!("on_store_error {other:?} is neither \"refuse\" nor \"forward\""),
                        Some("\"refuse\" (the default) refuses calls the broker cannot record; \"forward\" runs them and records them once the store can write"),
                    );
                }
                false
            }
        };
        let sync_linger = self.duration_up_to(
            raw.sync_linger,
            tollgate_store::DEFAULT_LINGER,
            "sync_linger",
            Some((
                tollgate_store::MAX_LINGER,
                "it bounds how much of the audit trail a crash can lose: a few milliseconds share a sync among a sequential agent's calls (the default is \"5ms\"; \"0ms\" commits every write as soon as the store is free)",
            )),
        );
        let tls = raw.tls.and_then(|t| self.tls(base, t));
        if tls.is_none() && raw.allow_plaintext != Some(true) {
            let mut listeners = vec![(listen, "listen"), (console_listen, "console_listen")];
            if let Some(a) = admin_listen {
                listeners.push((a, "admin_listen"));
            }
            for ((addr, key), span) in listeners.into_iter().zip(spans) {
                if !addr.ip().is_loopback() {
                    self.problem(
                        span,
                        format!("[broker] {key} = \"{addr}\" is reachable from other machines, but [broker.tls] is not set: tokens and call arguments would cross the network in plain text"),
                        Some("add [broker.tls] with cert and key (docs/configuration.md shows how to make them), or write allow_plaintext = true under [broker] when a TLS-terminating proxy or a private network carries the traffic"),
                    );
                }
            }
        }
        let log_json = match raw.log_format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                if let Some(f) = &raw.log_format {
                    self.problem(
                        f.span(),
                        format!("log_format {other:?} is neither \"text\" nor \"json\""),
                        None,
                    );
                }
                false
            }
        };
        BrokerSettings {
            sync_linger,
            sync_before_forward: raw.sync_before_forward.unwrap_or(false),
            default_server: raw.default_server.map(|s| s.into_inner()),
            tls,
            admin_listen,
            log_json,
            listen,
            data_dir,
            max_body,
            store_cache,
            upstream_timeout: self.duration(
                raw.upstream_timeout,
                Duration::from_secs(300),
                "upstream_timeout",
            ),
            session_idle: self.duration(raw.session_idle, Duration::from_secs(600), "session_idle"),
            allowed_origins: raw.allowed_origins,
            allowed_hosts: raw.allowed_hosts,
            console_listen,
            default_expiry: self.duration(
                raw.default_expiry,
                Duration::from_secs(600),
                "default_expiry",
            ),
            keepalive: self.duration(raw.keepalive, Duration::from_secs(15), "keepalive"),
            retry_ttl: self.duration(raw.retry_ttl, Duration::from_secs(600), "retry_ttl"),
            resume_grace: self.duration(raw.resume_grace, Duration::from_secs(60), "resume_grace"),
            max_connections: self
                .count("[broker]", "max_connections", raw.max_connections)
                .map_or(defaults::MAX_CONNECTIONS, |n| n as usize),
            max_connections_per_peer: self
                .count(
                    "[broker]",
                    "max_connections_per_peer",
                    raw.max_connections_per_peer,
                )
                .map_or(defaults::MAX_CONNECTIONS_PER_PEER, |n| n as usize),
            header_timeout: self.duration(
                raw.header_timeout,
                Duration::from_secs(10),
                "header_timeout",
            ),
            max_sessions_per_client: self
                .count(
                    "[broker]",
                    "max_sessions_per_client",
                    raw.max_sessions_per_client,
                )
                .map_or(defaults::MAX_SESSIONS_PER_CLIENT, |n| n as usize),
            forward_when_store_fails,
            worker_threads: self
                .count("[broker]", "worker_threads", raw.worker_threads)
                .map_or_else(defaults::worker_threads, |n| n as usize),
            max_sessions_per_server: self
                .count(
                    "[broker]",
                    "max_sessions_per_server",
                    raw.max_sessions_per_server,
                )
                .map_or(defaults::MAX_SESSIONS_PER_SERVER, |n| n as usize),
        }
    }
}

impl Validator<'_> {
    /// `[broker.tls]`: the files must exist and load (so `check` reports a bad certificate).
    fn tls(&mut self, base: &Path, raw: Spanned<RawTls>) -> Option<TlsSettings> {
        let span = raw.span();
        let raw = raw.into_inner();
        let client_auth = match raw.client_auth.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("both") => ClientAuth::Both,
            Some("console") => ClientAuth::Console,
            Some("mcp") => ClientAuth::Mcp,
            Some(other) => {
                if let Some(v) = &raw.client_auth {
                    self.problem(
                        v.span(),
                        format!("client_auth {other:?} is not \"console\", \"mcp\" or \"both\""),
                        Some("which listeners require a client certificate signed by client_ca"),
                    );
                }
                ClientAuth::Both
            }
        };
        if raw.client_auth.is_some() && raw.client_ca.is_none() {
            self.problem(
                span.clone(),
                "[broker.tls] client_auth needs client_ca, the CA that signs the client certificates".into(),
                None,
            );
        }
        let settings = TlsSettings {
            cert: base.join(raw.cert.get_ref()),
            key: base.join(raw.key.get_ref()),
            client_ca: raw.client_ca.as_ref().map(|c| base.join(c.get_ref())),
            client_auth,
        };
        match crate::tls::Tls::load(settings.clone()) {
            Ok(_) => Some(settings),
            Err(e) => {
                self.problem(
                    span,
                    format!("[broker.tls]: {e}"),
                    Some("cert and key are PEM files (relative paths are from the config file's directory); docs/configuration.md shows how to make them with openssl"),
                );
                None
            }
        }
    }
}

/// Parse a byte size: an integer, or a string like `4MiB`, `512KiB`, `1MB`, `100`.
pub(super) fn parse_size(v: &toml::Value) -> Option<usize> {
    match v {
        toml::Value::Integer(i) if *i > 0 => usize::try_from(*i).ok(),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: usize = num.parse().ok()?;
            let mult = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "kb" => 1000,
                "kib" | "k" => 1 << 10,
                "mb" => 1_000_000,
                "mib" | "m" => 1 << 20,
                "gb" => 1_000_000_000,
                "gib" | "g" => 1 << 30,
                _ => return None,
            };
            n.checked_mul(mult).filter(|n| *n > 0)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(
            parse_size(&toml::Value::String("4MiB".into())),
            Some(4 << 20)
        );
        assert_eq!(
            parse_size(&toml::Value::String("512 KiB".into())),
            Some(512 << 10)
        );
        assert_eq!(parse_size(&toml::Value::Integer(100)), Some(100));
        assert_eq!(parse_size(&toml::Value::String("lots".into())), None);
        let err = check("[broker]\nauth=\"none\"\nupstream_timeout = \"soon\"\n[[server]]\nname=\"a\"\ncommand=[\"x\"]\n")
            .expect_err("bad duration");
        assert_eq!(err.problems[0].line, 3);
    }
}
