//! Live reload: SIGHUP, `tollgate-broker reload` (through the admin listener) and the config
//! file re-read while the broker runs, without losing a held call, a session or a console.
//!
//! What a reload replaces, for the requests that arrive after it: the rules and the guards'
//! settings (DLP, rate limits, loops), the clients, the servers (added, removed or changed),
//! the notification sinks and escalations, and the TLS certificates. Rate-limit buckets and
//! loop windows carry over when their settings did not change. What a call already loaded
//! stays with it: a held call keeps the upstream it was made to (so a server removed while it
//! has held calls still runs them once approved) and the policy version it was judged under.
//! Settings that need a restart (every `[broker]` setting, and the budgets) are named when they
//! differ and otherwise left as they were.
//! A new config with any problem is refused whole, with every problem's line and column, and
//! the running one stays.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tollgate_shared::clock::now_ms;
use tollgate_shared::console::ServerMsg;
use tollgate_shared::sync::Mutex;

use crate::config::{self, Config, ServerSpec};
use crate::frontend::Frontend;
use crate::gateway::{Annotations, Guards};
use crate::metrics;
use crate::notify;
use crate::queue::Queue;
use crate::tls::Tls;
use crate::upstream::Upstream;

/// The policy and guards a config describes, keeping `previous`'s rate-limit buckets and loop
/// windows when their settings are the same.
pub fn guards(config: &Config, previous: Option<&Guards>) -> Guards {
    // Settings are compared by their Debug text: deterministic (patterns print their source)
    // and it spares every guard type an equality it would need only for this.
    let same =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let limiter = match previous {
        Some(p) if same(&p.limiter.limits(), &config.limits.as_slice()) => p.limiter.clone(),
        _ => Arc::new(tollgate_policy::guards::limits::Limiter::new(
            config.limits.clone(),
        )),
    };
    let loops = match previous {
        Some(p) if same(&p.loops.config, &config.loops) => p.loops.clone(),
        _ => Arc::new(tollgate_policy::guards::loops::Loops::new(
            config.loops.clone(),
        )),
    };
    Guards {
        policy: config.policy.clone(),
        dlp: config.dlp.guard().map(Arc::new),
        limiter,
        loops,
    }
}

/// The upstreams of `servers`: those unchanged since `previous` are kept (with their
/// sessions), the others started; stdio ones get their idle reaper.
pub fn upstreams(
    servers: &[ServerSpec],
    previous: Option<(&[ServerSpec], &HashMap<String, Upstream>)>,
    annotations: &Arc<Annotations>,
    session_idle: std::time::Duration,
) -> Result<HashMap<String, Upstream>, String> {
    let mut out = HashMap::new();
    for s in servers {
        let kept = previous.and_then(|(specs, running)| {
            let old = specs.iter().find(|o| o.name == s.name)?;
            (format!("{old:?}") == format!("{s:?}"))
                .then(|| running.get(&s.name).cloned())
                .flatten()
        });
        let u = match kept {
            Some(u) => u,
            None => {
                let u = Upstream::start(s, annotations.clone())
                    .map_err(|e| format!("server {:?}: {e}", s.name))?;
                if let Upstream::Stdio(stdio) = &u {
                    tokio::spawn(stdio.clone().reap(session_idle));
                }
                u
            }
        };
        out.insert(s.name.clone(), u);
    }
    Ok(out)
}

/// Everything a reload touches.
pub struct Reloader {
    /// The config file.
    pub path: PathBuf,
    /// The config in force.
    pub running: tokio::sync::Mutex<Config>,
    /// Where the policy, guards, clients and upstreams live.
    pub fe: Arc<Frontend>,
    /// Consoles hear of reloads through its events.
    pub queue: Arc<Queue>,
    /// Shared by old and new upstreams.
    pub annotations: Arc<Annotations>,
    /// Stops the running notifier.
    pub notifier: Mutex<CancellationToken>,
    /// Notification counts, kept across notifiers.
    pub health: Arc<notify::Health>,
    /// The listeners' certificates.
    pub tls: Option<Arc<Tls>>,
}

impl Reloader {
    /// Start the notifier for `config` (at start, and after each reload that changes it).
    pub fn start_notifier(&self, config: &Config) {
        let stop = CancellationToken::new();
        let old = std::mem::replace(&mut *self.notifier.lock(), stop.clone());
        old.cancel();
        notify::start(
            self.queue.clone(),
            config.notify.clone(),
            config.escalations(),
            config.dlp.guard().map(Arc::new),
            self.health.clone(),
            stop,
        );
    }

