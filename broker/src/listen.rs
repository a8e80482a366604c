//! Accepting connections: the broker's own accept loop, so a flood of sockets cannot take the
//! broker (or the machine's file descriptors) away from everyone else.
//!
//! Each listener counts its open connections, globally and per peer address; one over either
//! limit is answered `503 Service Unavailable` (saying which limit) and closed. Every
//! connection must send a request's headers within `header_timeout` of its start or of the end
//! of its previous request, so idle keep-alive sockets and slowloris clients that trickle half a
//! header are closed. At start the soft limit on open files is raised to the hard limit, and
//! [`fit`] keeps a reserve of descriptors below it for the store, the stdio children and the
//! upstream connections. `docs/configuration.md` describes the settings; `docs/security.md` the
//! threats they answer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_shared::sync::Mutex;

use crate::tls::{Side, Tls};

/// Descriptors kept free for everything that is not a client connection: the store's files,
/// the stdio children's pipes, upstream connections (a quarter of the limit when that is less).
pub const RESERVE: u64 = 512;

/// How many connections a listener takes, and how long a client may take to send its headers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at once.
    pub total: usize,
    /// Open connections at once from one peer address.
    pub per_peer: usize,
    /// Time to send a request's headers (from the connection's start, or from the end of the
    /// previous request on a kept-alive connection).
    pub header_timeout: Duration,
}

/// Raise the soft limit on open files to the hard limit; returns the limit now in force (or
/// `None` where it cannot be read). A server process at the common soft limit of 1 024 runs out
/// long before the machine does.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit reads one rlimit through a valid pointer to a local.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every unix
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// Connections the console listener keeps at most, whatever `max_connections` says: a team's
/// consoles and scripts need far fewer than agents' held calls.
pub const CONSOLE_MAX: usize = 512;

/// The connection limits of the MCP listener and of the console listener, from the configured
/// limits, leaving the [`RESERVE`] of an open-file limit of `fds` free: as configured, or less
/// (with a warning) when the descriptors do not allow it.
pub fn fit(wanted: Limits, fds: Option<u64>) -> (Limits, Limits) {
    // Under a small open-file limit the reserve and the consoles' share shrink with it.
    let reserve = fds.map_or(RESERVE, |f| RESERVE.min(f / 4));
    let console_total = wanted
        .total
        .min(CONSOLE_MAX)
        .min(fds.map_or(usize::MAX, |f| (f / 8).max(8) as usize));
    let console = Limits {
        total: console_total,
        per_peer: wanted.per_peer.min(console_total),
        ..wanted
    };
    let Some(fds) = fds else {
        return (wanted, console);
    };
    let room = fds.saturating_sub(reserve + console_total as u64).max(16) as usize;
    if wanted.total <= room {
        return (wanted, console);
    }
    tracing::warn!(
        max_connections = wanted.total,
        open_file_limit = fds,
        using = room,
        "max_connections does not fit in the open-file limit (with {reserve} kept for the store and children, and {console_total} for consoles); raise the limit (LimitNOFILE= in systemd) or lower max_connections"
    );
    let mcp = Limits {
        total: room,
        per_peer: wanted.per_peer.min(room),
        ..wanted
    };
    (mcp, console)
}

/// Open connections, in all and per peer.
#[derive(Default)]
struct Counts {
    total: usize,
    peers: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Full {
    #[error(
        "the broker has {0} connections open, its limit ([broker] max_connections); try again shortly"
    )]
    Total(usize),
    #[error(
        "{peer} has {limit} connections open, the limit per address ([broker] max_connections_per_peer); close some or try again shortly"
    )]
    Peer { peer: IpAddr, limit: usize },
}

/// The connection limits of one listener.
struct Gate {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// A connection's place under the limits, given back when it closes.
struct Permit {
    gate: Arc<Gate>,
    peer: IpAddr,
}

impl Gate {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Full> {
        let mut c = self.counts.lock();
        if c.total >= self.limits.total {
            return Err(Full::Total(c.total));
        }
        let n = c.peers.entry(peer).or_default();
        if *n >= self.limits.per_peer {
            return Err(Full::Peer {
                peer,
                limit: self.limits.per_peer,
            });
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            gate: self.clone(),
            peer,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.gate.counts.lock();
        c.total -= 1;
        if let Some(n) = c.peers.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                c.peers.remove(&self.peer);
            }
        }
    }
}

/// At most this many turned-away connections are being answered at once; past it they are
/// closed without an answer (answering must not itself use up descriptors).
const ANSWERING: usize = 64;

