//! Notifications: telling people that a call waits, was escalated, is about to expire, was
//! decided or expired, through `[[notify]]` sinks (webhook, Slack, PagerDuty, a command).
//!
//! One dispatcher task follows the queue's events (the same broadcast consoles get, so it never
//! holds up a hold or a decision: a dispatcher that falls behind misses events, which are
//! counted as dropped). It keeps the timers of escalations and expiry warnings, and coalesces:
//! events of one pattern (kind, server, tool, argument shape) that arrive within a sink's
//! `coalesce` gap of each other become one notification ("500 calls of everything/echo"),
//! sent when the pattern has been quiet for the gap or after `coalesce_max`. Each sink then has
//! its own bounded queue and worker, which spaces deliveries to the sink's rate limit and
//! retries failures with exponential backoff and jitter; what it gives up on, or what does not
//! fit its queue, is counted, logged and shown to consoles ([`NotifyHealth`]).

mod deliver;
pub mod payload;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tollgate_policy::ToolPattern;
use tollgate_policy::glob::Glob;
use tollgate_policy::guards::Dlp;
use tollgate_shared::clock::now_ms;
use tollgate_shared::console::{NotifyHealth, ServerMsg};
use tollgate_shared::{CallRecord, Name, Outcome};

use crate::queue::Queue;

pub use deliver::Answer;

/// Send one sample `held` event to each sink (or the one named), once, without retries:
/// `tollgate-broker notify test`. Returns each sink's name and answer.
pub async fn test(specs: &[SinkSpec], only: Option<&str>) -> Vec<(String, Answer)> {
    let http = deliver::http_client();
    let mut out = Vec::new();
    for spec in specs.iter().filter(|s| only.is_none_or(|n| n == s.name)) {
        let mut call = crate::queue::sample_call(1);
        call.rule.name = "notify-test".into();
        call.client = "tollgate-broker-notify-test".into();
        let call = Arc::new(call);
        let note = Note {
            kind: Kind::Held,
            summary: payload::summary(&call, None),
            ids: vec![call.id.clone()],
            call,
            count: 1,
            pending: 1,
            escalated_after: None,
        };
        out.push((
            spec.name.clone(),
            deliver::send_once(spec, &note, &http).await,
        ));
    }
    out
}

/// What happened to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// It is held for a decision.
    Held,
    /// It waited past its rule's `escalate_after`.
    Escalated,
    /// It expires within the sink's `expiring_before`.
    Expiring,
    /// It was approved, rejected, cancelled by its client or abandoned.
    Decided,
    /// Nobody decided in time.
    Expired,
}

impl Kind {
    /// Every kind, in config order.
    pub const ALL: [Kind; 5] = [
        Kind::Held,
        Kind::Escalated,
        Kind::Expiring,
        Kind::Decided,
        Kind::Expired,
    ];

    /// The name in `events = [...]` and in payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Held => "held",
            Kind::Escalated => "escalated",
            Kind::Expiring => "expiring",
            Kind::Decided => "decided",
            Kind::Expired => "expired",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a sink delivers.
#[derive(Debug, Clone)]
pub enum Target {
    /// A JSON POST of the event, signed with HMAC-SHA256 when a secret is set.
    Webhook {
        /// The receiver.
        url: reqwest::Url,
        /// The HMAC key.
        secret: Option<String>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The incoming webhook's URL.
        url: reqwest::Url,
    },
    /// PagerDuty's Events API v2.
    PagerDuty {
        /// The events endpoint.
        url: reqwest::Url,
        /// The service integration's routing key.
        routing_key: String,
    },
    /// A program run with the event as JSON on stdin.
    Command {
        /// The program and its arguments.
        argv: Vec<String>,
    },
}

/// Which calls a sink hears of; an empty list matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Server names.
    pub servers: Vec<Glob>,
    /// `server/tool` patterns.
    pub tools: Vec<ToolPattern>,
    /// Rule names.
    pub rules: Vec<Glob>,
    /// Client identities.
    pub clients: Vec<Glob>,
}

