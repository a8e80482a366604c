//! Deciding from the queue: the row under the cursor (one call at once, a group after
//! confirmation, a rejection after its reason) or the selected calls.

use tollgate_shared::console::{ClientMsg, Target};
use tollgate_shared::{Name, Verdict};

use super::{App, Grouping, Prompt};
use crate::keys::Command;

impl App {
    pub(super) fn summary(&self, ids: &[Name]) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for id in ids {
            if let Some(c) = self.calls.get(id) {
                let name = format!("{}/{}", c.server, c.tool);
                match counts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, k)) => *k += 1,
                    None => counts.push((name, 1)),
                }
            }
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        counts
            .iter()
            .map(|(n, k)| format!("{n} ×{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Decide the row under the cursor: a single call at once (approve) or after a reason
    /// (reject); a group after confirmation.
    pub(super) fn decide_current(&mut self, verdict: Verdict, block: bool) -> Option<ClientMsg> {
        let row = self.current()?.clone();
        // A pattern (a group row, or a block) is decided by fingerprint; one call by id.
        let target = if row.count > 1 || block {
            Target::Fingerprint {
                fingerprint: self.pattern_of(&row),
            }
        } else {
            Target::Ids {
                ids: row.ids.iter().map(|id| id.to_string()).collect(),
            }
        };
        let block_for_ms = block.then_some(self.block_for_ms);
        if verdict == Verdict::Approve && self.grouping == Grouping::Shape && row.count > 1 {
            self.note(format!(
                "a shape groups calls with different numbers and ids: approve them by identical group ({} cycles the grouping) or select them",
                self.keys.key_of(Command::Group)
            ));
            return None;
        }
        if row.count > 1 {
            self.prompt = Some(Prompt::Confirm {
                verdict,
                target,
                count: row.count,
                block_for_ms,
                summary: self.summary(&row.ids),
            });
            return None;
        }
        self.ask_or_send(verdict, target, 1, block_for_ms)
    }

    pub(super) fn ask_or_send(
        &mut self,
        verdict: Verdict,
        target: Target,
        count: usize,
        block_for_ms: Option<u64>,
    ) -> Option<ClientMsg> {
        match verdict {
            Verdict::Reject => {
                self.prompt = Some(Prompt::Reason {
                    verdict,
                    target,
                    count,
                    block_for_ms,
                    text: String::new(),
                });
                None
            }
            Verdict::Approve => self.send_decision(verdict, target, None, None),
        }
    }

    pub(super) fn send_decision(
        &mut self,
        verdict: Verdict,
        target: Target,
        reason: Option<String>,
        block_for_ms: Option<u64>,
    ) -> Option<ClientMsg> {
        if let Target::Ids { ids } = &target {
            for id in ids {
                self.selected.remove(id.as_str());
            }
        }
        self.request(|req| ClientMsg::Decide {
            req,
            target,
            verdict,
            reason,
            block_for_ms,
            allow_next: None,
        })
    }

    pub(super) fn decide_selected(&mut self, verdict: Verdict) -> Option<ClientMsg> {
        let ids: Vec<Name> = self
            .selected
            .iter()
            .filter(|id| self.calls.contains_key(*id))
            .cloned()
            .collect();
        if ids.is_empty() {
            self.note(format!(
                "nothing selected: {} selects a row, {} every row matching the filter",
                self.keys.key_of(Command::Select),
                self.keys.key_of(Command::SelectAll)
            ));
            return None;
        }
        self.prompt = Some(Prompt::Confirm {
            verdict,
            count: ids.len(),
            block_for_ms: None,
            summary: self.summary(&ids),
            target: Target::Ids {
                ids: ids.iter().map(|id| id.to_string()).collect(),
            },
        });
        None
    }
}
