//! A session's response streams as data: what each stream has carried and who reads it.
//!
//! Each request (and the session's GET stream) has a [`StreamLog`]: on the handshake
//! revisions every event is kept under `<stream>-<seq>` so a client whose connection dropped
//! resumes with `Last-Event-ID` (a dropped stream is not a cancel there); on the stateless
//! revision nothing is logged. A reader slower than [`LIVE_CAP`] events is detached.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

/// Events kept per stream for resumption.
const LOG_CAP: usize = 1024;
/// Finished streams stay resumable this long.
const DONE_RETENTION: Duration = Duration::from_secs(300);
/// Buffer between a stream and its HTTP response; a client slower than this is detached and
/// must resume (handshake revisions) or loses the stream (stateless).
pub(super) const LIVE_CAP: usize = 256;

/// One message for a response stream.
pub(super) struct Ev {
    /// Its position in the stream (the `<seq>` of its event id).
    pub(super) seq: u64,
    pub(super) data: Bytes,
    /// The stream ends with it.
    pub(super) last: bool,
}

/// One response stream's events and its reader, if one is attached.
#[derive(Default)]
pub(super) struct StreamLog {
    events: VecDeque<(u64, Bytes)>,
    next_seq: u64,
    live: Option<mpsc::Sender<Ev>>,
    done_at: Option<Instant>,
}

impl StreamLog {
    /// A stream read by `live`.
    pub(super) fn read_by(live: mpsc::Sender<Ev>) -> StreamLog {
        StreamLog {
            live: Some(live),
            ..StreamLog::default()
        }
    }

    /// Append a message (kept for resumption when `logged`) and pass it to the reader, if
    /// any; `last` ends the stream.
    pub(super) fn push(&mut self, data: Bytes, last: bool, logged: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if logged {
            self.events.push_back((seq, data.clone()));
            if self.events.len() > LOG_CAP {
                self.events.pop_front();
            }
        }
        if let Some(live) = &self.live
            && live.try_send(Ev { seq, data, last }).is_err()
        {
            tracing::debug!("response stream reader is gone or too slow; detaching it");
            self.live = None;
        }
        if last {
            self.end();
        }
    }

    /// Nothing more comes on this stream; it stays resumable for a while.
    pub(super) fn end(&mut self) {
        self.live = None;
        self.done_at = Some(Instant::now());
    }

    /// Whether a reader is attached.
    pub(super) fn is_read(&self) -> bool {
        self.live.is_some()
    }

    /// The reader went away (it may come back).
    pub(super) fn detach(&mut self) {
        self.live = None;
    }

    /// Whether the stream ended longer ago than it stays resumable.
    pub(super) fn expired(&self) -> bool {
        self.done_at.is_some_and(|t| t.elapsed() >= DONE_RETENTION)
    }

    /// The events after `seq`, for a client that resumes, and a new reader for what comes
    /// next unless the stream has ended.
    pub(super) fn resume_after(&mut self, seq: u64) -> (Vec<Ev>, Option<mpsc::Receiver<Ev>>) {
        let replay = self
            .events
            .iter()
            .filter(|(n, _)| *n > seq)
            .map(|(n, d)| Ev {
                seq: *n,
                data: d.clone(),
                last: false,
            })
            .collect();
        let rx = self.done_at.is_none().then(|| {
            let (tx, rx) = mpsc::channel(LIVE_CAP);
            self.live = Some(tx);
            rx
        });
        (replay, rx)
    }
}
