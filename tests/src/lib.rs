//! Shared helpers of the integration tests (`tests/it`).
//!
//! The tests themselves live in one binary, `tests/it/main.rs`, one module per concern.
