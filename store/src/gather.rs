//! How a writer gathers its next group: the linger for writes nobody waits for.
//!
//! The records and audit entries of calls that are not held (forwarded, refused, completed)
//! are written after the fact: nobody waits for them, and without a linger a sequential agent's
//! every call would end a group of its own and pay a sync of its own. So once a run of such
//! writes has arrived, the writer waits up to the linger for more before it commits, and every
//! call of that span shares one sync. A write somebody waits for (a hold, a decision, a close,
//! a flush, a write made durably) ends the wait at once and takes the lingering writes with it.
//! What a `kill -9` can lose is therefore bounded in time: the writes of the last linger and of
//! the group being committed (`docs/approvals.md`).

use std::time::Duration;

use tokio::sync::mpsc;

/// How long writes nobody waits for wait for company, unless configured
/// (`[broker] sync_linger`).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);

/// The longest linger allowed: it bounds what a `kill -9` can lose.
pub const MAX_LINGER: Duration = Duration::from_secs(1);

/// Receive the next operations into `ops` (at most `max` in all): wait for the first; then,
/// while none of those received is `awaited`, keep receiving until `linger` has passed since
/// the first arrived. Returns how many were received: 0 only when the channel is closed.
pub(crate) async fn gather<T>(
    rx: &mut mpsc::Receiver<T>,
    ops: &mut Vec<T>,
    max: usize,
    linger: Duration,
    awaited: impl Fn(&T) -> bool,
) -> usize {
    let start = ops.len();
    let mut n = rx.recv_many(ops, max.saturating_sub(start)).await;
    if n == 0 || linger.is_zero() {
        return n;
    }
    let deadline = tokio::time::Instant::now() + linger;
    let mut checked = start;
    loop {
        if ops.len() >= max || ops[checked..].iter().any(&awaited) {
            return n;
        }
        checked = ops.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(ops, max - ops.len())).await {
            Ok(k) if k > 0 => n += k,
            // The time is up, or the channel closed (the next receive says so).
            _ => return n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unawaited_writes_linger_and_an_awaited_one_ends_the_wait() {
        let (tx, mut rx) = mpsc::channel::<(u32, bool)>(16);
        let linger = Duration::from_millis(5);
        let sender = tokio::spawn(async move {
            for i in 0..3 {
                tx.send((i, false)).await.expect("send");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // Past the linger: a group of its own.
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send((3, false)).await.expect("send");
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send((4, true)).await.expect("send");
            tokio::time::sleep(Duration::from_millis(1)).await;
            tx.send((5, false)).await.expect("send");
        });
        let mut groups = vec![];
        loop {
            let mut ops = vec![];
            let t = tokio::time::Instant::now();
            if gather(&mut rx, &mut ops, 100, linger, |op| op.1).await == 0 {
                break;
            }
            groups.push((ops.iter().map(|o| o.0).collect::<Vec<_>>(), t.elapsed()));
        }
        sender.await.expect("sender");
        let ids: Vec<_> = groups.iter().map(|g| g.0.clone()).collect();
        // Three writes 1 ms apart share a group; the awaited write ends the next one at once,
        // taking the write before it; the last waits out its linger (the channel then closes).
        assert_eq!(ids, vec![vec![0, 1, 2], vec![3, 4], vec![5]]);
        assert_eq!(groups[0].1, Duration::from_millis(5));
        // From the second gather's start (5 ms): 8 ms until write 3, 1 ms more for write 4.
        assert_eq!(groups[1].1, Duration::from_millis(9));
    }

    #[tokio::test(start_paused = true)]
    async fn no_linger_takes_what_is_there_and_a_full_group_does_not_wait() {
        let (tx, mut rx) = mpsc::channel::<(u32, bool)>(16);
        for i in 0..4 {
            tx.send((i, false)).await.expect("send");
        }
        let mut ops = vec![];
        assert_eq!(
            gather(&mut rx, &mut ops, 100, Duration::ZERO, |o| o.1).await,
            4
        );
        for i in 0..4 {
            tx.send((i, false)).await.expect("send");
        }
        let (mut ops, t) = (vec![], tokio::time::Instant::now());
        assert_eq!(
            gather(&mut rx, &mut ops, 3, Duration::from_secs(1), |o| o.1).await,
            3
        );
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
