//! Oversubscription curve (issue 7): the same sweep of kernels over working
//! sets from 0.5x to 2x the device pool. The working set is split into 8
//! slices; one launch increments one slice (declared read-write); the
//! slices are swept 4 times, the last two timed. Up to 1x the pool,
//! everything stays resident; beyond it, two policies side by side:
//! eviction only (LRU, most-recent-first while thrashing) and the default,
//! which while thrashing serves a slice that does not fit from host memory
//! in place (the coherent window, where the device imports host memory)
//! instead of evicting.
//!
//! Every path side by side: the default (host-mapped pool, userfaultfd),
//! the staged pool a discrete GPU takes, the mprotect fault backend, and
//! the sparse mode (staged; a 16 MiB pool, lavapipe maps each sparse page
//! on its own).
//!
//! Run: `cargo bench -p svm-benches --bench oversub` (writes
//! `results/oversub.md`); `-- --quick` for a smaller pool.

use std::time::Instant;

use svm::{Access, Arg, FaultBackendKind, LaunchDescriptor, MappingMode, Svm, SvmDescriptor};

const INC: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u);
    for (var i = g.x; i < n; i += nw.x * 64u) { let q = svm_index(p, i, 4u); svm_store_u32(q, svm_load_u32(q) + 1u); }
}";

/// A migration path: its name, the descriptor (arena and pool sizes aside)
/// and the pool it runs with.
struct Path {
    name: &'static str,
    desc: fn() -> SvmDescriptor,
    pool: usize,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let pool: usize = if quick { 16 << 20 } else { 64 << 20 };
    let paths = [
        Path { name: "host-mapped pool, uffd (default here)", desc: SvmDescriptor::default, pool },
        Path {
            name: "staged pool (discrete GPUs), uffd",
            desc: || SvmDescriptor::default().host_mapped_pool(false),
            pool,
        },
        Path {
            name: "host-mapped pool, mprotect",
            desc: || SvmDescriptor::default().fault_backend(FaultBackendKind::Mprotect),
            pool,
        },
        Path {
            name: "sparse, staged, uffd",
            desc: || SvmDescriptor::default().mapping(MappingMode::Sparse).host_mapped_pool(false),
            pool: 16 << 20,
        },
    ];
    let mut table = String::from(
        "| path | pool MiB | working set / pool | policy | working set MiB | time per sweep ms (sweeps 3-4) | GB/s of working set | pages evicted per sweep | h2d pages per sweep | pages served in place per sweep |\n|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut device = String::new();
    let cases = paths
        .iter()
        .flat_map(|p| [0.5f64, 0.75, 1.0, 1.25, 1.5, 2.0].into_iter().flat_map(move |r| [(p, r, false), (p, r, true)]));
    for (path, ratio, in_place) in cases {
        if ratio <= 1.0 && in_place {
            continue; // the same as eviction only: nothing is evicted
        }
        let pool = path.pool;
        let desc = (path.desc)().arena_size((pool * 4).max(64 << 20)).pool_size(pool as u64).serve_in_place(in_place);
        let svm = match Svm::with_descriptor(&desc) {
            Ok(s) => s,
            Err(svm::SvmError::NoAdapter(m)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {
                eprintln!("SKIP: no adapter ({m})");
                return;
            }
            Err(e) => panic!("{}: {e}", path.name),
        };
        device = svm.device_info().to_string();
        let k = svm
            .create_kernel(&svm::KernelDescriptor { label: "inc", source: INC, entry_point: "main" })
            .expect("kernel");
        let ws = ((pool as f64 * ratio) as usize / (8 << 12)) * (8 << 12);
        let slice_words = ws / 8 / 4;
        let mut slices: Vec<_> = (0..8).map(|_| svm.alloc_vec::<u32>(slice_words).expect("slice")).collect();
        let sweep = |slices: &mut Vec<svm::ManagedVec<u32>>| {
            for s in slices.iter_mut() {
                let args = [Arg::ptr(s.as_ptr()), Arg::U32(slice_words as u32)];
                svm.launch(
                    &k,
                    &LaunchDescriptor {
                        args: &args,
                        access: &[Access::read_write(s)],
                        bindings: &[],
                        workgroups: [256, 1, 1],
                    },
                )
                .expect("launch");
            }
        };
        sweep(&mut slices); // first touch: everything migrates in
        sweep(&mut slices); // the policy settles (thrashing is detected)
        let s0 = svm.stats();
        let t = Instant::now();
        sweep(&mut slices);
        sweep(&mut slices);
        let per_sweep = t.elapsed().as_secs_f64() / 2.0;
        let d = svm.stats().since(&s0);
        assert!(slices.iter().all(|s| s.iter().all(|&x| x == 4)), "{}: wrong result at {ratio}x", path.name);
        let policy = if in_place { "in place while thrashing" } else { "eviction only" };
        eprintln!("{} {ratio:.2}x {policy}: {:.1} ms a sweep", path.name, per_sweep * 1e3);
        table.push_str(&format!(
            "| {} | {} | {ratio:.2}x | {policy} | {} | {:.1} | {:.2} | {} | {} | {} |\n",
            path.name,
            pool >> 20,
            ws >> 20,
            per_sweep * 1e3,
            ws as f64 / per_sweep / 1e9,
            d.evicted_pages / 2,
            d.h2d_pages / 2,
            d.remote_pages / 2
        ));
    }
    let cmd = if quick {
        "cargo bench -p svm-benches --bench oversub -- --quick"
    } else {
        "cargo bench -p svm-benches --bench oversub"
    };
    let out = format!(
        "# Oversubscription curve\n\nCommand: `{cmd}`; device: {device}; 8 slices, one launch per slice, medians not taken (two sweeps averaged); every migrating path with both policies (the coherent mode has no pool: nothing migrates, nothing is oversubscribed). Serving in place needs a device that imports host memory (lavapipe does); on a discrete GPU every in-place access crosses the bus.\n\n{table}"
    );
    println!("{out}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let path = if quick { dir.join("quick/oversub.md") } else { dir.join("oversub.md") };
    let _ = std::fs::create_dir_all(path.parent().expect("parent"));
    std::fs::write(&path, out).expect("write results");
}
