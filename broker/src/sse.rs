//! Server-Sent Events: the framing Streamable HTTP uses for streamed responses.
//!
//! [`encode`] writes one event; [`Parser`] reads events incrementally from arbitrary chunk
//! boundaries (the bridge reads upstream streams, the HTTP upstream taps `tools/list` answers).

use bytes::{BufMut, Bytes, BytesMut};

/// One parsed event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `id:` field, if the event had one.
    pub id: Option<String>,
    /// The `event:` field, if any (MCP uses the default type, `message`).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

/// Encode one event. `data` must not contain a newline (JSON-RPC messages serialized
/// compactly never do); any that slip in become separate `data:` lines, which is lossless.
pub fn encode(id: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    for line in data.split(|b| *b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    current: Event,
    has_data: bool,
}

impl Parser {
    /// Feed a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            self.line(&line, &mut out);
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<Event>) {
        if line.is_empty() {
            let ev = std::mem::take(&mut self.current);
            if self.has_data {
                out.push(ev);
            } else if ev.id.is_some() {
                // An event with only an id (a priming event) still moves the resumption point.
                out.push(ev);
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.current.id = Some(value.to_string()),
            "event" => self.current.event = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks() {
        let mut p = Parser::default();
        assert!(p.feed(b"id: 1\nda").is_empty());
        let evs = p.feed(b"ta: {\"a\":1}\n\n: comment\n\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].id.as_deref(), Some("1"));
        assert_eq!(evs[0].data, "{\"a\":1}");
        assert_eq!(evs[1].data, "x\ny");
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let mut p = Parser::default();
        let evs = p.feed(&encode(Some("s1-3"), b"{\"jsonrpc\":\"2.0\"}"));
        assert_eq!(
            evs,
            vec![Event {
                id: Some("s1-3".into()),
                event: None,
                data: "{\"jsonrpc\":\"2.0\"}".into()
            }]
        );
    }
}
