//! libFuzzer entry point for affinity_fuzz::client_key.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| affinity_fuzz::client_key(data));
