//! Deciding from the queue: the row under the cursor (one call at once, a group after
//! confirmation, a rejection after its reason) or the selected calls.

use tollgate_shared::console::{ClientMsg, Target, barrier};
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

    /// Why this console's identity may not approve some of `ids`, if it may not: "you may not
    /// approve 2 of these 40 calls (your own call ×2)".
    fn approval_barriers<'a>(&self, ids: impl Iterator<Item = &'a Name>) -> Option<String> {
        let me = self.me.as_ref()?;
        let mut total = 0;
        let mut why: Vec<(&'static str, usize)> = Vec::new();
        for c in ids.filter_map(|id| self.calls.get(id)) {
            total += 1;
            if let Some(b) = barrier(
                c,
                &me.identity,
                me.role,
                me.servers.as_deref(),
                Verdict::Approve,
            ) {
                match why.iter_mut().find(|(l, _)| *l == b.label()) {
                    Some((_, n)) => *n += 1,
                    None => why.push((b.label(), 1)),
                }
            }
        }
        let n: usize = why.iter().map(|(_, n)| n).sum();
        (n > 0).then(|| {
            let list: Vec<String> = why.iter().map(|(l, n)| format!("{l} ×{n}")).collect();
            format!(
                "you may not approve {n} of these {total} calls ({}): reject them, or select the others ({})",
                list.join(", "),
                self.keys.key_of(Command::Select)
            )
        })
    }

    /// Decide the row under the cursor: a single call at once (approve) or after a reason
    /// (reject); a group after confirmation. A group of identical calls is decided by its
    /// fingerprint (identical calls arriving meanwhile are included), a group by tool, client
    /// or server by the ids it shows, a shape by ids to approve and by shape to reject.
    pub(super) fn decide_current(&mut self, verdict: Verdict, block: bool) -> Option<ClientMsg> {
        let row = self.current()?.clone();
        let group = row.count() > 1;
        if block && group && !self.grouping.by_pattern() {
            self.note(format!(
                "{} blocks one pattern, and this row is every call {}: group by identical call or shape ({}) to block one, or {} rejects these calls",
                self.keys.key_of(Command::BlockPattern),
                self.grouping.label(),
                self.keys.key_of(Command::Group),
                self.keys.key_of(Command::Reject),
            ));
            return None;
        }
        let by_pattern = block
            || (group && self.grouping == Grouping::Exact)
            || (group && self.grouping == Grouping::Shape && verdict == Verdict::Reject);
        let target = if by_pattern {
            Target::Fingerprint {
                fingerprint: self.pattern_of(&row),
            }
        } else {
            Target::Ids {
                ids: row.ids.iter().map(|id| id.to_string()).collect(),
            }
        };
        let block_for_ms = block.then_some(self.block_for_ms);
        if group {
            if verdict == Verdict::Approve
                && let Some(why) = self.approval_barriers(row.ids.iter())
            {
                self.note(why);
                return None;
            }
            let ids: Vec<Name> = row.ids.iter().cloned().collect();
            let mut summary = self.summary(&ids);
            if self.grouping != Grouping::Exact {
                // A loop's row can hide one different, dangerous call: say how many differ.
                let distinct: std::collections::HashSet<_> = ids
                    .iter()
                    .filter_map(|id| self.calls.get(id))
                    .map(|c| &c.fingerprint)
                    .collect();
                if distinct.len() > 1 {
                    summary.push_str(&format!(
                        "\n{} different calls ({} groups identical ones)",
                        distinct.len(),
                        self.keys.key_of(Command::Group)
                    ));
                }
            }
            self.prompt = Some(Prompt::Confirm {
                verdict,
                target,
                count: row.count(),
                hidden: 0,
                block_for_ms,
                summary,
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
                self.unselect(id);
            }
        }
        // The row under the cursor, if this decides it, is left to drain: the next row comes
        // under the cursor (a fingerprint target is always the cursor's row).
        let decides_current = self.current().is_some_and(|r| match &target {
            Target::Ids { ids } => ids.iter().any(|id| r.ids.contains(id.as_str())),
            Target::Fingerprint { .. } => true,
        });
        if decides_current {
            self.leaving = self.current().map(|r| r.key.clone());
        }
        // The filter that led here clears itself once it matches nothing pending.
        self.clear_filter_when_done = !self.filter_text.is_empty();
        // `request` numbers this one next_req + 1; its answer is summed up with the verdict.
        self.asked
            .insert(self.next_req + 1, (verdict, reason.clone()));
        self.request(|req| ClientMsg::Decide {
            req,
            target,
            verdict,
            reason,
            block_for_ms,
            allow_next: None,
            signed: None,
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
        if verdict == Verdict::Approve
            && let Some(why) = self.approval_barriers(ids.iter())
        {
            self.note(why);
            return None;
        }
        let hidden = ids
            .iter()
            .filter(|id| self.calls.get(*id).is_some_and(|c| !self.matches(c)))
            .count();
        self.prompt = Some(Prompt::Confirm {
            verdict,
            count: ids.len(),
            hidden,
            block_for_ms: None,
            summary: self.summary(&ids),
            target: Target::Ids {
                ids: ids.iter().map(|id| id.to_string()).collect(),
            },
        });
        None
    }
}
