//! `serve`: wire the config into a running gateway and shut it down cleanly.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::config;
use crate::console_api::{self, ConsoleApi};
use crate::frontend::sessions::Owners;
use crate::frontend::{self, Frontend};
use crate::gateway::{Annotations, Gateway};
use crate::listen;
use crate::queue::Queue;
use crate::upstream::Upstream;
use crate::waiting::{self, Feeds};
use tollgate_shared::{CallRecord, HoldMode, Outcome};
use tollgate_store::sled_engine::SledEngine;
use tollgate_store::tokens::Registry;
use tollgate_store::{Adopted, Backend, Store, Writes};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Run the broker until SIGINT/SIGTERM.
pub fn run(config_path: &Path, log_format: Option<LogFormat>) -> ExitCode {
    let config = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    init_logging(log_format.unwrap_or(if config.broker.log_json {
        LogFormat::Json
    } else {
        LogFormat::Text
    }));
    for w in &config.warnings {
        tracing::warn!(
            line = w.line,
            hint = w.hint.as_deref().unwrap_or(""),
            "{}",
            w.message
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.broker.worker_threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-broker: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config, config_path.to_path_buf())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-broker: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: config::Config, config_path: std::path::PathBuf) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fds = listen::raise_fd_limit();
    let (limits, console_limits) = listen::fit(
        listen::Limits {
            total: config.broker.max_connections,
            per_peer: config.broker.max_connections_per_peer,
            header_timeout: config.broker.header_timeout,
        },
        fds,
    );
    tracing::info!(
        open_file_limit = fds,
        max_connections = limits.total,
        max_connections_per_peer = limits.per_peer,
        console_connections = console_limits.total,
        "connection limits"
    );
    // Without an admin listener nobody reads the metrics: the store is not observed.
    let observer = config
        .broker
        .admin_listen
        .is_some()
        .then(crate::metrics::observer);
    let mut shared = None;
    let (store, engine): (Arc<dyn Backend>, Option<Arc<SledEngine>>) = match &config.store {
        crate::config::StoreSpec::Sled => {
            let engine = Arc::new(SledEngine::open_with(
                &config.broker.data_dir,
                config.broker.store_cache,
            )?);
            (
                Store::open_observed(engine.clone(), observer, config.broker.sync_linger).await?,
                Some(engine),
            )
        }
        crate::config::StoreSpec::Postgres(settings) => {
            let mut settings = (**settings).clone();
            settings.linger = config.broker.sync_linger;
            let store = tollgate_store::postgres::PgStore::open(settings, observer)
                .await
                .context("cannot open the [store] (PostgreSQL)")?;
            tracing::info!(
                node = store.node(),
                "the store is PostgreSQL, shared with the brokers that use the same database"
            );
            shared = Some(store.clone());
            (store, None)
        }
    };
    for (path, mode) in tollgate_shared::fs::too_open(&config.broker.data_dir) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "the data directory holds call arguments and token digests, but this is readable by others: chmod -R go-rwx {}",
            config.broker.data_dir.display()
        );
    }
    let temp = match &shared {
        Some(pg) => crate::queue::temp_rules::TempRules::shared(
            pg.clone(),
            tollgate_shared::clock::now_ms(),
        )
        .await
        .context("cannot read the temporary rules from PostgreSQL")?,
        None => crate::queue::temp_rules::TempRules::load(
            config.broker.data_dir.join("temp_rules.json"),
            tollgate_shared::clock::now_ms(),
        )?,
    };
    let queue = Queue::with_guards(
        store.clone(),
        config.broker.retry_ttl,
        tollgate_policy::guards::budget::Budgets::new(config.budgets.clone()),
        temp,
    );
    let feeds = Arc::new(Feeds::default());
    crate::trim::start(crate::trim::EVERY);
    // Connections opened before a token is revoked (or its role changed) hear of it within
    // a second, without waiting for their next request.
    let registry = match &shared {
        Some(pg) => {
            let registry = Arc::new(Registry::shared());
            pg.identities(&registry)
                .await
                .context("cannot read the identities from PostgreSQL")?;
            registry
        }
        None => {
            let registry = Arc::new(Registry::new(&config.broker.data_dir));
            tokio::spawn(registry.clone().watch(std::time::Duration::from_secs(1)));
            registry
        }
    };
    let annotations = Arc::new(Annotations::default());
    let upstreams = crate::reload::upstreams(
        &config.servers,
        None,
        &annotations,
        config.broker.session_idle,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let sessions = Arc::new(Owners::new(config.broker.session_idle));
    let dlp = config.dlp.guard().map(Arc::new);
    recover(&config, &queue, &feeds, &upstreams, &sessions, dlp.as_ref()).await;
    queue.follow();
    let grants = queue.restore_grants().await?;
    if grants > 0 {
        tracing::info!(
            grants,
            "approved retry-mode calls may still be repeated once"
        );
    }
    drop(dlp);
    let gateway = Gateway {
        guards: tollgate_shared::sync::Live::new(crate::reload::guards(&config, None)),
        annotations: annotations.clone(),
        store: store.clone(),
        queue: queue.clone(),
        default_expiry: config.broker.default_expiry,
        retry_ttl: config.broker.retry_ttl,
        throttle: Default::default(),
        forward_when_store_fails: config.broker.forward_when_store_fails,
        sync_before_forward: config.broker.sync_before_forward,
    };
    let browsers =
        crate::browser::Browsers::new(&config.broker.allowed_origins, &config.broker.allowed_hosts);
    let fe = Arc::new(Frontend {
        gateway,
        upstreams: tollgate_shared::sync::Live::new(upstreams),
        auth: tollgate_shared::sync::Live::new(config.auth.clone()),
        max_body: config.broker.max_body,
        browsers: browsers.clone(),
        registry: registry.clone(),
        feeds,
        keepalive: config.broker.keepalive,
        task_sessions: Default::default(),
        sessions,
        default_server: config.broker.default_server.clone(),
    });
    // With a shared store: the calls of a broker that stopped for good, as this one adopts them.
    if let Some(mut adopted) = store.adopted() {
        let (config, queue, fe) = (config.clone(), queue.clone(), fe.clone());
        tokio::spawn(async move {
            while let Some(calls) = adopted.recv().await {
                let dlp = config.dlp.guard().map(Arc::new);
                let upstreams = fe.upstreams.load();
                take_back(
                    &config,
                    &queue,
                    &fe.feeds,
                    &upstreams,
                    &fe.sessions,
                    dlp.as_ref(),
                    calls,
                )
                .await;
            }
        });
    }
    let notify = crate::notify::Health::new();
    let console_listener = tokio::net::TcpListener::bind(config.broker.console_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for consoles (set [broker] console_listen to a free address)",
                config.broker.console_listen
            )
        })?;
    let console_addr = console_listener.local_addr()?;
    let listener = tokio::net::TcpListener::bind(config.broker.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (set [broker] listen to a free address)",
                config.broker.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let admin_listener = match config.broker.admin_listen {
        None => None,
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| {
            format!("cannot listen on {a} for metrics and health (set [broker] admin_listen to a free address, or \"off\")")
        })?),
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let tls = match config.broker.tls.clone() {
        None => None,
        Some(settings) => {
            let tls = crate::tls::Tls::load(settings)
                .map_err(|e| anyhow::anyhow!("[broker.tls]: {e}"))?;
            tokio::spawn(tls.clone().watch(std::time::Duration::from_secs(5)));
            Some(tls)
        }
    };
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    tracing::info!(%addr, servers = config.servers.len(), rules = config.policy.rules.len(), "broker ready");
    systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "serving {} servers on {addr}",
            config.servers.len()
        )),
    ]);
    if let Some(every) = sd_notify::watchdog_enabled() {
        // The runtime answering is what the watchdog proves; a failing store is reported by
        // /readyz and the logs instead (a restart would not give the disk space back).
        tokio::spawn(async move {
            loop {
                systemd(&[sd_notify::NotifyState::Watchdog]);
                tokio::time::sleep(every / 2).await;
            }
        });
    }
    let reload_cell: Arc<std::sync::OnceLock<Arc<crate::reload::Reloader>>> = Arc::default();
    let reloader = Arc::new(crate::reload::Reloader {
        path: config_path.clone(),
        running: tokio::sync::Mutex::new(config.clone()),
        fe: fe.clone(),
        queue: queue.clone(),
        annotations,
        notifier: Default::default(),
        health: notify.clone(),
        tls: tls.clone(),
    });
    reloader.start_notifier(&config);
    let _ = reload_cell.set(reloader.clone());
    tokio::spawn(reloads(reloader.clone()));
    // Plain lines on stdout so scripts (and tests using port 0) learn the address. A reader
    // that closed stdout must not take the broker down, so write errors are ignored.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "tollgate-broker listening on {http}://{addr}");
        let _ = writeln!(out, "  consoles -> {ws}://{console_addr}/v1/console");
        if let Some(a) = admin_addr {
            let _ = writeln!(out, "  metrics -> {http}://{a}/metrics");
        }
        for s in &config.servers {
            let _ = writeln!(out, "  {} -> {http}://{addr}/mcp/{}", s.name, s.name);
        }
        let _ = out.flush();
    }
    let stopping = tokio_util::sync::CancellationToken::new();
    if let Some(admin_listener) = admin_listener {
        let admin = Arc::new(crate::admin::Admin {
            queue: queue.clone(),
            servers: config.servers.clone(),
            journal_bytes: Box::new({
                let engine = engine.clone();
                move || engine.as_ref().map_or(0, |e| e.journal_bytes())
            }),
            browsers: browsers.clone(),
            registry: registry.clone(),
            reload: {
                let cell = reload_cell.clone();
                Arc::new(move || {
                    let cell = cell.clone();
                    Box::pin(async move {
                        match cell.get() {
                            Some(r) => r.reload().await,
                            None => Err("the broker is still starting; try again".to_string()),
                        }
                    })
                })
            },
        });
        tokio::spawn(listen::serve(
            admin_listener,
            crate::admin::router(admin),
            console_limits,
            stopping.clone(),
            "admin",
            tls.clone().map(|t| (t, crate::tls::Side::Admin)),
        ));
    }
    let api = Arc::new(ConsoleApi {
        queue: queue.clone(),
        registry,
        browsers,
        notify: notify.subscribe(),
    });
    tokio::spawn(listen::serve(
        console_listener,
        console_api::router(api),
        console_limits,
        stopping.clone(),
        "console",
        tls.clone().map(|t| (t, crate::tls::Side::Console)),
    ));
    let server = listen::serve(
        listener,
        frontend::router(fe.clone()),
        limits,
        stopping.clone(),
        "mcp",
        tls.map(|t| (t, crate::tls::Side::Mcp)),
    );
    let mut server = std::pin::pin!(server);
    tokio::select! {
        () = &mut server => {},
        _ = shutdown_signal() => {
            systemd(&[sd_notify::NotifyState::Stopping]);
            tracing::info!("shutting down: stopping upstreams, draining connections, flushing the store");
            // Ending the sessions ends their streams, so graceful shutdown is not held up by
            // long-lived GET streams; whatever is still open after a grace period is cut.
            for u in fe.upstreams.load().values() {
                if let Upstream::Stdio(u) = u {
                    u.shutdown().await;
                }
            }
            stopping.cancel();
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await.is_err() {
                tracing::warn!("connections still open after 5s; closing them");
            }
        }
    }
    store.flush().await;
    if let Some(Err(e)) = engine.map(|e| e.checkpoint()) {
        tracing::warn!(error = %e, "cannot checkpoint the store; its journal is replayed at the next start");
    }
    Ok(())
}

