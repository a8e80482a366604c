//! The audit view's query: the filter's `server:`, `tool:`, `client:`, `approver:` and
//! `status:` words become the broker's audit filter.

use tollgate_shared::audit::AuditFilter;
use tollgate_shared::console::ClientMsg;

use super::App;

impl App {
    pub(super) fn audit_query(&mut self) -> Option<ClientMsg> {
        let mut filter = AuditFilter {
            limit: Some(500),
            ..AuditFilter::default()
        };
        for word in self.filter_text.split_whitespace() {
            match word.split_once(':') {
                Some(("server", v)) => filter.server = Some(v.into()),
                Some(("tool", v)) => filter.tool = Some(v.into()),
                Some(("client", v)) => filter.client = Some(v.into()),
                Some(("approver", v)) => filter.approver = Some(v.into()),
                Some(("status", v)) => filter.status = v.parse().ok(),
                _ => {}
            }
        }
        self.request(|req| ClientMsg::AuditQuery { req, filter })
    }
}
