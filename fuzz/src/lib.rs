//! Fuzz targets for the decoders and zone parsing. The checks themselves
//! live in `harness.rs`, which `tests/hostile_input.rs` includes too, so the
//! committed corpus is replayed in CI through exactly the code fuzzed here.

#[path = "harness.rs"]
pub mod harness;