/// Put the calls that were held when the broker last stopped back in the queue. Retry-mode
/// calls simply stay pending (their clients come back by repeating the call); a waiting
/// request's call gets `resume_grace` for its client to resume the stream with
/// `Last-Event-ID` before it is closed as `abandoned`.
async fn recover(
    config: &config::Config,
    queue: &Arc<Queue>,
    feeds: &Arc<Feeds>,
    upstreams: &HashMap<String, Upstream>,
    sessions: &Owners,
    dlp: Option<&Arc<tollgate_policy::guards::Dlp>>,
) {
    let store = queue.store();
    let own = Adopted {
        from: String::new(),
        pending: store.pending(),
        unfinished: store.unfinished(),
        unsent: store.approved_unsent(),
    };
    if !own.pending.is_empty() {
        tracing::info!(
            calls = own.pending.len(),
            "recovered held calls from the store"
        );
    }
    take_back(config, queue, feeds, upstreams, sessions, dlp, own).await;
}

/// See through calls whose clients wait on this broker, found at start (its own, held when it
/// stopped) or adopted from a broker sharing the store that stopped for good: the same way.
async fn take_back(
    config: &config::Config,
    queue: &Arc<Queue>,
    feeds: &Arc<Feeds>,
    upstreams: &HashMap<String, Upstream>,
    sessions: &Owners,
    dlp: Option<&Arc<tollgate_policy::guards::Dlp>>,
    calls: Adopted,
) {
    for record in calls.unfinished {
        outcome_unknown(queue, feeds, sessions, &record).await;
    }
    forward_approved_meanwhile(config, queue, feeds, upstreams, sessions, dlp, calls.unsent).await;
    for record in calls.pending {
        let (mode, upstream) = resumable(&record, upstreams, sessions);
        let id = record.id.clone();
        let waiting = queue.adopt(record);
        match (mode, upstream) {
            (HoldMode::Retry, _) => {}
            (_, Err(why)) => {
                queue.close(&id, Outcome::Abandoned, Some(why)).await;
            }
            (mode, Ok(upstream)) => drive(config, queue, feeds, dlp, waiting, upstream, mode),
        }
    }
}

