//! libFuzzer entry point for affinity_fuzz::snapshot.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| affinity_fuzz::snapshot(data));
