//! Tool annotations (`readOnlyHint`, `destructiveHint`, ...) learned from upstreams' `tools/list`
//! answers, which policy conditions may test.

use std::collections::HashMap;

use serde_json::{Value, json};
use tollgate_shared::sync::RwLock;

/// Tool annotations learned from upstreams' `tools/list` answers, per server and tool.
#[derive(Default)]
pub struct Annotations {
    map: RwLock<HashMap<String, HashMap<String, Value>>>,
}

impl Annotations {
    /// Learn from a `tools/list` result object (`{"tools": [...]}`).
    pub fn learn(&self, server: &str, result: &Value) {
        let Some(tools) = result.get("tools").and_then(Value::as_array) else {
            return;
        };
        let mut learned = Vec::with_capacity(tools.len());
        for t in tools {
            if let Some(name) = t.get("name").and_then(Value::as_str) {
                learned.push((
                    name.to_string(),
                    t.get("annotations").cloned().unwrap_or_else(|| json!({})),
                ));
            }
        }
        let mut map = self.map.write();
        let entry = map.entry(server.to_string()).or_default();
        let n = learned.len();
        entry.extend(learned);
        tracing::debug!(server, tools = n, "learned tool annotations");
    }

    /// Learn from any JSON-RPC response if it answers a `tools/list`.
    pub fn learn_from_response(&self, server: &str, response: &Value) {
        if let Some(result) = response.get("result") {
            self.learn(server, result);
        }
    }

    /// The annotations of a tool, if its server has listed it.
    pub fn get(&self, server: &str, tool: &str) -> Option<Value> {
        let map = self.map.read();
        map.get(server)?.get(tool).cloned()
    }
}
