//! One criterion root for every benchmark group (as wgpu's `benches/`).
//! Run: `cargo bench -p svm-benches --bench root`.
//!
//! The migration figures that need big buffers and a table of ratios are a
//! separate program: `cargo bench -p svm-benches --bench migration`.

use criterion::{criterion_group, criterion_main};

mod common;
mod fault_path;
mod pagetable;

criterion_group!(pagetable_group, pagetable::benches);
criterion_group!(fault_path_group, fault_path::benches);
criterion_main!(pagetable_group, fault_path_group);
