//! One criterion root for every benchmark group (as wgpu's `benches/`).
//! Run: `cargo bench -p svm-benches --bench root`.

use criterion::{criterion_group, criterion_main};

mod pagetable;

criterion_group!(pagetable_group, pagetable::benches);
criterion_main!(pagetable_group);
