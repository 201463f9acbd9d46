//! Fuzzes the spec bunch reader (`batch_worker::fuzzing::bunch`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| batch_worker::fuzzing::bunch(data));
