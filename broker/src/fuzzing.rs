//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off in every build that
//! ships). Each takes raw input, runs one of the broker's parsers on it, and checks what must
//! hold whatever the input: no panic, and the invariants named in each function. `fuzz/README.md`
//! says how to run them.

use std::path::Path;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::{browser, config, console_api, frontend, jsonrpc, sse, waiting};

/// `name: value` lines, then a blank line and a body: what a POST to `/mcp/<server>` brings.
/// Runs the `Origin`/`Host` checks, the JSON-RPC classification and the 2026-07-28 header
/// mirroring; a message that classifies still classifies the same after a round trip through
/// its JSON text.
pub fn mcp_message(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&b""[..], data),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let browsers = browser::Browsers::new(
        &["https://console.example".into()],
        &["tollgate.internal".into()],
    );
    let _ = browsers.check(&headers);
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let kind = jsonrpc::classify(&value);
    let _ = (jsonrpc::id(&value), jsonrpc::method(&value));
    if let Some(v) = jsonrpc::meta_protocol_version(&value) {
        let _ = jsonrpc::is_modern(v);
    }
    if kind == Ok(jsonrpc::Kind::Request) {
        let _ = frontend::fuzz_check_mirrored(&headers, &value);
    }
    let _ = (
        waiting::tasks::requested(&value, true),
        waiting::tasks::requested(&value, false),
    );
    if let Ok(k) = kind {
        let again: Value = match serde_json::from_str(&value.to_string()) {
            Ok(v) => v,
            Err(e) => panic!("a parsed message does not parse again: {e}"),
        };
        assert_eq!(jsonrpc::classify(&again), Ok(k));
    }
}

/// An upstream's SSE stream: the first byte picks a chunk size. The events are the same
/// whether the stream comes whole or in chunks, and an event's data survives
/// [`sse::encode`] and parsing again.
pub fn sse(data: &[u8]) {
    let Some((n, stream)) = data.split_first() else {
        return;
    };
    let whole = sse::Parser::default().feed(stream);
    let mut p = sse::Parser::default();
    let mut chunked = Vec::new();
    for c in stream.chunks(usize::from(*n).max(1)) {
        chunked.extend(p.feed(c));
    }
    assert_eq!(whole, chunked, "chunking changed the events");
    for ev in whole {
        let id = ev.id.as_deref().filter(|i| !i.contains(['\n', '\r']));
        let framed = sse::encode(id, ev.data.as_bytes());
        let back = sse::Parser::default().feed(&framed);
        let data: Vec<_> = back.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(
            data,
            [ev.data.as_str()],
            "encode then parse changed the data"
        );
    }
}

/// A config file: parsed and validated, with every problem reported, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::parse(Path::new("/nonexistent/fuzz.toml"), text);
    }
}

/// A console's message: either a message (which then round-trips through its JSON text) or
/// the protocol error the console is sent; and a broker message as a console reads it.
pub fn console_msg(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = console_api::fuzz_parse(text) {
        let json = serde_json::to_string(&msg).unwrap_or_default();
        let back = console_api::fuzz_parse(&json);
        assert_eq!(
            back.ok(),
            Some(msg),
            "a console message changed in a round trip"
        );
    }
    if let Ok(msg) = serde_json::from_str::<tollgate_shared::console::ServerMsg>(text) {
        let json = serde_json::to_string(&msg).unwrap_or_default();
        let back = serde_json::from_str::<tollgate_shared::console::ServerMsg>(&json);
        assert_eq!(
            back.ok(),
            Some(msg),
            "a broker message changed in a round trip"
        );
    }
}
