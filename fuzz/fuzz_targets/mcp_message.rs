#![no_main]
//! See `tollgate_broker::fuzzing::mcp_message` for the input and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_broker::fuzzing::mcp_message(data));
