//! libFuzzer entry point for affinity_fuzz::request.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| affinity_fuzz::request(data));
