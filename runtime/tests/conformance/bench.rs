//! hmm-tests.c `benchmark_thp_migration`: system ↔ device migration
//! throughput from ¼ of a 2 MiB page up to 128 of them. Ignored by default:
//! `cargo nextest run -p svm-runtime --test conformance --run-ignored only bench`
//! (or `cargo test ... -- --ignored --nocapture bench`). `SVM_BENCH_MAX_MB`
//! caps the largest size (default 256 = 128 × 2 MiB).
//!
//! On lavapipe the "device" is host memory too: the numbers measure the
//! runtime's own cost per byte, not a PCIe link.

use std::time::Instant;

use svm::Location;

use crate::{ctx, BACKENDS};

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

#[test]
#[ignore = "benchmark: run with --ignored and --nocapture"]
fn thp_migration() {
    let max_mb: usize = std::env::var("SVM_BENCH_MAX_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    for backend in BACKENDS {
        let desc = svm::SvmDescriptor::default()
            .arena_size(2 * (max_mb << 20) + (64 << 20))
            .pool_size((max_mb.max(2) << 20) as u64)
            .fault_backend(backend)
            .fault_chunk(2 << 20);
        let Some(svm) = ctx(desc) else { return };
        println!(
            "{backend} on {}: size, sys->dev (prefetch), dev->sys (prefetch), dev->sys (CPU faults), GB/s",
            svm.device_info().name
        );
        let mut bytes = 512 << 10;
        while bytes <= max_mb << 20 {
            let n = bytes / 4;
            let mut v = svm.alloc_vec::<u32>(n).expect("alloc");
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
            let p = v.as_ptr().cast::<u8>();
            let best = |f: &mut dyn FnMut() -> f64| (0..3).map(|_| f()).fold(f64::MAX, f64::min);
            let to_dev = best(&mut || {
                svm.prefetch(p, bytes, Location::Host).wait().expect("host");
                let t = Instant::now();
                svm.prefetch(p, bytes, Location::Device).wait().expect("device");
                t.elapsed().as_secs_f64()
            });
            let to_sys = best(&mut || {
                svm.prefetch(p, bytes, Location::Device).wait().expect("device");
                let t = Instant::now();
                svm.prefetch(p, bytes, Location::Host).wait().expect("host");
                t.elapsed().as_secs_f64()
            });
            let by_fault = best(&mut || {
                svm.prefetch(p, bytes, Location::Device).wait().expect("device");
                let t = Instant::now();
                let mut s = 0u32;
                for i in (0..n).step_by(1024) {
                    s = s.wrapping_add(v[i]);
                }
                std::hint::black_box(s);
                t.elapsed().as_secs_f64()
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32), "{backend}: data survived");
            println!(
                "  {:>8} KiB  {:>6.2}  {:>6.2}  {:>6.2}",
                bytes >> 10,
                gbps(bytes, to_dev),
                gbps(bytes, to_sys),
                gbps(bytes, by_fault)
            );
            drop(v);
            bytes *= 2;
        }
    }
}
