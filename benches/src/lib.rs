//! Benchmarks live in `benches/root.rs`; this library is empty.
