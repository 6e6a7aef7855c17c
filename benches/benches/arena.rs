//! Large arenas (issue 16): what an arena of 64 MiB to 128 GiB costs to
//! create, what allocating 6 GiB in it costs, and what a launch costs on a
//! fixed small working set as the arena grows (the extent path, the
//! page-table path, and a bound kernel), with the page-table bytes the
//! first launch uploads. The software mapping mode (the sparse and
//! coherent modes give their whole arena a device view: at most 64 GiB, and what the device binds).
//! Every arena is alive at once and the launch rounds are interleaved
//! across them, medians.
//!
//! Run: `cargo bench -p svm-benches --bench arena` (writes
//! `results/arena.md`); `-- --quick` for fewer rounds.

use std::time::Instant;

use svm::{Access, Arg, Binding, LaunchDescriptor, ManagedVec, Svm, SvmDescriptor};

#[path = "common/mod.rs"]
mod common;

const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

/// p[i] = p[i] + 1 for the first 1024 words of 9 pointer arguments: with
/// nine separate declared vectors the launch has more than eight extents
/// and takes the page-table path; with one, the extent path.
const BUMP: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let n = svm_arg_u32(0u);
    for (var k = 0u; k < n; k++) {
        let q = svm_index(svm_arg_ptr(2u + 2u * k), g.x, 4u);
        svm_store_u32(q, svm_load_u32(q) + 1u);
    }
}";

const BOUND: &str = "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&v)) { v[g.x] = v[g.x] + 1u; }
}";

/// Resident set size of this process, bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|s| s.parse::<usize>().ok()).unwrap_or(0) * 4096
}

struct Case {
    mode: svm::MappingMode,
    path: &'static str,
    arena: usize,
    svm: Svm,
    create_ms: f64,
    rss_mib: f64,
    alloc_6g_ms: Option<f64>,
    vecs: Vec<ManagedVec<u32>>,
    _gaps: Vec<ManagedVec<u32>>,
    _big: Option<std::ptr::NonNull<u8>>,
    bump: svm::Kernel,
    bound: svm::Kernel,
    first_pt_bytes: u64,
    extent_ms: Vec<f64>,
    table_ms: Vec<f64>,
    bound_ms: Vec<f64>,
}

