//! libFuzzer entry point for affinity_fuzz::routes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| affinity_fuzz::routes(data));
