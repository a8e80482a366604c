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

/// Encode one event. `data` should not contain a line break (JSON-RPC messages serialized
/// compactly never do); any that slip in (`\n`, `\r\n` or a lone `\r`, all line ends to SSE)
/// start another `data:` line, so a reader gets the data back with `\n` for each.
pub fn encode(id: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 32);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.as_bytes());
        out.put_u8(b'\n');
    }
    let text = String::from_utf8_lossy(data);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    for line in text.split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline: a long line fed in small chunks is
    /// scanned once, not once per chunk (which was quadratic).
    scanned: usize,
    current: Event,
    has_data: bool,
}

impl Parser {
    /// Feed a chunk; returns the events it completed. Lines end with `\n`, `\r\n` or a lone
    /// `\r`, as the SSE specification says.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        // How far the buffer is known to hold no line end (but for a trailing `\r`).
        let mut clean = self.buf.len();
        while let Some(pos) = self.buf[from..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let end = from + pos;
            let next = match (self.buf[end], self.buf.get(end + 1)) {
                (b'\r', Some(b'\n')) => end + 2,
                // A `\r` that ends the buffer may be half of a `\r\n`: wait for the next byte.
                (b'\r', None) => {
                    clean = end;
                    break;
                }
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            start = next;
            from = start;
            self.line(&line, &mut out);
        }
        self.buf.drain(..start);
        self.scanned = clean - start;
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

    #[test]
    fn lines_end_with_lf_crlf_or_a_lone_cr_even_across_chunks() {
        let stream = b"data: a\rdata: b\r\n\rid: 7\ndata: c\r";
        let mut p = Parser::default();
        let mut got = Vec::new();
        for b in stream.iter() {
            got.extend(p.feed(&[*b]));
        }
        got.extend(p.feed(b"\n"));
        got.extend(p.feed(b"\n"));
        let whole = Parser::default().feed(&[&stream[..], b"\n\n"].concat());
        assert_eq!(got, whole);
        assert_eq!(
            got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["a\nb", "c"]
        );
        assert_eq!(got[1].id.as_deref(), Some("7"));
        let framed = encode(None, b"x\ry\r\nz");
        assert_eq!(&framed[..], b"data: x\ndata: y\ndata: z\n\n");
    }
}