/// Serve `router` on `listener` until `stop`, then let open connections finish (each is told
/// to close after its current request); returns once every connection has closed. `what`
/// names the listener in logs. With `tls`, each connection first completes a TLS handshake
/// (within `header_timeout`) with the certificate in use when it arrived.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
    what: &'static str,
    tls: Option<(Arc<Tls>, Side)>,
) {
    let gate = Arc::new(Gate {
        limits,
        counts: Mutex::default(),
    });
    let connections = TaskTracker::new();
    let answering = Arc::new(tokio::sync::Semaphore::new(ANSWERING));
    let mut warned_fds = false;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                        if !std::mem::replace(&mut warned_fds, true) {
                            tracing::error!(listener = what, error = %e, "out of file descriptors: new connections wait; lower max_connections or raise the open-file limit");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    } else {
                        tracing::debug!(listener = what, error = %e, "accept failed");
                    }
                    continue;
                }
            }
        };
        warned_fds = false;
        match gate.admit(peer.ip()) {
            Ok(permit) => {
                // Small SSE writes must not wait for delayed ACKs (Nagle).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let serve = Serve {
                    peer,
                    permit,
                    router: router.clone(),
                    header_timeout: limits.header_timeout,
                    stop: stop.clone(),
                };
                match &tls {
                    None => connections.spawn(serve.run(tcp)),
                    Some((tls, side)) => {
                        connections.spawn(serve.handshake(tcp, tls.acceptor(*side), what))
                    }
                };
            }
            Err(full) => {
                tracing::warn!(listener = what, %peer, "connection refused: {full}");
                if let Ok(slot) = answering.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        turn_away(tcp, &full).await;
                        drop(slot);
                    });
                }
            }
        }
    }
    connections.close();
    connections.wait().await;
}

/// One admitted connection and what it needs to be served.
struct Serve {
    peer: SocketAddr,
    permit: Permit,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
}

impl Serve {
    /// Complete the TLS handshake within the header timeout, then serve.
    async fn handshake(self, tcp: TcpStream, acceptor: TlsAcceptor, what: &'static str) {
        match tokio::time::timeout(self.header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => self.run(stream).await,
            Ok(Err(e)) => {
                // A client refusing our certificate, or one without the client certificate
                // mutual TLS asks for: worth an operator's eye, but not a warning per scanner.
                tracing::info!(listener = what, peer = %self.peer, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                tracing::debug!(listener = what, peer = %self.peer, "no TLS handshake within header_timeout");
            }
        }
    }

    async fn run<S>(self, io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = TowerToHyperService::new(self.router);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = self.stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended");
        }
        drop(self.permit);
    }
}

/// Answer a connection over the limits with `503` and close it, without waiting long for a
/// client that does not read.
async fn turn_away(mut tcp: TcpStream, full: &Full) {
    let body = format!("{full}\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_count_connections_in_all_and_per_peer() {
        let gate = Arc::new(Gate {
            limits: Limits {
                total: 3,
                per_peer: 2,
                header_timeout: Duration::from_secs(1),
            },
            counts: Mutex::default(),
        });
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let a1 = gate.admit(a).expect("first");
        let _a2 = gate.admit(a).expect("second");
        assert_eq!(gate.admit(a).err(), Some(Full::Peer { peer: a, limit: 2 }));
        let _b1 = gate.admit(b).expect("another peer");
        assert_eq!(gate.admit(b).err(), Some(Full::Total(3)));
        drop(a1);
        let _b2 = gate.admit(b).expect("a closed connection frees its place");
        assert!(
            Full::Total(3)
                .to_string()
                .contains("[broker] max_connections")
        );
    }

    #[test]
    fn the_connection_limits_fit_the_descriptors_left() {
        let wanted = Limits {
            total: 4096,
            per_peer: 1024,
            header_timeout: Duration::from_secs(10),
        };
        let totals = |fds| {
            let (mcp, console) = fit(wanted, fds);
            (mcp.total, mcp.per_peer, console.total, console.per_peer)
        };
        assert_eq!(totals(None), (4096, 1024, 512, 512));
        assert_eq!(totals(Some(1 << 20)), (4096, 1024, 512, 512));
        assert_eq!(totals(Some(2048)), (1280, 1024, 256, 256));
        assert_eq!(totals(Some(1024)), (640, 640, 128, 128));
        assert_eq!(totals(Some(64)), (40, 40, 8, 8));
    }
}