fn label(bytes: usize) -> String {
    if bytes >= GIB {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

fn launch_bump(c: &mut Case, nine: bool) -> f64 {
    let n = if nine { 9 } else { 1 };
    let mut args = vec![Arg::U32(n as u32), Arg::U32(0)];
    args.extend(c.vecs[..n].iter().map(|v| Arg::ptr(v.as_ptr())));
    let access: Vec<Access<'_>> = c.vecs[..n].iter_mut().map(Access::read_write).collect();
    let t = Instant::now();
    c.svm
        .launch(&c.bump, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [16, 1, 1] })
        .expect("bump launch");
    t.elapsed().as_secs_f64() * 1e3
}

fn launch_bound(c: &mut Case) -> f64 {
    let t = Instant::now();
    c.svm
        .launch(
            &c.bound,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut c.vecs[0])],
                workgroups: [16, 1, 1],
                ..Default::default()
            },
        )
        .expect("bound launch");
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 7 } else { 25 };
    // Up to 128 GiB: a device binding its page table in 128 MiB (wgpu's
    // default limit, lavapipe's) holds 128 GiB of arena (4 bytes a page).
    // The coherent mode's device view (at most 64 GiB, and the windows the
    // device binds) is imported as allocations reach it.
    // The staged pool (discrete GPUs), the mprotect backend and the sparse
    // mode (at most 2 GiB of sparse address space on lavapipe) beside them.
    use svm::FaultBackendKind::{Mprotect, Uffd};
    use svm::MappingMode::{Coherent, Software, Sparse};
    let sizes = [
        (Software, 64 * MIB, Uffd, true),
        (Software, GIB, Uffd, true),
        (Software, 16 * GIB, Uffd, true),
        (Software, 64 * GIB, Uffd, true),
        (Software, 128 * GIB, Uffd, true),
        (Software, 16 * GIB, Uffd, false),
        (Software, 16 * GIB, Mprotect, true),
        (Sparse, GIB, Uffd, false),
        (Coherent, GIB, Uffd, true),
        (Coherent, 4 * GIB, Uffd, true),
    ];
    let mut cases = Vec::new();
    for &(mode, arena, backend, host_mapped) in &sizes {
        let before = rss();
        let t = Instant::now();
        let desc = SvmDescriptor::default()
            .arena_size(arena)
            .pool_size(64 << 20)
            .mapping(mode)
            .fault_backend(backend)
            .host_mapped_pool(host_mapped);
        let svm = match Svm::with_descriptor(&desc) {
            Ok(s) => s,
            Err(svm::SvmError::NoAdapter(m)) if !common::gpu_required() => {
                eprintln!("SKIP: no adapter ({m})");
                return;
            }
            Err(e @ svm::SvmError::Config(_)) if mode != Software => {
                eprintln!("SKIP: {mode:?} {}: {e}", label(arena));
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let create_ms = t.elapsed().as_secs_f64() * 1e3;
        let rss_mib = rss().saturating_sub(before) as f64 / MIB as f64;
        // Arenas of 16 GiB and more: 6 GiB first, so that the working set
        // lies above 6 GiB.
        let (big, alloc_6g_ms) = if arena >= 16 * GIB {
            let t = Instant::now();
            let p = svm.alloc(6 * GIB).expect("6 GiB");
            (Some(p), Some(t.elapsed().as_secs_f64() * 1e3))
        } else {
            (None, None)
        };
        // Nine 4 KiB vectors with a page between each (nine extents).
        let mut vecs = Vec::new();
        let mut gaps = Vec::new();
        for _ in 0..9 {
            vecs.push(svm.alloc_from_slice(&[0u32; 1024]).expect("vec"));
            gaps.push(svm.alloc_vec::<u32>(1024).expect("gap"));
        }
        let bump = svm
            .create_kernel(&svm::KernelDescriptor { label: "bump", source: BUMP, entry_point: "main" })
            .expect("kernel");
        let bound = svm
            .create_kernel(&svm::KernelDescriptor { label: "bound bump", source: BOUND, entry_point: "main" })
            .expect("kernel");
        let mut c = Case {
            mode,
            path: match (mode, host_mapped, backend) {
                (Sparse, _, _) => "sparse, staged",
                (Coherent, _, _) => "in place",
                (_, false, _) => "staged pool",
                (_, true, Mprotect) => "host-mapped pool, mprotect",
                _ => "host-mapped pool",
            },
            arena,
            svm,
            create_ms,
            rss_mib,
            alloc_6g_ms,
            vecs,
            _gaps: gaps,
            _big: big,
            bump,
            bound,
            first_pt_bytes: 0,
            extent_ms: Vec::new(),
            table_ms: Vec::new(),
            bound_ms: Vec::new(),
        };
        // Warm-up (pipelines built, pages resident); the first launch's
        // page-table upload recorded.
        launch_bump(&mut c, true);
        c.first_pt_bytes = c.svm.stats().pt_upload_bytes;
        launch_bump(&mut c, false);
        launch_bound(&mut c);
        cases.push(c);
    }
    for _ in 0..rounds {
        for c in cases.iter_mut() {
            let s = c.svm.stats();
            let ms = launch_bump(c, false);
            assert_eq!(c.svm.stats().extent_passes, s.extent_passes + 1, "one vector: the extent path");
            c.extent_ms.push(ms);
            let s = c.svm.stats();
            let ms = launch_bump(c, true);
            assert_eq!(c.svm.stats().page_table_passes, s.page_table_passes + 1, "nine vectors: the page table");
            c.table_ms.push(ms);
            let ms = launch_bound(c);
            c.bound_ms.push(ms);
        }
    }
    // The data went through every launch: warm-up 2 + 2 per round.
    for (k, v) in cases[0].vecs.iter().enumerate() {
        let want = if k == 0 { 3 + 3 * rounds as u32 } else { 1 + rounds as u32 };
        assert!(v.iter().all(|&x| x == want), "vector {k}: {} != {want}", v[0]);
    }
    let mut table = String::from(
        "| mode | path | arena | create (ms) | RSS after create (MiB) | allocate 6 GiB (ms) | first launch's page-table upload | launch, extent path (ms) | launch, page-table path (ms) | launch, bound (ms) |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cases.iter_mut() {
        table += &format!(
            "| {:?} | {} | {} | {:.1} | {:.1} | {} | {} KiB | {:.3} | {:.3} | {:.3} |\n",
            c.mode,
            c.path,
            label(c.arena),
            c.create_ms,
            c.rss_mib,
            c.alloc_6g_ms.map_or("—".to_string(), |m| format!("{m:.2}")),
            c.first_pt_bytes / 1024,
            common::median(&mut c.extent_ms),
            common::median(&mut c.table_ms),
            common::median(&mut c.bound_ms),
        );
    }
    let cmd = format!("cargo bench -p svm-benches --bench arena{}", if quick { " -- --quick" } else { "" });
    let out = format!(
        "# Arena size\n\nDevice: {}; every path (64 MiB pool; the coherent mode's device view imported as allocations reach it, from 64 MiB; uffd unless said); {rounds} interleaved rounds, medians; command: `{cmd}`.\n\
         Create includes opening the device. The working set (nine 4 KiB vectors) lies above the 6 GiB block where there is one.\n\n{table}",
        cases[0].svm.device_info()
    );
    println!("{out}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let path = if quick { dir.join("quick/arena.md") } else { dir.join("arena.md") };
    let _ = std::fs::create_dir_all(path.parent().expect("dir"));
    std::fs::write(&path, out).expect("write results");
    eprintln!("wrote {}", path.display());
}
