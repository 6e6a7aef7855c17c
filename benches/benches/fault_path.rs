//! One CPU fault, micro-benchmarked: the raw mechanism (svm_migrate's Arena +
//! FaultService with a handler that only maps the page back) against the
//! runtime serving a 4 KiB fault on a device-owned page (copy back from the
//! device included; chunk 4 KiB, prefetcher off), for both backends.
//!
//! Run: `cargo bench -p svm-benches --bench root -- fault_path`.
//! Ids: `fault_path/<backend>/raw` and `fault_path/<backend>/svm_4k`.
//! Target (issue 7): the runtime within 2× of the raw round trip.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use svm::{Access, Arg, FaultBackendKind, KernelDescriptor, LaunchDescriptor, Svm, SvmDescriptor};

use crate::common::{gpu_required, touch_workgroups, RawArena, PAGE, TOUCH_PAGES};

const BACKENDS: [FaultBackendKind; 2] = [FaultBackendKind::Uffd, FaultBackendKind::Mprotect];
/// Pages faulted between two re-arms (zap or launch), untimed.
const PAGES: usize = 1024;

pub fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("fault_path");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500)).sample_size(30);
    for kind in BACKENDS {
        match RawArena::new(PAGES * PAGE, kind, PAGE) {
            Ok(raw) => {
                let mut next = PAGES;
                g.bench_function(BenchmarkId::new(kind.name(), "raw"), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            if next == PAGES {
                                raw.arena().zap(0, PAGES * PAGE).expect("zap");
                                next = 0;
                            }
                            let t = Instant::now();
                            black_box(raw.touch(next * PAGE));
                            total += t.elapsed();
                            next += 1;
                        }
                        total
                    })
                });
            }
            Err(e) => eprintln!("SKIP fault_path/{kind}/raw: {e}"),
        }

        let desc = SvmDescriptor::default()
            .arena_size(8 << 20)
            .pool_size(8 << 20)
            .fault_backend(kind)
            .fault_chunk(PAGE)
            .fault_prefetch(false);
        let svm = match Svm::with_descriptor(&desc) {
            Ok(s) => s,
            Err(e) => {
                assert!(!gpu_required(), "SVM_REQUIRE_GPU=1 but no runtime: {e}");
                eprintln!("SKIP fault_path/{kind}/svm_4k: {e}");
                continue;
            }
        };
        let k = svm
            .create_kernel(&KernelDescriptor { label: "touch_pages", source: TOUCH_PAGES, entry_point: "main" })
            .expect("kernel");
        let mut v = svm.alloc_vec::<u8>(PAGES * PAGE).expect("alloc");
        v.fill(1);
        let mut next = PAGES;
        g.bench_function(BenchmarkId::new(kind.name(), "svm_4k"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if next == PAGES {
                        let args = [Arg::ptr(v.as_ptr()), Arg::U32(PAGES as u32), Arg::U32(0)];
                        let access = [Access::read_write(&mut v)];
                        svm.launch(
                            &k,
                            &LaunchDescriptor {
                                args: &args,
                                access: &access,
                                bindings: &[],
                                workgroups: touch_workgroups(PAGES),
                            },
                        )
                        .expect("launch");
                        next = 0;
                    }
                    let t = Instant::now();
                    black_box(v[next * PAGE]);
                    total += t.elapsed();
                    next += 1;
                }
                total
            })
        });
    }
    g.finish();
}
