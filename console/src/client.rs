//! The console API client: one WebSocket connection to a broker, and the background task that
//! keeps one open for the TUI.
//!
//! [`Conn`] is the plain connection the CLI uses: connect (reading `hello` and the first
//! `snapshot`), send a request and wait for the answer with the same `req`, or read events.
//! [`spawn_backend`] runs a connection for the TUI in its own task, reconnecting with backoff,
//! and talks to the UI only through channels, so the UI never waits on the network.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_shared::CallRecord;
use tollgate_shared::console::{ClientMsg, Role, ServerMsg};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where the broker is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `ws://host:port/v1/console`.
    pub url: String,
    /// Bearer token from `tollgate-broker token add`.
    pub token: String,
    /// For a `wss://` URL: the CAs to trust and an optional client certificate.
    pub tls: tollgate_shared::tls::ClientTls,
    /// Sign decisions with this SSH key (`--sign`).
    pub sign: Option<crate::signing::SignWith>,
}

/// Who the broker says we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    /// Identity name.
    pub identity: String,
    /// Role.
    pub role: Role,
    /// Servers an approver may decide for (`None`: all).
    pub servers: Option<Vec<String>>,
}

/// An open console connection.
pub struct Conn {
    ws: Ws,
    next_req: u64,
    /// Who we are.
    pub me: Me,
    /// The queue when we connected.
    pub pending: Vec<Arc<CallRecord>>,
    /// Temporary rules when we connected.
    pub rules: Vec<tollgate_shared::console::TempRule>,
}

/// Why connecting failed, worded for the person at the terminal.
fn explain(url: &str, e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    if let Some(why) = tollgate_shared::tls::describe(&e) {
        return anyhow::anyhow!("cannot connect to {url}: {why}");
    }
    match e {
        E::Http(resp) if resp.status() == 401 => anyhow::anyhow!(
            "the broker at {url} refused the token (HTTP 401): check --token / TOLLGATE_TOKEN (tokens come from `tollgate-broker token add`)"
        ),
        E::Http(resp) => anyhow::anyhow!(
            "the broker at {url} answered HTTP {} instead of opening the console connection: is this the console_listen address?",
            resp.status()
        ),
        E::Io(io) => anyhow::anyhow!(
            "cannot reach the broker at {url}: {io} (is it running, and is this its console_listen address?)"
        ),
        other => anyhow::anyhow!("cannot open the console connection to {url}: {other}"),
    }
}

impl Conn {
    /// Connect and read `hello` and the first `snapshot`.
    pub async fn connect(s: &Settings) -> Result<Conn> {
        let mut req = s
            .url
            .as_str()
            .into_client_request()
            .with_context(|| format!("{:?} is not a ws:// URL", s.url))?;
        let bearer = format!("Bearer {}", s.token)
            .parse()
            .context("the token contains characters that cannot go in a header")?;
        req.headers_mut().insert("authorization", bearer);
        let connector = if s.url.starts_with("wss://") {
            let config = s.tls.config().map_err(|e| anyhow::anyhow!(e))?;
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
        } else if s.tls != Default::default() {
            bail!(
                "{} is a plain ws:// URL, but a CA or client certificate is set (--ca/--cert/--key or console.toml): use the broker's wss:// URL",
                s.url
            );
        } else {
            None
        };
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within 10 s", s.url))?
        .map_err(|e| explain(&s.url, e))?;
        let mut conn = Conn {
            ws,
            next_req: 0,
            me: Me {
                identity: String::new(),
                role: Role::Viewer,
                servers: None,
            },
            pending: Vec::new(),
            rules: Vec::new(),
        };
        match conn.next().await? {
            ServerMsg::Hello {
                protocol,
                identity,
                role,
                servers,
                ..
            } => {
                if protocol != tollgate_shared::PROTOCOL_VERSION {
                    bail!(
                        "the broker speaks console protocol {protocol}, this console {}: use matching versions",
                        tollgate_shared::PROTOCOL_VERSION
                    );
                }
                conn.me = Me {
                    identity,
                    role,
                    servers,
                };
            }
            other => bail!("the broker did not greet with hello: {other:?}"),
        }
        if let ServerMsg::Snapshot {
            pending,
            rules,
            mut more,
            ..
        } = conn.next().await?
        {
            conn.pending = pending;
            conn.rules = rules;
            // A large queue arrives in parts, one right after another.
            while more {
                match conn.next().await? {
                    ServerMsg::SnapshotPart {
                        pending, more: m, ..
                    } => {
                        conn.pending.extend(pending);
                        more = m;
                    }
                    other => bail!("the broker broke off its snapshot with {other:?}"),
                }
            }
        }
        Ok(conn)
    }