    /// Re-read the config file and apply it; `Ok` says what changed, `Err` why it was refused
    /// (every problem). Consoles are told either way.
    pub async fn reload(&self) -> Result<String, String> {
        let mut running = self.running.lock().await;
        let result = self.apply(&mut running);
        let msg = ServerMsg::Config {
            policy: running.policy.version.to_string(),
            at_ms: now_ms(),
            refused: result.as_ref().err().cloned(),
        };
        self.queue.announce(msg);
        metrics::global().reloaded(result.is_ok());
        match &result {
            Ok(what) => {
                tracing::info!(policy = %running.policy.version, "configuration reloaded: {what}")
            }
            Err(why) => {
                tracing::error!("the new configuration was refused; the running one stays:\n{why}")
            }
        }
        result
    }

    fn apply(&self, running: &mut Config) -> Result<String, String> {
        let new = config::load(&self.path).map_err(|e| e.to_string())?;
        for w in &new.warnings {
            tracing::warn!(line = w.line, "{}", w.message);
        }
        let upstreams = {
            let current = self.fe.upstreams.load();
            upstreams(
                &new.servers,
                Some((&running.servers, &current)),
                &self.annotations,
                new.broker.session_idle,
            )?
        };
        let mut changed = Vec::new();
        let debug = |v: &dyn std::fmt::Debug| format!("{v:?}");
        if running.policy.version != new.policy.version {
            changed.push(format!(
                "policy {} -> {}",
                running.policy.version, new.policy.version
            ));
        }
        let old_names: Vec<&str> = running.servers.iter().map(|s| s.name.as_str()).collect();
        let new_names: Vec<&str> = new.servers.iter().map(|s| s.name.as_str()).collect();
        for n in new_names.iter().filter(|n| !old_names.contains(n)) {
            changed.push(format!("server {n} added"));
        }
        for n in old_names.iter().filter(|n| !new_names.contains(n)) {
            let held = self
                .queue
                .snapshot()
                .iter()
                .filter(|c| &*c.server == *n)
                .count();
            changed.push(format!(
                "server {n} removed ({held} held calls keep it until decided)"
            ));
        }
        for s in &new.servers {
            if let Some(old) = running.servers.iter().find(|o| o.name == s.name)
                && debug(old) != debug(s)
            {
                changed.push(format!(
                    "server {} changed (its open sessions end; held calls keep the old one)",
                    s.name
                ));
            }
        }
        // Every [broker] setting is read once at start: a change needs a restart.
        macro_rules! differing {
            ($a:expr, $b:expr; $($key:literal => $field:ident),* $(,)?) => {
                [$(($key, debug(&$a.$field) != debug(&$b.$field))),*]
            };
        }
        let (a, b) = (&running.broker, &new.broker);
        let mut restart: Vec<&str> = differing!(a, b;
            "listen" => listen, "console_listen" => console_listen,
            "admin_listen" => admin_listen, "data_dir" => data_dir, "max_body" => max_body,
            "store_cache" => store_cache, "session_idle" => session_idle,
            "allowed_origins" => allowed_origins, "allowed_hosts" => allowed_hosts,
            "default_expiry" => default_expiry, "keepalive" => keepalive,
            "retry_ttl" => retry_ttl, "resume_grace" => resume_grace,
            "max_connections" => max_connections,
            "max_connections_per_peer" => max_connections_per_peer,
            "header_timeout" => header_timeout, "on_store_error" => forward_when_store_fails,
            "[broker.tls] paths" => tls, "log_format" => log_json,
            "default_server" => default_server, "sync_linger" => sync_linger,
            "sync_before_forward" => sync_before_forward, "worker_threads" => worker_threads,
        )
        .into_iter()
        .filter_map(|(k, differs)| differs.then_some(k))
        .collect();
        if debug(&running.budgets) != debug(&new.budgets) {
            restart.push("[[budget]]");
        }
        // Apply: guards and policy, clients, upstreams, notifications, certificates.
        let previous = self.fe.gateway.guards.load();
        self.fe
            .gateway
            .guards
            .store(Arc::new(guards(&new, Some(&previous))));
        self.fe.auth.store(Arc::new(new.auth.clone()));
        self.fe.upstreams.store(Arc::new(upstreams));
        if debug(&running.notify) != debug(&new.notify)
            || debug(&running.escalations()) != debug(&new.escalations())
        {
            self.start_notifier(&new);
            changed.push("notification sinks".into());
        }
        if let Some(tls) = &self.tls {
            tls.reload_logged(true);
        }
        *running = new;
        let mut what = if changed.is_empty() {
            "nothing changed".to_string()
        } else {
            changed.join("; ")
        };
        if !restart.is_empty() {
            tracing::warn!(settings = ?restart, "these settings changed but need a restart; the running values stay");
            what.push_str(&format!(
                "; needs a restart to change: {}",
                restart.join(", ")
            ));
        }
        Ok(what)
    }
}
