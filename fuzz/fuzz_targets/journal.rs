#![no_main]
//! See `tollgate_store::fuzzing::journal` for the input and the invariants.

libfuzzer_sys::fuzz_target!(|data: &[u8]| tollgate_store::fuzzing::journal(data));