    /// The next message from the broker.
    pub async fn next(&mut self) -> Result<ServerMsg> {
        loop {
            match self.ws.next().await {
                None => bail!("the broker closed the connection"),
                Some(Err(e)) => bail!("the connection to the broker broke: {e}"),
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).with_context(|| {
                        format!("the broker sent a message this console does not understand: {t}")
                    });
                }
                Some(Ok(Message::Close(frame))) => match frame.filter(|f| !f.reason.is_empty()) {
                    Some(f) => bail!("the broker closed the connection: {}", f.reason),
                    None => bail!("the broker closed the connection"),
                },
                Some(Ok(_)) => {}
            }
        }
    }

    /// A fresh request number.
    pub fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Send a message.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<()> {
        self.ws
            .send(Message::text(serde_json::to_string(msg)?))
            .await
            .context("cannot send to the broker")
    }

    /// Send a request carrying `req` and wait for its answer, skipping events.
    pub async fn request(&mut self, req: u64, msg: &ClientMsg) -> Result<ServerMsg> {
        match self.ask(req, msg).await? {
            ServerMsg::Error { message, .. } => bail!("the broker refused the request: {message}"),
            m => Ok(m),
        }
    }

    /// Send a request and wait for its answer, an `error` included.
    pub async fn ask(&mut self, req: u64, msg: &ClientMsg) -> Result<ServerMsg> {
        self.send(msg).await?;
        loop {
            let m = self.next().await?;
            if answer_req(&m) == Some(req) {
                return Ok(m);
            }
        }
    }
}

/// The `req` an answer echoes, if it is an answer.
pub fn answer_req(m: &ServerMsg) -> Option<u64> {
    match m {
        ServerMsg::Decided { req, .. }
        | ServerMsg::AuditResult { req, .. }
        | ServerMsg::Rules { req, .. }
        | ServerMsg::Error { req, .. }
        | ServerMsg::Snapshot { req, .. } => *req,
        _ => None,
    }
}

/// What the backend tells the UI.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connecting (attempt number, from 1).
    Connecting(u32),
    /// Connected; the queue as of now.
    Connected(Me, Vec<Arc<CallRecord>>),
    /// The connection dropped or could not be made; retrying in the given time.
    Disconnected(String, Duration),
    /// A message from the broker.
    Message(Box<ServerMsg>),
}

/// Run a connection for the TUI: events out, requests in. Reconnects with backoff (0.5 s
/// doubling to 10 s) until `requests` closes.
pub fn spawn_backend(
    settings: Settings,
    events: mpsc::Sender<Event>,
    mut requests: mpsc::Receiver<ClientMsg>,
) {
    tokio::spawn(async move {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if events.send(Event::Connecting(attempt)).await.is_err() {
                return;
            }
            let why = match Conn::connect(&settings).await {
                Ok(mut conn) => {
                    attempt = 0;
                    let pending = std::mem::take(&mut conn.pending);
                    let rules = ServerMsg::Rules {
                        req: None,
                        rules: std::mem::take(&mut conn.rules),
                    };
                    if events
                        .send(Event::Connected(conn.me.clone(), pending))
                        .await
                        .is_err()
                        || events.send(Event::Message(Box::new(rules))).await.is_err()
                    {
                        return;
                    }
                    loop {
                        tokio::select! {
                            m = conn.next() => match m {
                                Ok(m) => if events.send(Event::Message(Box::new(m))).await.is_err() { return },
                                Err(e) => break format!("{e:#}"),
                            },
                            r = requests.recv() => match r {
                                Some(r) => if let Err(e) = conn.send(&r).await { break format!("{e:#}") },
                                None => return,
                            },
                        }
                    }
                }
                Err(e) => format!("{e:#}"),
            };
            let wait =
                Duration::from_millis(500 * 2u64.pow(attempt.min(5))).min(Duration::from_secs(10));
            if events.send(Event::Disconnected(why, wait)).await.is_err() {
                return;
            }
            tokio::time::sleep(wait).await;
        }
    });
}
