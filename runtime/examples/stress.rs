//! Soak test: CPU threads and kernels hammer managed memory against a
//! reference model until the time is up.
//!
//! ```text
//! cargo run --release -p svm-runtime --example stress -- --minutes 30 [--fault uffd|mprotect]
//!     [--workers 3] [--kernel-workers 1] [--queue-workers 2] [--seed N] [--pool-mib 6] [--watchdog-secs 60]
//!     [--mirror]    # a second device mirrors the arena; workers use both
//! ```
//!
//! Without `--fault`, the time is split between both backends. Exit codes:
//! 0 clean, 1 mismatches or errors, 2 bad arguments or no runtime, 3 the
//! watchdog saw no progress (deadlock; state printed).

#[path = "../tests/conformance/stress_core.rs"]
mod stress_core;

use std::time::Duration;

use svm::{FaultBackendKind, Svm, SvmDescriptor};

fn usage(msg: &str) -> ! {
    eprintln!("stress: {msg}");
    eprintln!(
        "usage: stress --minutes N [--fault uffd|mprotect] [--workers N] [--kernel-workers N] [--queue-workers N] [--seed N] [--pool-mib N] [--watchdog-secs N] [--mirror]"
    );
    std::process::exit(2)
}

fn main() {
    let mut minutes = 1.0f64;
    let mut backends = vec![FaultBackendKind::Uffd, FaultBackendKind::Mprotect];
    let mut cfg = stress_core::Config::default();
    let mut pool_mib = 6u64;
    let mut mirror = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--minutes" => minutes = val().parse().unwrap_or_else(|_| usage("bad --minutes")),
            "--fault" => {
                let v = val();
                backends = vec![FaultBackendKind::parse(&v).unwrap_or_else(|e| usage(&e.to_string()))];
            }
            "--workers" => cfg.workers = val().parse().unwrap_or_else(|_| usage("bad --workers")),
            "--kernel-workers" => cfg.kernel_workers = val().parse().unwrap_or_else(|_| usage("bad --kernel-workers")),
            "--queue-workers" => cfg.queue_workers = val().parse().unwrap_or_else(|_| usage("bad --queue-workers")),
            "--seed" => cfg.seed = val().parse().unwrap_or_else(|_| usage("bad --seed")),
            "--mirror" => mirror = true,
            "--pool-mib" => pool_mib = val().parse().unwrap_or_else(|_| usage("bad --pool-mib")),
            "--watchdog-secs" => {
                cfg.watchdog = Duration::from_secs(val().parse().unwrap_or_else(|_| usage("bad --watchdog-secs")))
            }
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut failed = false;
    for &backend in &backends {
        cfg.duration = total / backends.len() as u32;
        cfg.mirror_pool = mirror.then_some(pool_mib << 20);
        let desc = SvmDescriptor::default().arena_size(256 << 20).pool_size(pool_mib << 20).fault_backend(backend);
        let svm = Svm::with_descriptor(&desc).unwrap_or_else(|e| {
            eprintln!("stress: cannot create the runtime: {e}");
            std::process::exit(2)
        });
        println!(
            "stress: {backend} on {}, {:?}, {} workers + {} kernel workers, pool {pool_mib} MiB, seed {}",
            svm.device_info().name,
            cfg.duration,
            cfg.workers,
            cfg.kernel_workers,
            cfg.seed
        );
        let r = stress_core::run(&svm, &cfg);
        println!("stress: {backend}: {r}");
        if r.mismatches != 0 || !r.errors.is_empty() {
            failed = true;
            for e in r.errors.iter().take(20) {
                println!("  error: {e}");
            }
        }
        if svm.live_allocations() != 0 || svm.device_resident_pages() != 0 {
            println!(
                "stress: {backend}: leftovers: {} allocations, {} device pages",
                svm.live_allocations(),
                svm.device_resident_pages()
            );
            failed = true;
        }
    }
    std::process::exit(i32::from(failed))
}
