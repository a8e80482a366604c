#![no_main]
//! See `tollgate_broker::fuzzing::console_msg` for the input and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_broker::fuzzing::console_msg(data));
