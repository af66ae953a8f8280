//! libFuzzer entry point for affinity_fuzz::log_entry.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| affinity_fuzz::log_entry(data));
