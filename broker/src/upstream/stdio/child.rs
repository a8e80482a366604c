//! A session's child process: started, fed, read and restarted with backoff.
//!
//! [`supervise`] pumps the session's outgoing lines into the child's stdin and hands every line
//! it writes to stdout to the session; its stderr goes to the broker's log. When the child exits
//! (or its pipes fail) every request in flight gets an error, and the child is started again
//! after a backoff that doubles up to 10 s (and starts over after 30 s of good running); for a
//! handshake session the client's `initialize` and `notifications/initialized` are replayed to
//! the new child so the session carries on. A child that cannot be restarted closes the session.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::session::Session;
use crate::jsonrpc;
use crate::upstream::Command;

/// Longest line accepted from a child's stdout.
const MAX_LINE: usize = 64 << 20;

/// Start the command with piped stdio; it is killed when its handle is dropped.
pub(super) fn spawn(spec: &Command) -> std::io::Result<tokio::process::Child> {
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the command is empty",
        ));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(&spec.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    cmd.spawn()
}

/// Keep a child running for the session: pump stdin/stdout, restart with backoff.
pub(super) async fn supervise(
    session: Arc<Session>,
    spec: Command,
    first: tokio::process::Child,
    mut stdin_rx: mpsc::Receiver<Bytes>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut restarts = 0u32;
    let mut next = Some(first);
    let span = tracing::info_span!("upstream", server = %session.server, session = ?session.id);
    loop {
        let spawned = match next.take() {
            Some(c) => Ok(c),
            None => spawn(&spec),
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cannot restart {:?}: {e}", spec.argv[0]);
                span.in_scope(
                    || tracing::error!(error = %e, command = ?spec.argv, "cannot restart upstream"),
                );
                session.mark_closed();
                session.fail_all(&why);
                stdin_rx.close();
                return;
            }
        };
        let started = Instant::now();
        let pid = child.id();
        span.in_scope(|| tracing::info!(pid, restarts, "upstream process started"));
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return;
        };
        let log_span = span.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log_span.in_scope(|| tracing::info!(target: "upstream_stderr", "{line}"));
            }
        });
        if restarts > 0 && !session.mapped {
            replay_handshake(&session, &mut stdin).await;
        }
        let mut stdout = BufReader::new(stdout);
        let mut buf = Vec::with_capacity(8192);
        let exit = loop {
            tokio::select! {
                _ = session.cancel.cancelled() => {
                    drop(stdin);
                    if tokio::time::timeout(Duration::from_secs(2), child.wait()).await.is_err() {
                        let _ = child.kill().await;
                    }
                    span.in_scope(|| tracing::info!("upstream process stopped"));
                    return;
                }
                msg = stdin_rx.recv() => match msg {
                    Some(line) => {
                        let write = async {
                            stdin.write_all(&line).await?;
                            stdin.write_all(b"\n").await?;
                            stdin.flush().await
                        };
                        if let Err(e) = write.await {
                            break format!("its stdin closed ({e})");
                        }
                    }
                    None => return,
                },
                read = read_line(&mut stdout, &mut buf) => match read {
                    Ok(0) => break "it closed its stdout".to_string(),
                    Ok(_) => {
                        session.dispatch(&buf);
                        buf.clear();
                    }
                    Err(e) => break format!("reading its stdout failed ({e})"),
                },
            }
        };
        let _ = child.start_kill();
        let status = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        let why = format!("the upstream process exited: {exit}, {status}");
        span.in_scope(|| tracing::warn!(%status, "{why}; restarting in {backoff:?}"));
        session.fail_all(&why);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = session.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
        restarts += 1;
    }
}

/// Read one `\n`-terminated line (without it) into `buf`; 0 at end of stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    loop {
        let n = r.read_until(b'\n', buf).await?;
        if n == 0 {
            return Ok(0);
        }
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::other(format!(
                "a message longer than {MAX_LINE} bytes"
            )));
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                buf.clear();
                continue;
            }
            return Ok(n);
        }
        return Ok(n);
    }
}

/// After a restart, bring the new child into the session's negotiated state.
async fn replay_handshake(session: &Session, stdin: &mut tokio::process::ChildStdin) {
    let (init, initialized) = {
        let mut st = session.state.lock();
        let Some(mut init) = st.init.clone() else {
            return;
        };
        st.next_mapped += 1;
        let id = json!(format!("tollgate-reinit-{}", st.next_mapped));
        st.internal.insert(jsonrpc::id_key(&id));
        init["id"] = id;
        (init.to_string(), st.initialized.clone())
    };
    let mut out = init.into_bytes();
    out.push(b'\n');
    if let Some(n) = initialized {
        out.extend_from_slice(&n);
        out.push(b'\n');
    }
    if let Err(e) = stdin.write_all(&out).await {
        tracing::warn!(error = %e, "could not replay the session handshake to the restarted upstream");
    }
}
