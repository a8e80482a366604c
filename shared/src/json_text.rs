//! JSON kept as its compact text, parsed where it is used.

use serde::{Deserialize, Serialize};

/// A JSON value kept as its compact text, in one allocation.
///
/// Every pending call keeps its record in the broker's memory and in every console's, and a
/// parsed [`serde_json::Value`] object costs hundreds of bytes in small allocations (an
/// insertion-ordered map, its index table, each key and value). Arguments and request
/// envelopes are only read whole (forwarding, display, a diff), so they are kept as text and
/// parsed on demand. On the wire and in the store it is the JSON value itself, unchanged.
#[derive(Clone)]
pub struct JsonText(Box<serde_json::value::RawValue>);

impl JsonText {
    /// The text of `value`.
    pub fn new(value: &serde_json::Value) -> JsonText {
        // Writing a `Value` to a string cannot fail: its keys are strings and every number it
        // holds is finite.
        JsonText(serde_json::value::to_raw_value(value).unwrap_or_else(|_| Self::null()))
    }

    fn null() -> Box<serde_json::value::RawValue> {
        serde_json::from_str("null").unwrap_or_else(|_| unreachable!("null is JSON"))
    }

    /// The compact JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value, parsed again from the text (which is always valid JSON).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(value: serde_json::Value) -> JsonText {
        JsonText::new(&value)
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        self.get() == other.get()
    }
}

impl Eq for JsonText {}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl std::fmt::Display for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    /// Through a `Value` rather than straight into the raw text: a record also arrives inside
    /// internally tagged console messages, which serde buffers, and a raw value cannot be read
    /// from that buffer.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JsonText, D::Error> {
        serde_json::Value::deserialize(d).map(|v| JsonText::new(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_is_the_value_in_compact_form_with_its_key_order() {
        let v = serde_json::json!({"z": 1, "a": {"y": [1, 2.5, "x\n"], "b": null}, "m": -0.1});
        let t = JsonText::new(&v);
        assert_eq!(
            t.get(),
            r#"{"z":1,"a":{"y":[1,2.5,"x\n"],"b":null},"m":-0.1}"#
        );
        assert_eq!(t.value(), v);
        assert_eq!(t.to_string(), t.get());
        // Written as the value itself, not as a string holding it.
        let outer = serde_json::to_string(&serde_json::json!({"args": t})).expect("serialize");
        assert_eq!(outer, format!(r#"{{"args":{}}}"#, t.get()));
        // Read from pretty or compact JSON alike, kept compact.
        let back: JsonText = serde_json::from_str(
            "{ \"z\" : 1,\n \"a\": {\"y\": [1, 2.5, \"x\\n\"], \"b\": null}, \"m\": -0.1 }",
        )
        .expect("deserialize");
        assert_eq!(back, t);
    }
}
