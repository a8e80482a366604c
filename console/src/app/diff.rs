//! The diff view's choice of the call to compare with: the marked one, else the most similar
//! earlier call of the same tool.

use std::sync::Arc;

use tollgate_shared::CallRecord;

use super::App;

impl App {
    /// The call to diff the current one against: the marked one, else the most similar earlier
    /// call of the same tool (pending or decided).
    pub fn diff_base(&self) -> Option<Arc<CallRecord>> {
        let cur = Arc::clone(&self.current()?.call);
        if let Some(m) = &self.marked
            && m.id != cur.id
        {
            return Some(Arc::clone(m));
        }
        let text = crate::fmt::pretty_sorted(&cur.arguments.value());
        // The 200 latest earlier calls of the same tool are candidates, so a huge queue does
        // not make the diff view slow.
        let mut candidates: Vec<&Arc<CallRecord>> = self
            .calls
            .values()
            .chain(self.history.iter())
            .filter(|c| c.id < cur.id && c.server == cur.server && c.tool == cur.tool)
            .collect();
        candidates.sort_unstable_by(|a, b| b.id.cmp(&a.id));
        candidates.truncate(200);
        candidates
            .into_iter()
            .map(|c| {
                let other = crate::fmt::pretty_sorted(&c.arguments.value());
                // Character similarity for ordinary arguments; lines for big ones (quadratic).
                let ratio = if other.len() + text.len() < 8192 {
                    similar::TextDiff::from_chars(&other, &text).ratio()
                } else {
                    similar::TextDiff::from_lines(&other, &text).ratio()
                };
                (c, ratio)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(a.0.id.cmp(&b.0.id)))
            .map(|(c, _)| Arc::clone(c))
    }
}