/// How a call recovered at start can be seen through: its hold mode, and its upstream or why
/// it cannot be forwarded after a restart. The session it was made on is its client's again.
fn resumable(
    record: &CallRecord,
    upstreams: &HashMap<String, Upstream>,
    sessions: &Owners,
) -> (HoldMode, Result<Upstream, String>) {
    if let Some(s) = &record.session {
        sessions.created(s, record.client.clone());
    }
    let mode = record.hold.as_ref().map_or(HoldMode::Stream, |h| h.mode);
    let upstream = if record.hold.as_ref().is_some_and(|h| h.secrets_withheld) {
        Err("its arguments held secrets, which the store never keeps, so it cannot be forwarded after a restart".to_string())
    } else {
        upstreams
            .get(&*record.server)
            .cloned()
            .ok_or_else(|| format!("server {:?} is no longer configured", record.server))
    };
    (mode, upstream)
}

/// Forward the calls another broker's console approved while this broker was not running
/// (their clients wait on this broker, which alone forwards them): their clients collect the
/// answers as they would after any restart.
async fn forward_approved_meanwhile(
    config: &config::Config,
    queue: &Arc<Queue>,
    feeds: &Arc<Feeds>,
    upstreams: &HashMap<String, Upstream>,
    sessions: &Owners,
    dlp: Option<&Arc<tollgate_policy::guards::Dlp>>,
    unsent: Vec<Arc<CallRecord>>,
) {
    for record in unsent {
        match resumable(&record, upstreams, sessions) {
            (mode, Ok(upstream)) => {
                tracing::info!(call = %record.id, "forwarding a call approved while the broker was stopped");
                let waiting = crate::queue::Waiting::approved((*record).clone());
                drive(config, queue, feeds, dlp, waiting, upstream, mode);
            }
            (_, Err(why)) => {
                let mut done = (*record).clone();
                done.timings.completed_ms = Some(tollgate_shared::clock::now_ms());
                done.error = Some(format!(
                    "approved while the broker was stopped, but not forwarded: {why}"
                ));
                queue.store().write(Arc::new(done), Writes::Record).await;
            }
        }
    }
}