impl Filter {
    fn matches(&self, c: &CallRecord) -> bool {
        let any =
            |globs: &[Glob], text: &str| globs.is_empty() || globs.iter().any(|g| g.matches(text));
        any(&self.servers, &c.server)
            && any(&self.rules, &c.rule.name)
            && any(&self.clients, &c.client)
            && (self.tools.is_empty() || self.tools.iter().any(|t| t.matches(&c.server, &c.tool)))
    }
}

/// One `[[notify]]` sink.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Its name (in logs, `escalate_to` and `notify test --sink`).
    pub name: String,
    /// Where it delivers.
    pub target: Target,
    /// Which calls.
    pub filter: Filter,
    /// Which events (an `escalate_to` sink gets its rule's escalations whatever this says).
    pub events: Vec<Kind>,
    /// How long before a call's expiry `expiring` is sent.
    pub expiring_before: Duration,
    /// Events of one pattern closer than this are one notification.
    pub coalesce: Duration,
    /// A pattern's notification waits at most this long for more events.
    pub coalesce_max: Duration,
    /// Deliveries per minute at most.
    pub per_minute: u32,
    /// How long one delivery may take.
    pub timeout: Duration,
    /// Attempts after the first failed one.
    pub retries: u32,
    /// Notifications waiting for delivery at most; more are dropped (and counted).
    pub queue: usize,
    /// A link to the call, with `{id}`, `{server}`, `{tool}` and `{fingerprint}` filled in.
    pub link_template: Option<String>,
}

/// Sink defaults, for the config and the docs.
pub mod defaults {
    use std::time::Duration;
    /// `expiring_before`.
    pub const EXPIRING_BEFORE: Duration = Duration::from_secs(60);
    /// `coalesce`.
    pub const COALESCE: Duration = Duration::from_secs(2);
    /// `coalesce_max`.
    pub const COALESCE_MAX: Duration = Duration::from_secs(30);
    /// `per_minute`.
    pub const PER_MINUTE: u32 = 30;
    /// `timeout`.
    pub const TIMEOUT: Duration = Duration::from_secs(10);
    /// `retries`.
    pub const RETRIES: u32 = 4;
    /// `queue`.
    pub const QUEUE: usize = 256;
    /// The PagerDuty Events API v2 endpoint.
    pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
}

/// A rule's escalation: after how long, to which sinks.
#[derive(Debug, Clone)]
pub struct Escalation {
    /// The rule's `escalate_after`.
    pub after: Duration,
    /// The sinks, by name.
    pub to: Vec<String>,
}

/// One notification: an event, or several of one pattern coalesced.
#[derive(Debug, Clone)]
pub struct Note {
    /// What happened.
    pub kind: Kind,
    /// The first call of the group (its final record for `decided` and `expired`).
    pub call: Arc<CallRecord>,
    /// Calls in the group.
    pub count: usize,
    /// Their ids, the first [`IDS_SHOWN`].
    pub ids: Vec<Name>,
    /// Calls of the pattern still pending when it was sent.
    pub pending: usize,
    /// For `escalated`: the rule's `escalate_after`.
    pub escalated_after: Option<Duration>,
    /// The first call's arguments, compact, with secrets masked and cut to [`SUMMARY_CHARS`].
    pub summary: String,
}

/// Ids listed in a coalesced notification.
pub const IDS_SHOWN: usize = 20;
/// Characters of arguments shown.
pub const SUMMARY_CHARS: usize = 400;

/// How notifications are doing: what consoles are shown (the metrics count them too).
pub struct Health {
    state: tollgate_shared::sync::Mutex<NotifyHealth>,
    tx: watch::Sender<NotifyHealth>,
    /// Pending calls already escalated, so a notifier started by a reload does not escalate
    /// them again (it rebuilds its timers from the queue).
    escalated: tollgate_shared::sync::Mutex<std::collections::HashSet<Name>>,
}

