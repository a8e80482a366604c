//! Recent refusals by rate limits and budgets, per client, so approvers see that a client
//! whose call they judge is also being throttled.

use std::collections::HashMap;

use tollgate_shared::sync::Mutex;

/// Recent rate-limit and budget refusals per client, so approvers see that a client whose call
/// they judge is also being throttled.
#[derive(Default)]
pub struct Throttle {
    recent: Mutex<HashMap<String, (String, u32, u64)>>,
}

/// How long a refusal keeps a client flagged.
const THROTTLE_WINDOW_MS: u64 = 60_000;

impl Throttle {
    /// A rate limit or budget (`what`) refused one of `client`'s calls.
    pub(super) fn refused(&self, client: &str, what: &str, now: u64) {
        let mut recent = self.recent.lock();
        if recent.len() > 10_000 {
            recent.retain(|_, (_, _, at)| *at + THROTTLE_WINDOW_MS > now);
        }
        let e = recent
            .entry(client.to_string())
            .or_insert_with(|| (String::new(), 0, 0));
        if e.2 + THROTTLE_WINDOW_MS <= now {
            e.1 = 0;
        }
        *e = (what.to_string(), e.1 + 1, now);
    }

    /// The flag approvers see on `client`'s calls, if it was refused lately.
    pub(super) fn flag(&self, client: &str, now: u64) -> Option<String> {
        let recent = self.recent.lock();
        let (what, n, at) = recent.get(client)?;
        (at + THROTTLE_WINDOW_MS > now).then(|| {
            format!(
                "{what} refused {n} call{} from {client} in the last minute",
                if *n == 1 { "" } else { "s" }
            )
        })
    }
}
