//! Which identity each MCP session belongs to.
//!
//! A session id lets whoever holds it read the session's streams (another agent's tool results,
//! replayed with `Last-Event-ID`), send into it, take over the stream where the server's
//! elicitation and sampling requests go, and end it. So a session belongs to the identity whose
//! `initialize` created it, and anyone else who names it is told it does not exist (404), as a
//! held call's stream and an MCP task already are. A session the broker has not seen (one a
//! remote server created before the broker restarted) belongs to the first identity that uses
//! it; recovered held calls register their sessions' owners at start-up.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tollgate_shared::Name;
use tollgate_shared::sync::Mutex;

/// How many sessions are remembered before idle ones are forgotten.
const PRUNE_OVER: usize = 4096;

/// Session id → its owner and when it was last used.
pub struct Owners {
    map: Mutex<HashMap<String, (Name, Instant)>>,
    idle: Duration,
}

/// A session named by an identity that does not own it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotYours;

impl Owners {
    /// Owners of sessions that end after `idle` without use.
    pub fn new(idle: Duration) -> Owners {
        Owners {
            map: Mutex::new(HashMap::new()),
            idle,
        }
    }

    /// May `client` use `session`? A session nobody owns yet is now `client`'s.
    pub fn check(&self, session: &str, client: &str) -> Result<(), NotYours> {
        let mut map = self.map.lock();
        match map.get_mut(session) {
            Some((owner, used)) if **owner == *client => {
                *used = Instant::now();
                Ok(())
            }
            Some(_) => Err(NotYours),
            None => {
                self.prune(&mut map);
                map.insert(
                    session.to_string(),
                    (tollgate_shared::intern(client), Instant::now()),
                );
                Ok(())
            }
        }
    }

    /// `client`'s request started `session` (an `initialize` answer named it).
    pub fn created(&self, session: &str, client: Name) {
        let mut map = self.map.lock();
        self.prune(&mut map);
        map.insert(session.to_string(), (client, Instant::now()));
    }

    /// The session was ended (a DELETE that succeeded).
    pub fn ended(&self, session: &str) {
        self.map.lock().remove(session);
    }

    fn prune(&self, map: &mut HashMap<String, (Name, Instant)>) {
        if map.len() >= PRUNE_OVER {
            map.retain(|_, (_, used)| used.elapsed() < self.idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_its_creators_and_an_unknown_one_its_first_users() {
        let owners = Owners::new(Duration::from_secs(60));
        owners.created("s1", "alice".into());
        assert_eq!(owners.check("s1", "alice"), Ok(()));
        assert_eq!(owners.check("s1", "mallory"), Err(NotYours));
        assert_eq!(
            owners.check("s2", "bob"),
            Ok(()),
            "claimed by its first user"
        );
        assert_eq!(owners.check("s2", "alice"), Err(NotYours));
        owners.ended("s1");
        assert_eq!(
            owners.check("s1", "mallory"),
            Ok(()),
            "an ended id is nobody's"
        );
    }
}
