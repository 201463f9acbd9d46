//! Fuzzes the journal codec (`batch_worker::fuzzing::journal`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| batch_worker::fuzzing::journal(data));