impl Health {
    /// Nothing sent, failed or dropped yet.
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            state: Default::default(),
            tx: watch::channel(NotifyHealth::default()).0,
            escalated: Default::default(),
        })
    }

    /// Follow the health consoles are shown.
    pub fn subscribe(&self) -> watch::Receiver<NotifyHealth> {
        self.tx.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut NotifyHealth)) {
        let mut s = self.state.lock();
        let before = s.clone();
        f(&mut s);
        if *s != before {
            self.tx.send_replace(s.clone());
        }
    }

    fn dropped(&self, n: u64) {
        crate::metrics::global().notification("dropped", n);
        self.update(|s| s.dropped += n);
    }

    fn failing(&self, sink: &str, error: &str) {
        crate::metrics::global().notification("failed", 1);
        self.update(|s| match s.failing.iter_mut().find(|(n, _)| n == sink) {
            Some(entry) => entry.1 = error.to_string(),
            None => s.failing.push((sink.to_string(), error.to_string())),
        });
    }

    fn delivered(&self, sink: &str) {
        crate::metrics::global().notification("sent", 1);
        self.update(|s| s.failing.retain(|(n, _)| n != sink));
    }
}

/// A running sink: its spec and the queue of its worker.
struct Sink {
    spec: Arc<SinkSpec>,
    queue: mpsc::Sender<Note>,
}

/// The coalescing key: the kind, a decided call's outcome, and the pattern.
type GroupKey = (Kind, Option<Outcome>, Name, Name, String);

/// Events of one pattern waiting to be sent as one notification.
struct Group {
    note: Note,
    first_ms: u64,
    last_ms: u64,
}

/// Timers: an escalation, or a sink's expiry warning.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Escalate(Name),
    Expiring(Name, usize),
}

/// The pattern a call belongs to: server, tool and argument shape.
fn pattern(c: &CallRecord) -> (Name, Name, String) {
    (c.server.clone(), c.tool.clone(), c.shape.to_string())
}

/// The dispatcher's state.
struct Dispatcher {
    sinks: Vec<Sink>,
    /// Escalations by rule index.
    escalations: HashMap<usize, (Duration, Vec<usize>)>,
    /// Masks secrets in argument summaries.
    scrub: Option<tollgate_policy::guards::Scrub>,
    health: Arc<Health>,
    queue: Arc<Queue>,
    /// Pending calls this dispatcher knows of.
    pending: HashMap<Name, Arc<CallRecord>>,
    /// Pending calls per pattern.
    open: HashMap<(Name, Name, String), usize>,
    timers: BTreeSet<(u64, Timer)>,
    /// Coalescing groups, per sink.
    groups: Vec<HashMap<GroupKey, Group>>,
}

/// Start the notifier: sinks' workers and the dispatcher following `queue`, counting into
/// `health`, until `stop` (a reload starts a new one; the old one's workers still deliver what
/// they queued). Calls already pending (recovered at start, or held before a reload) get their
/// timers but no new `held` notification.
pub fn start(
    queue: Arc<Queue>,
    specs: Vec<SinkSpec>,
    escalations: HashMap<usize, Escalation>,
    dlp: Option<Arc<Dlp>>,
    health: Arc<Health>,
    stop: tokio_util::sync::CancellationToken,
) {
    if specs.is_empty() {
        return;
    }
    let http = deliver::http_client();
    let sinks: Vec<Sink> = specs
        .into_iter()
        .map(|spec| {
            let spec = Arc::new(spec);
            let (tx, rx) = mpsc::channel(spec.queue.max(1));
            tokio::spawn(deliver::worker(
                spec.clone(),
                rx,
                http.clone(),
                health.clone(),
            ));
            Sink { spec, queue: tx }
        })
        .collect();
    let by_name = |n: &String| sinks.iter().position(|s| &s.spec.name == n);
    let escalations = escalations
        .into_iter()
        .map(|(rule, e)| (rule, (e.after, e.to.iter().filter_map(by_name).collect())))
        .collect();
    let groups = sinks.iter().map(|_| HashMap::new()).collect();
    let events = queue.subscribe();
    let mut d = Dispatcher {
        sinks,
        escalations,
        scrub: dlp.map(|d| tollgate_policy::guards::Scrub::new(d, Vec::new())),
        health,
        queue: queue.clone(),
        pending: HashMap::new(),
        open: HashMap::new(),
        timers: BTreeSet::new(),
        groups,
    };
    for call in queue.snapshot() {
        d.held(call, false);
    }
    tokio::spawn(d.run(events, stop));
}