/// See a recovered call through: wait for its decision (or forward it, approved), for a
/// client that resumes its stream within `resume_grace` or polls its task.
fn drive(
    config: &config::Config,
    queue: &Arc<Queue>,
    feeds: &Arc<Feeds>,
    dlp: Option<&Arc<tollgate_policy::guards::Dlp>>,
    waiting: crate::queue::Waiting,
    upstream: Upstream,
    mode: HoldMode,
) {
    let record = waiting.record.clone();
    // A task's client comes back by polling its id, so it gets no grace deadline.
    let task = (mode == HoldMode::Task).then(|| waiting::tasks::flavor_of(&record));
    waiting::start(waiting::Drive {
        queue: queue.clone(),
        feeds: feeds.clone(),
        inbound: waiting::rebuild(&record),
        waiting,
        upstream,
        keepalive: config.broker.keepalive,
        grace: task.is_none().then_some(config.broker.resume_grace),
        task,
        // The secrets the call carried were never stored; the detectors still keep any out
        // of its recorded error.
        scrub: dlp.map(|d| tollgate_policy::guards::Scrub::new(d.clone(), Vec::new())),
    });
}

/// Close an approved call the broker was forwarding when it stopped: it may or may not have run,
/// and forwarding it again could run it twice, so it is closed as `abandoned` with the reason
/// "outcome unknown", and its client is told so when it comes back (see
/// [`waiting::outcome_unknown`]). Until the close is written, the call is reported again at
/// every start.
async fn outcome_unknown(
    queue: &Queue,
    feeds: &Arc<Feeds>,
    sessions: &Owners,
    record: &CallRecord,
) {
    if let Some(s) = &record.session {
        sessions.created(s, record.client.clone());
    }
    let mut closed = record.clone();
    closed.outcome = Outcome::Abandoned;
    closed.reason = Some(
        "outcome unknown: approved, but the broker stopped while forwarding it, so it may or may not have run; it was not forwarded again".into(),
    );
    tracing::warn!(call = %record.id, server = %record.server, tool = %record.tool, "an approved call was being forwarded when the broker stopped: outcome unknown, not forwarded again");
    let closed = Arc::new(closed);
    if let Err(e) = queue
        .store()
        .write_durably(closed.clone(), Writes::Both)
        .await
    {
        tracing::error!(call = %record.id, error = %e, "cannot record that the call's outcome is unknown; it is reported again at the next start");
    }
    waiting::outcome_unknown(feeds, &closed);
}

/// Tell systemd (when it started us with `Type=notify`); a failure is logged, never fatal.
fn systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// SIGHUP: re-read what can change without a restart (see [`crate::reload`]), telling systemd
/// `RELOADING=1` first and `READY=1` after.
async fn reloads(reloader: Arc<crate::reload::Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let mut state = vec![sd_notify::NotifyState::Reloading];
            if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                state.push(now);
            }
            systemd(&state);
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = reloader.reload().await;
            systemd(&[sd_notify::NotifyState::Ready]);
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
