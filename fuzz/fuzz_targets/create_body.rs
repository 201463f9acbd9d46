//! Fuzzes the create body parser (`batch_worker::fuzzing::create_body`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| batch_worker::fuzzing::create_body(data));