impl Dispatcher {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<ServerMsg>>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let wake = self.next_wake();
            let sleep = async {
                match wake {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(msg) => self.event(&msg),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "notifications fell behind the queue's events; those events are not notified");
                        self.health.dropped(n);
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = sleep => {}
            }
            self.tick(now_ms()).await;
        }
    }

    fn next_wake(&self) -> Option<u64> {
        let timer = self.timers.first().map(|(at, _)| *at);
        let group = self
            .sinks
            .iter()
            .zip(&self.groups)
            .flat_map(|(s, gs)| {
                gs.values().map(|g| {
                    (g.last_ms + s.spec.coalesce.as_millis() as u64)
                        .min(g.first_ms + s.spec.coalesce_max.as_millis() as u64)
                })
            })
            .min();
        match (timer, group) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn event(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::CallPending { call } => self.held(call.clone(), true),
            ServerMsg::CallDecided { call }
            | ServerMsg::CallCancelled { call }
            | ServerMsg::CallAbandoned { call } => self.ended(call, Kind::Decided),
            ServerMsg::CallExpired { call } => self.ended(call, Kind::Expired),
            _ => {}
        }
    }

    fn held(&mut self, call: Arc<CallRecord>, notify: bool) {
        // With a shared store, the broker holding a call's client notifies about it (and
        // escalates it), so a team running three brokers hears of each call once.
        if self.queue.held_elsewhere(&call.id) {
            return;
        }
        if self.pending.insert(call.id.clone(), call.clone()).is_some() {
            return;
        }
        *self.open.entry(pattern(&call)).or_default() += 1;
        if let Some((after, _)) = self.escalations.get(&call.rule.index) {
            let due = call
                .timings
                .received_ms
                .saturating_add(after.as_millis() as u64);
            self.timers.insert((due, Timer::Escalate(call.id.clone())));
        }
        let expires = call.hold.as_ref().map_or(u64::MAX, |h| h.expires_ms);
        for i in 0..self.sinks.len() {
            let spec = self.sinks[i].spec.clone();
            if !spec.filter.matches(&call) {
                continue;
            }
            if notify && spec.events.contains(&Kind::Held) {
                self.add(i, Kind::Held, &call, None);
            }
            if spec.events.contains(&Kind::Expiring) && expires != u64::MAX {
                let due = expires.saturating_sub(spec.expiring_before.as_millis() as u64);
                self.timers
                    .insert((due, Timer::Expiring(call.id.clone(), i)));
            }
        }
    }

    fn ended(&mut self, call: &Arc<CallRecord>, kind: Kind) {
        if self.pending.remove(&call.id).is_none() {
            return;
        }
        self.health.escalated.lock().remove(&call.id);
        let p = pattern(call);
        if let Some(n) = self.open.get_mut(&p) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&p);
            }
        }
        for i in 0..self.sinks.len() {
            let spec = self.sinks[i].spec.clone();
            if spec.filter.matches(call) && spec.events.contains(&kind) {
                self.add(i, kind, call, None);
            }
        }
    }

    /// Add an event to sink `i`'s coalescing group for its pattern.
    fn add(&mut self, i: usize, kind: Kind, call: &Arc<CallRecord>, after: Option<Duration>) {
        let now = now_ms();
        let outcome = (kind == Kind::Decided).then_some(call.outcome);
        let (server, tool, shape) = pattern(call);
        let key = (kind, outcome, server, tool, shape);
        match self.groups[i].get_mut(&key) {
            Some(g) => {
                g.note.count += 1;
                if g.note.ids.len() < IDS_SHOWN {
                    g.note.ids.push(call.id.clone());
                }
                g.last_ms = now;
            }
            None => {
                let summary = payload::summary(call, self.scrub.as_ref());
                self.groups[i].insert(
                    key,
                    Group {
                        note: Note {
                            kind,
                            call: call.clone(),
                            count: 1,
                            ids: vec![call.id.clone()],
                            pending: 0,
                            escalated_after: after,
                            summary,
                        },
                        first_ms: now,
                        last_ms: now,
                    },
                );
            }
        }
    }

    /// Fire due timers, then send the groups that are ready.
    async fn tick(&mut self, now: u64) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let Some((_, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Escalate(id) => self.escalate(&id).await,
                Timer::Expiring(id, i) => {
                    if let Some(call) = self.pending.get(&id).cloned() {
                        self.add(i, Kind::Expiring, &call, None);
                    }
                }
            }
        }
        for i in 0..self.sinks.len() {
            let spec = &self.sinks[i].spec;
            let (gap, max) = (
                spec.coalesce.as_millis() as u64,
                spec.coalesce_max.as_millis() as u64,
            );
            let ready: Vec<GroupKey> = self.groups[i]
                .iter()
                .filter(|(_, g)| now >= g.last_ms + gap || now >= g.first_ms + max)
                .map(|(k, _)| k.clone())
                .collect();
            for key in ready {
                let Some(mut g) = self.groups[i].remove(&key) else {
                    continue;
                };
                g.note.pending = self
                    .open
                    .get(&(key.2.clone(), key.3.clone(), key.4.clone()))
                    .copied()
                    .unwrap_or(0);
                let sink = &self.sinks[i];
                if let Err(e) = sink.queue.try_send(g.note) {
                    let note = match e {
                        mpsc::error::TrySendError::Full(n)
                        | mpsc::error::TrySendError::Closed(n) => n,
                    };
                    tracing::warn!(
                        sink = %sink.spec.name,
                        event = note.kind.as_str(),
                        call = %note.call.id,
                        calls = note.count,
                        "notification dropped: the sink's queue is full (it is failing or slower than its events); raise its queue or per_minute"
                    );
                    self.health.dropped(1);
                }
            }
        }
    }

    /// A call waited past its rule's `escalate_after`: record it and tell the rule's sinks.
    async fn escalate(&mut self, id: &Name) {
        let Some(call) = self.pending.get(id).cloned() else {
            return;
        };
        let Some((after, to)) = self.escalations.get(&call.rule.index).cloned() else {
            return;
        };
        if !self.health.escalated.lock().insert(id.clone()) {
            return;
        }
        let names: Vec<&str> = to
            .iter()
            .map(|i| self.sinks[*i].spec.name.as_str())
            .collect();
        let mut entry = (*call).clone();
        entry.outcome = Outcome::Escalated;
        entry.reason = Some(format!(
            "undecided after {}: escalated to {}",
            humantime::format_duration(after),
            names.join(", ")
        ));
        tracing::info!(call = %call.id, server = %call.server, tool = %call.tool, to = ?names, "held call escalated");
        self.queue
            .store()
            .write(Arc::new(entry), tollgate_store::Writes::Audit)
            .await;
        for i in 0..self.sinks.len() {
            let spec = &self.sinks[i].spec;
            let wanted = to.contains(&i)
                || (spec.events.contains(&Kind::Escalated) && spec.filter.matches(&call));
            if wanted {
                self.add(i, Kind::Escalated, &call, Some(after));
            }
        }
    }
}
