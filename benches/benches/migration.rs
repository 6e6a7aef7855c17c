//! Migration benchmarks (issues 4 and 7): host→device migration at launch,
//! device→host migration by CPU faults, the latency of one CPU fault, and
//! launch overhead against arena size, for both fault backends and for fault
//! chunks of 4 KiB, 64 KiB and 2 MiB, measured side by side in one run
//! against the explicit wgpu copies and the raw fault mechanism.
//!
//! First, the migration *paths* side by side (issue 15): the host-mapped
//! pool (unified memory: lavapipe's default), the staged path (the pool in
//! memory the CPU cannot map, as on a discrete GPU: pipelined chunked
//! copies through staging rings, with read-ahead of fault streams), and the
//! sparse mapping mode (staged, into a sparse buffer); each under both fault
//! backends with the default fault policy (64 KiB chunks + prefetch), runs
//! interleaved rep by rep with the explicit baselines, medians.
//!
//! Not criterion: each figure needs its own setup (a runtime per backend and
//! chunk, buffers of 256 MiB) and the result is a table of ratios. The
//! program prints a markdown table and writes `results/migration.{md,csv,svg}`
//! (`results/quick/` with `--quick`). See `benches/README.md` for what each
//! figure includes.
//!
//! ```text
//! cargo bench -p svm-benches --bench migration            # 256 MiB, full
//! cargo bench -p svm-benches --bench migration -- --quick # 64 MiB smoke run
//! ```

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use svm::{
    Access, Arg, FaultBackendKind, Kernel, KernelDescriptor, LaunchDescriptor, Location, ManagedVec, MappingMode, Svm,
    SvmDescriptor,
};

const MIB: usize = 1 << 20;
const BACKENDS: [FaultBackendKind; 2] = [FaultBackendKind::Uffd, FaultBackendKind::Mprotect];
/// (fault chunk, tree prefetcher on): every chunk size alone, then the
/// runtime's prefetching policy (the default) from 4 KiB and 64 KiB chunks.
const CONFIGS: [(usize, bool); 5] =
    [(4 << 10, false), (64 << 10, false), (2 << 20, false), (4 << 10, true), (64 << 10, true)];

struct Opts {
    quick: bool,
    /// Bytes moved by the throughput figures.
    size: usize,
    /// Repetitions of each throughput figure (the median is reported).
    reps: usize,
    /// Rounds over the single-fault buffer.
    fault_rounds: usize,
    /// Arena sizes of the launch-overhead sweep.
    arenas: Vec<usize>,
    /// Launches timed per arena size.
    launches: usize,
    out: PathBuf,
}

impl Opts {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick") || std::env::var("SVM_BENCH_QUICK").is_ok_and(|v| v == "1");
        let max_arena = (4 << 30) - (2 << 20);
        let root = std::env::var_os("SVM_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../results")));
        if quick {
            Self {
                quick,
                size: 64 * MIB,
                reps: 2,
                fault_rounds: 1,
                arenas: vec![64 * MIB, 1 << 30, max_arena],
                launches: 8,
                out: root.join("quick"),
            }
        } else {
            Self {
                quick,
                size: 256 * MIB,
                reps: 5,
                fault_rounds: 2,
                arenas: vec![64 * MIB, 256 * MIB, 1 << 30, 2 << 30, max_arena],
                launches: 30,
                out: root,
            }
        }
    }
    fn command(&self) -> &'static str {
        if self.quick {
            "cargo bench -p svm-benches --bench migration -- --quick"
        } else {
            "cargo bench -p svm-benches --bench migration"
        }
    }
}

fn size_name(b: usize) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= MIB {
        format!("{} MiB", b / MIB)
    } else {
        format!("{} KiB", b >> 10)
    }
}

fn chunk_name(b: usize) -> String {
    if b >= MIB {
        format!("{}M", b / MIB)
    } else {
        format!("{}K", b >> 10)
    }
}

fn ms(d: f64) -> String {
    format!("{:.1}", d * 1e3)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Explicit-copy baselines on a plain wgpu device, and memcpy.
struct Baselines {
    memcpy_s: f64,
    write_buffer_s: f64,
    readback_s: f64,
    adapter: String,
}

fn baselines(o: &Opts) -> Option<Baselines> {
    let g = PlainGpu::new()?;
    let adapter = g.info.to_string();
    let src: Vec<u8> = (0..o.size).map(|i| (i >> 12) as u8).collect();
    let mut dst = vec![0u8; o.size];
    let (mut mc, mut wb, mut rb) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.reps.max(3) {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        mc.push(secs(t.elapsed()));
    }
    use wgpu::BufferUsages as U;
    let buf = g.buffer("baseline", o.size, U::STORAGE | U::COPY_DST | U::COPY_SRC);
    let staging = g.buffer("baseline staging", o.size, U::MAP_READ | U::COPY_DST);
    g.upload(&buf, &src); // warm: first use zero-fills the buffer
    for _ in 0..o.reps {
        wb.push(secs(g.upload(&buf, &src)));
    }
    g.readback(&buf, &staging, &mut dst); // warm
    assert!(dst == src, "baseline readback returned wrong bytes");
    for _ in 0..o.reps {
        rb.push(secs(g.readback(&buf, &staging, &mut dst)));
    }
    Some(Baselines { memcpy_s: median(&mut mc), write_buffer_s: median(&mut wb), readback_s: median(&mut rb), adapter })
}

/// What one (backend, chunk) configuration measured; times in seconds.
struct Config {
    backend: FaultBackendKind,
    chunk: usize,
    prefetch: bool,
    /// Launch of `size` bytes read_write that were on the host.
    launch_migrate_s: f64,
    /// The same launch right after, with every page already on the device.
    launch_resident_s: f64,
    /// Runtime's own h2d_ns (arena zap + staging copies, before submit).
    h2d_stats_s: f64,
    /// Runtime's kernel_ns of the migrating launch (submit: GPU copies + kernel + wait).
    kernel_migrate_s: f64,
    /// Reading one byte per page in order after the kernel wrote them.
    d2h_s: f64,
    /// Runtime's d2h_ns for that loop (copy + map + write into the host copy).
    d2h_stats_s: f64,
    faults: u64,
    /// Latency of one CPU touch that migrates one chunk.
    fault: Lat,
    /// Same with the raw mechanism (trivial handler, restore one chunk).
    raw: Lat,
}

impl Config {
    fn h2d_net_s(&self) -> f64 {
        (self.launch_migrate_s - self.launch_resident_s).max(1e-9)
    }
}

fn launch_touch(svm: &Svm, k: &Kernel, v: &mut ManagedVec<u8>, tag: u32) {
    launch_touch_with(svm, k, v, tag, &svm::LaunchOptions::default());
}

fn launch_touch_with(svm: &Svm, k: &Kernel, v: &mut ManagedVec<u8>, tag: u32, opts: &svm::LaunchOptions) {
    let pages = v.len() / PAGE;
    let args = [Arg::ptr(v.as_ptr()), Arg::U32(u32::try_from(pages).expect("pages fit u32")), Arg::U32(tag)];
    let access = [Access::read_write(v)];
    svm.launch_with(
        k,
        &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: touch_workgroups(pages) },
        opts,
    )
    .expect("launch");
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() * 9 / 10).copied().unwrap_or(0.0)
}

/// Median, 90th percentile and mean of latency samples, seconds.
#[derive(Clone, Copy)]
struct Lat {
    median: f64,
    p90: f64,
    mean: f64,
}

impl Lat {
    const NONE: Lat = Lat { median: f64::NAN, p90: f64::NAN, mean: f64::NAN };
    fn of(mut v: Vec<f64>) -> Self {
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        Lat { p90: p90(&mut v), median: median(&mut v), mean }
    }
}

/// Timed single touches of the first byte of each chunk of a zapped raw arena.
fn raw_fault_latency(kind: FaultBackendKind, chunk: usize, bytes: usize, rounds: usize) -> Lat {
    let raw = match RawArena::new(bytes, kind, chunk) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIP raw {kind} fault latency: {e}");
            return Lat::NONE;
        }
    };
    let mut lat = Vec::new();
    for _ in 0..rounds {
        raw.arena().zap(0, raw.arena().len()).expect("zap");
        for off in (0..bytes).step_by(chunk) {
            let t = Instant::now();
            std::hint::black_box(raw.touch(off));
            lat.push(secs(t.elapsed()));
        }
    }
    Lat::of(lat)
}

fn fault_buffer_bytes(chunk: usize, quick: bool) -> usize {
    let samples = match chunk {
        c if c <= 4096 => 512,
        c if c <= 64 << 10 => 256,
        _ => 32,
    };
    let samples = if quick { samples / 2 } else { samples };
    chunk * samples
}

fn config_name(chunk: usize, prefetch: bool) -> String {
    format!("{}{}", chunk_name(chunk), if prefetch { "+pf" } else { "" })
}

fn measure_config(o: &Opts, backend: FaultBackendKind, chunk: usize, prefetch: bool) -> Option<Config> {
    let fault_bytes = fault_buffer_bytes(chunk, o.quick);
    let desc = SvmDescriptor::default()
        .arena_size(o.size.max(fault_bytes) + 64 * MIB)
        .pool_size((o.size.max(fault_bytes) + 8 * MIB) as u64)
        .fault_backend(backend)
        .fault_chunk(chunk)
        .fault_prefetch(prefetch);
    let svm = match Svm::with_descriptor(&desc) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIP {backend}/{}: {e}", config_name(chunk, prefetch));
            return None;
        }
    };
    let k = svm
        .create_kernel(&KernelDescriptor { label: "touch_pages", source: TOUCH_PAGES, entry_point: "main" })
        .expect("kernel");

    // One fault = one chunk (without prefetch): touch the first byte of each
    // chunk once; keep only the touches that faulted (with the prefetcher
    // most do not).
    let mut lat = Vec::new();
    pin_process(Some(0));
    {
        let mut v = svm.alloc_vec::<u8>(fault_bytes).expect("alloc");
        v.fill(1);
        for round in 0..o.fault_rounds {
            launch_touch(&svm, &k, &mut v, round as u32);
            for off in (0..fault_bytes).step_by(chunk) {
                let before = svm.stats().cpu_faults;
                let t = Instant::now();
                let b = std::hint::black_box(v[off]);
                let d = secs(t.elapsed());
                if svm.stats().cpu_faults != before {
                    lat.push(d);
                }
                assert_eq!(b, ((off / PAGE) as u32 ^ round as u32) as u8, "fault brought back wrong data");
            }
        }
    }
    let fault = Lat::of(lat);
    let raw = raw_fault_latency(backend, chunk, fault_bytes, o.fault_rounds);
    pin_process(None);

    // Throughput: migrate `size` bytes to the device at launch, back by faults.
    let pages = o.size / PAGE;
    let (mut lm, mut lr, mut hs, mut km, mut dd, mut ds, mut nf) = (vec![], vec![], vec![], vec![], vec![], vec![], 0);
    for rep in 0..o.reps {
        let mut v = svm.alloc_vec::<u8>(o.size).expect("alloc");
        v.fill(0x5a);
        let s0 = svm.stats();
        let t = Instant::now();
        launch_touch(&svm, &k, &mut v, 7);
        lm.push(secs(t.elapsed()));
        let s1 = svm.stats();
        let d = s1.since(&s0);
        assert_eq!(d.h2d_pages as usize, pages, "every page migrates at launch");
        hs.push(d.h2d_ns as f64 * 1e-9);
        km.push(d.kernel_ns as f64 * 1e-9);
        let tag = 0x100 + rep as u32;
        let t = Instant::now();
        launch_touch(&svm, &k, &mut v, tag);
        lr.push(secs(t.elapsed()));
        let s2 = svm.stats();
        assert_eq!(s2.since(&s1).h2d_pages, 0, "resident pages do not migrate");
        let t = Instant::now();
        let mut bad = 0usize;
        for p in 0..pages {
            bad += usize::from(v[p * PAGE] != ((p as u32) ^ tag) as u8);
        }
        dd.push(secs(t.elapsed()));
        assert_eq!(bad, 0, "CPU read stale data after migration");
        let d = svm.stats().since(&s2);
        ds.push(d.d2h_ns as f64 * 1e-9);
        nf = d.cpu_faults;
        assert_eq!(d.d2h_pages as usize, pages, "every page comes back");
    }
    Some(Config {
        backend,
        chunk,
        prefetch,
        launch_migrate_s: median(&mut lm),
        launch_resident_s: median(&mut lr),
        h2d_stats_s: median(&mut hs),
        kernel_migrate_s: median(&mut km),
        d2h_s: median(&mut dd),
        d2h_stats_s: median(&mut ds),
        faults: nf,
        fault,
        raw,
    })
}

/// A migration path of the side-by-side figures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    /// The pool in host-mapped memory (unified-memory adapters).
    HostMapped,
    /// The pool in memory the CPU does not map: staged copies.
    Staged,
    /// Sparse mapping mode (staged copies into a sparse buffer).
    Sparse,
    /// Sparse mapping mode on unified memory: the blocks host-mapped, CPU
    /// copies.
    SparseHostMapped,
}

const PATHS: [Path; 4] = [Path::HostMapped, Path::Staged, Path::Sparse, Path::SparseHostMapped];

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::HostMapped => "host-mapped pool",
            Path::Staged => "staged",
            Path::Sparse => "sparse (staged)",
            Path::SparseHostMapped => "sparse (host-mapped blocks)",
        }
    }
    /// Bytes moved per figure: lavapipe maps every page of a sparse buffer
    /// on its own (one VMA a page, `vm.max_map_count` 65530 in all), so the
    /// sparse runtimes get a quarter of the size.
    fn size(self, o: &Opts) -> usize {
        if matches!(self, Path::Sparse | Path::SparseHostMapped) {
            o.size / 4
        } else {
            o.size
        }
    }
    fn descriptor(self, o: &Opts, backend: FaultBackendKind) -> SvmDescriptor {
        let size = self.size(o);
        let d = SvmDescriptor::default()
            .arena_size(size + 16 * MIB)
            .pool_size((size + 8 * MIB) as u64)
            .fault_backend(backend);
        match self {
            Path::HostMapped => d.mapping(MappingMode::Software),
            Path::Staged => d.mapping(MappingMode::Software).host_mapped_pool(false),
            Path::Sparse => d.mapping(MappingMode::Sparse).host_mapped_pool(false),
            Path::SparseHostMapped => d.mapping(MappingMode::Sparse),
        }
    }
}

/// One (path, backend) runtime and its samples, seconds.
struct PathRun {
    path: Path,
    backend: FaultBackendKind,
    size: usize,
    svm: Svm,
    k: Kernel,
    h2d: Vec<f64>,
    d2h: Vec<f64>,
    /// Device → host by `prefetch(Location::Host)`, s.
    pf: Vec<f64>,
    faults: u64,
}

struct PathResult {
    path: Path,
    backend: FaultBackendKind,
    size: usize,
    h2d_s: f64,
    d2h_s: f64,
    prefetch_s: f64,
    faults: u64,
}

/// One round of a path: migrate `size` bytes in at launch (net of a launch
/// with the pages resident), then back by CPU faults (one read a page, in
/// order). Returns (h2d, d2h) seconds.
fn path_round(r: &mut PathRun, rep: usize) -> (f64, f64) {
    let svm = &r.svm;
    let pages = r.size / PAGE;
    let mut v = svm.alloc_vec::<u8>(r.size).expect("alloc");
    v.fill(0x5a);
    let s0 = svm.stats();
    let t = Instant::now();
    launch_touch(svm, &r.k, &mut v, 7);
    let migrate = secs(t.elapsed());
    assert_eq!(svm.stats().since(&s0).h2d_pages as usize, pages, "every page migrates at launch");
    let tag = 0x100 + rep as u32;
    let t = Instant::now();
    launch_touch(svm, &r.k, &mut v, tag);
    let resident = secs(t.elapsed());
    let s2 = svm.stats();
    let t = Instant::now();
    let mut bad = 0usize;
    for p in 0..pages {
        bad += usize::from(v[p * PAGE] != ((p as u32) ^ tag) as u8);
    }
    let d2h = secs(t.elapsed());
    assert_eq!(bad, 0, "CPU read stale data after migration");
    let d = svm.stats().since(&s2);
    assert_eq!(d.d2h_pages as usize, pages, "every page comes back");
    r.faults = d.cpu_faults;
    // Back again, by one prefetch to the host (spans pipelined, no faults).
    launch_touch(svm, &r.k, &mut v, tag + 1);
    let t = Instant::now();
    let moved = v.prefetch(Location::Host).wait().expect("prefetch to host");
    r.pf.push(secs(t.elapsed()));
    assert_eq!(moved as usize, pages, "every page comes back by prefetch");
    assert!((0..pages).all(|p| v[p * PAGE] == ((p as u32) ^ (tag + 1)) as u8), "prefetched data");
    ((migrate - resident).max(1e-9), d2h)
}

/// The paths side by side, rep by rep interleaved with the explicit
/// baselines (so that machine noise hits all of them alike). Returns the
/// results and the baselines' medians (write_buffer, readback) at `o.size`.
fn paths_side_by_side(o: &Opts) -> SideBySide {
    let mut runs = Vec::new();
    for path in PATHS {
        for backend in BACKENDS {
            let desc = path.descriptor(o, backend);
            let svm = match Svm::with_descriptor(&desc) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("SKIP path {} / {backend}: {e}", path.name());
                    continue;
                }
            };
            let k = svm
                .create_kernel(&KernelDescriptor { label: "touch_pages", source: TOUCH_PAGES, entry_point: "main" })
                .expect("kernel");
            runs.push(PathRun {
                path,
                backend,
                size: path.size(o),
                svm,
                k,
                h2d: vec![],
                d2h: vec![],
                pf: vec![],
                faults: 0,
            });
        }
    }
    let g = PlainGpu::new().expect("a plain wgpu device on the same adapter");
    use wgpu::BufferUsages as U;
    let src: Vec<u8> = (0..o.size).map(|i| (i >> 12) as u8).collect();
    let mut dst = vec![0u8; o.size];
    let buf = g.buffer("baseline", o.size, U::STORAGE | U::COPY_DST | U::COPY_SRC);
    let staging = g.buffer("baseline staging", o.size, U::MAP_READ | U::COPY_DST);
    g.upload(&buf, &src);
    g.readback(&buf, &staging, &mut dst);
    // One warm-up round each, not counted.
    for r in &mut runs {
        path_round(r, 0);
    }
    // The baselines at each size a path moves (a transfer's speed depends
    // on its size: the sparse paths move a quarter).
    let small = Path::Sparse.size(o);
    let (mut wb, mut rb, mut swb, mut srb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..o.reps {
        wb.push(secs(g.upload(&buf, &src)));
        rb.push(secs(g.readback(&buf, &staging, &mut dst)));
        swb.push(secs(g.upload(&buf, &src[..small])));
        srb.push(secs(g.readback(&buf, &staging, &mut dst[..small])));
        for r in &mut runs {
            let (h, d) = path_round(r, rep + 1);
            r.h2d.push(h);
            r.d2h.push(d);
        }
    }
    assert!(dst == src, "baseline readback returned wrong bytes");
    let results = runs
        .into_iter()
        .map(|mut r| PathResult {
            path: r.path,
            backend: r.backend,
            size: r.size,
            h2d_s: median(&mut r.h2d),
            d2h_s: median(&mut r.d2h),
            prefetch_s: median(&mut r.pf),
            faults: r.faults,
        })
        .collect();
    SideBySide {
        paths: results,
        size: o.size,
        write_buffer_s: median(&mut wb),
        readback_s: median(&mut rb),
        small_size: small,
        small_write_buffer_s: median(&mut swb),
        small_readback_s: median(&mut srb),
    }
}

/// The side-by-side figures and the baselines measured with them, at the
/// full size and at the sparse paths' size.
struct SideBySide {
    paths: Vec<PathResult>,
    size: usize,
    write_buffer_s: f64,
    readback_s: f64,
    small_size: usize,
    small_write_buffer_s: f64,
    small_readback_s: f64,
}

impl SideBySide {
    /// The baselines' (write_buffer, readback) GB/s for transfers of
    /// `bytes` (one of the two sizes measured).
    fn baseline_gbs(&self, bytes: usize) -> (f64, f64) {
        if bytes == self.small_size {
            (bytes as f64 / self.small_write_buffer_s * 1e-9, bytes as f64 / self.small_readback_s * 1e-9)
        } else {
            assert_eq!(bytes, self.size, "a baseline measured at the path's size");
            (bytes as f64 / self.write_buffer_s * 1e-9, bytes as f64 / self.readback_s * 1e-9)
        }
    }

    /// `(h2d / write_buffer, d2h / readback)` of a path, against the
    /// baselines at its size.
    fn ratios(&self, r: &PathResult) -> (f64, f64) {
        let (wb, rb) = self.baseline_gbs(r.size);
        ((r.size as f64 / r.h2d_s * 1e-9) / wb, (r.size as f64 / r.d2h_s * 1e-9) / rb)
    }

    /// d2h by prefetch to the host / readback, against the baseline at its size.
    fn prefetch_ratio(&self, r: &PathResult) -> f64 {
        (r.size as f64 / r.prefetch_s * 1e-9) / self.baseline_gbs(r.size).1
    }
}

/// Cost of the mechanism on `size` bytes: zap and restore of the whole range.
struct Mechanism {
    backend: FaultBackendKind,
    zap_s: f64,
    restore_s: f64,
}

fn mechanism(o: &Opts, backend: FaultBackendKind) -> Option<Mechanism> {
    let raw = RawArena::new(o.size, backend, PAGE).ok()?;
    let (mut z, mut r) = (vec![], vec![]);
    for _ in 0..o.reps {
        // Map every page in the user view first, as after the CPU wrote the
        // data: zapping unmapped pages would cost nothing.
        for off in (0..o.size).step_by(PAGE) {
            std::hint::black_box(raw.touch(off));
        }
        let t = Instant::now();
        raw.arena().zap(0, o.size).expect("zap");
        z.push(secs(t.elapsed()));
        let t = Instant::now();
        raw.arena().restore(0, o.size).expect("restore");
        r.push(secs(t.elapsed()));
    }
    Some(Mechanism { backend, zap_s: median(&mut z), restore_s: median(&mut r) })
}

struct Sweep {
    backend: FaultBackendKind,
    arena: usize,
    create_s: f64,
    resident_s: f64,
    after_cpu_write_s: f64,
    pt_bytes: u64,
    /// A replayable launch on the resident set (it maps what is resident).
    replayable_s: f64,
    /// A launch that evicts the set (a pool-sized filler) and one that
    /// evicts part of the filler for it, per launch.
    evicting_s: f64,
}

const SWEEP_SET: usize = MIB;

fn sweep(o: &Opts, backend: FaultBackendKind, arena: usize) -> Option<Sweep> {
    let t = Instant::now();
    let svm = Svm::with_descriptor(
        &SvmDescriptor::default().arena_size(arena).pool_size(16 * MIB as u64).fault_backend(backend),
    )
    .map_err(|e| eprintln!("SKIP sweep {backend} {}: {e}", size_name(arena)))
    .ok()?;
    let create_s = secs(t.elapsed());
    let k = svm
        .create_kernel(&KernelDescriptor { label: "touch_pages", source: TOUCH_PAGES, entry_point: "main" })
        .expect("kernel");
    let mut v = svm.alloc_vec::<u8>(SWEEP_SET).expect("alloc");
    v.fill(1);
    launch_touch(&svm, &k, &mut v, 0);
    let (mut res, mut cyc) = (vec![], vec![]);
    let s0 = svm.stats();
    for i in 0..o.launches {
        let t = Instant::now();
        launch_touch(&svm, &k, &mut v, i as u32);
        res.push(secs(t.elapsed()));
    }
    let pt_bytes = svm.stats().since(&s0).pt_upload_bytes / o.launches as u64;
    for i in 0..o.launches {
        for p in (0..SWEEP_SET).step_by(PAGE) {
            v[p] = 2; // faults the working set back to the host
        }
        let t = Instant::now();
        launch_touch(&svm, &k, &mut v, i as u32);
        cyc.push(secs(t.elapsed()));
    }
    let mut rep = vec![];
    let replayable = svm::LaunchOptions::replayable();
    launch_touch_with(&svm, &k, &mut v, 0, &replayable);
    for i in 0..o.launches {
        let t = Instant::now();
        launch_touch_with(&svm, &k, &mut v, i as u32, &replayable);
        rep.push(secs(t.elapsed()));
    }
    // Eviction: a filler the size of the pool pushes the set out and back.
    let mut filler = svm.alloc_vec::<u8>(16 * MIB).expect("filler");
    let mut ev = vec![];
    for i in 0..o.launches {
        let t = Instant::now();
        launch_touch(&svm, &k, &mut filler, i as u32);
        launch_touch(&svm, &k, &mut v, i as u32);
        ev.push(secs(t.elapsed()) / 2.0);
    }
    Some(Sweep {
        backend,
        arena,
        create_s,
        resident_s: median(&mut res),
        after_cpu_write_s: median(&mut cyc),
        pt_bytes,
        replayable_s: median(&mut rep),
        evicting_s: median(&mut ev),
    })
}

fn main() {
    let o = Opts::parse();
    let started = Instant::now();
    let probe = match Svm::with_descriptor(&SvmDescriptor::default().arena_size(8 * MIB).pool_size(8 * MIB as u64)) {
        Ok(s) => s,
        Err(e) => {
            assert!(!gpu_required(), "SVM_REQUIRE_GPU=1 but no runtime: {e}");
            println!("SKIP: migration benchmarks need a GPU adapter: {e}");
            return;
        }
    };
    let device = probe.device_info().to_string();
    drop(probe);
    let machine = machine();
    eprintln!("machine: {machine}\ndevice: {device}\nsize: {}, reps: {}", size_name(o.size), o.reps);

    let base = baselines(&o).expect("a plain wgpu device on the same adapter");
    eprintln!(
        "baselines: memcpy {:.2} GB/s, write_buffer {:.2} GB/s, readback {:.2} GB/s",
        o.size as f64 / base.memcpy_s * 1e-9,
        o.size as f64 / base.write_buffer_s * 1e-9,
        o.size as f64 / base.readback_s * 1e-9
    );
    let t = Instant::now();
    let side = paths_side_by_side(&o);
    for r in &side.paths {
        let (h, d) = side.ratios(r);
        eprintln!(
            "path {} / {} ({}): h2d {h:.2}x write_buffer, d2h {d:.2}x readback, prefetch to host {:.2}x readback",
            r.path.name(),
            r.backend,
            size_name(r.size),
            side.prefetch_ratio(r)
        );
    }
    eprintln!("paths side by side: {:.1} s", secs(t.elapsed()));
    if std::env::args().any(|a| a == "--paths-only") {
        // For iterating on one path: the side-by-side rows only, no files.
        return;
    }
    let mech: Vec<Mechanism> = BACKENDS.iter().filter_map(|&b| mechanism(&o, b)).collect();
    let mut configs = Vec::new();
    for &b in &BACKENDS {
        for &(c, pf) in &CONFIGS {
            let t = Instant::now();
            if let Some(r) = measure_config(&o, b, c, pf) {
                eprintln!(
                    "{b}/{}: h2d {:.2} GB/s, d2h {:.2} GB/s, fault {:.1} us (raw {:.1} us) [{:.1} s]",
                    config_name(c, pf),
                    o.size as f64 / r.h2d_net_s() * 1e-9,
                    o.size as f64 / r.d2h_s * 1e-9,
                    r.fault.median * 1e6,
                    r.raw.median * 1e6,
                    secs(t.elapsed())
                );
                configs.push(r);
            }
        }
    }
    let mut sweeps = Vec::new();
    for &b in &BACKENDS {
        for &a in &o.arenas {
            if let Some(s) = sweep(&o, b, a) {
                eprintln!("sweep {b} {}: resident launch {:.2} ms", size_name(a), s.resident_s * 1e3);
                sweeps.push(s);
            }
        }
    }
    let total = secs(started.elapsed());

    let md = report_md(&o, &machine, &device, &base, &side, &mech, &configs, &sweeps, total);
    println!("{md}");
    std::fs::create_dir_all(&o.out).expect("create results dir");
    std::fs::write(o.out.join("migration.md"), &md).expect("write migration.md");
    std::fs::write(o.out.join("migration.csv"), report_csv(&o, &base, &side, &mech, &configs, &sweeps))
        .expect("write migration.csv");
    if let Err(e) = plot(&o, &base, &configs, &o.out.join("migration.svg")) {
        eprintln!("plot failed: {e}");
    }
    eprintln!("wrote {}/migration.{{md,csv,svg}} in {total:.0} s", o.out.display());
}

#[allow(clippy::too_many_arguments, reason = "one report of everything measured")]
fn report_md(
    o: &Opts,
    machine: &str,
    device: &str,
    b: &Baselines,
    side: &SideBySide,
    mech: &[Mechanism],
    cfgs: &[Config],
    sweeps: &[Sweep],
    total: f64,
) -> String {
    let gb = |s: f64| o.size as f64 / s * 1e-9;
    let mut m = String::new();
    let _ = writeln!(m, "### Migration benchmarks{}\n", if o.quick { " (quick run)" } else { "" });
    let _ = writeln!(m, "- command: `{}`", o.command());
    let _ = writeln!(m, "- source: {}", common::git_describe());
    let _ = writeln!(m, "- machine: {machine}");
    let _ = writeln!(m, "- runtime device: {device}");
    let _ = writeln!(m, "- baseline device: {}", b.adapter);
    let _ = writeln!(
        m,
        "- {} moved per throughput figure, medians of {} repetitions; whole run {:.0} s\n",
        size_name(o.size),
        o.reps,
        total
    );
    let _ = writeln!(m, "Explicit baselines ({}):\n", size_name(o.size));
    let _ = writeln!(m, "| copy | ms | GB/s |\n|---|---:|---:|");
    let _ = writeln!(m, "| memcpy (host → host, machine limit) | {} | {:.2} |", ms(b.memcpy_s), gb(b.memcpy_s));
    let _ = writeln!(
        m,
        "| `queue.write_buffer` + submit + wait | {} | {:.2} |",
        ms(b.write_buffer_s),
        gb(b.write_buffer_s)
    );
    let _ = writeln!(
        m,
        "| readback: copy to MAP_READ staging + map_async + memcpy out | {} | {:.2} |\n",
        ms(b.readback_s),
        gb(b.readback_s)
    );
    let _ = writeln!(
        m,
        "Migration paths side by side (issue 15: default fault policy, 64 KiB chunks + prefetch; every rep runs \
         each path and the explicit baselines in turn, medians of {}; baselines in this interleaved run: \
         write_buffer {:.2} GB/s, readback {:.2} GB/s at {}, {:.2} and {:.2} GB/s at {}; each path's ratios are \
         against the baselines at the size it moves; targets on the staged paths: h2d ≥ 0.9× write_buffer, \
         d2h ≥ 0.8× readback):\n",
        o.reps,
        gb(side.write_buffer_s),
        gb(side.readback_s),
        size_name(side.size),
        side.baseline_gbs(side.small_size).0,
        side.baseline_gbs(side.small_size).1,
        size_name(side.small_size)
    );
    let _ = writeln!(
        m,
        "| path | backend | bytes | h2d at launch GB/s | h2d / write_buffer | d2h by CPU faults GB/s | d2h / readback | faults | d2h by prefetch to host GB/s | prefetch / readback |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &side.paths {
        let (h, d) = (r.size as f64 / r.h2d_s * 1e-9, r.size as f64 / r.d2h_s * 1e-9);
        let (hr, dr) = side.ratios(r);
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.2} | {:.2}× | {:.2} | {:.2}× | {} | {:.2} | {:.2}× |",
            r.path.name(),
            r.backend,
            size_name(r.size),
            h,
            hr,
            d,
            dr,
            r.faults,
            r.size as f64 / r.prefetch_s * 1e-9,
            side.prefetch_ratio(r)
        );
    }
    let _ = writeln!(
        m,
        "\nThe sparse runtimes move a quarter of the bytes (and are compared with the baselines moving as much): \
         lavapipe maps each page of a sparse buffer on its own (one VMA a page, `vm.max_map_count` 65530). On lavapipe the \"device\" copies are CPU copies too \
         (its queue thread), so the staged path's pipelining overlaps two CPU copies.\n"
    );
    let _ = writeln!(m, "Fault chunk and prefetch configurations on the runtime's default path ({}), against the baselines above (ratios > 1 are faster than the explicit path):\n", if device.contains("Cpu") { "the host-mapped pool here" } else { "staged" });
    let _ = writeln!(
        m,
        "| backend | chunk | h2d GB/s | h2d / write_buffer | d2h GB/s | d2h / readback | d2h / memcpy | faults | µs / fault in the d2h loop | 1 fault µs, one vCPU: median / p90 | raw fault µs, one vCPU: median / p90 | fault / raw (medians) |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in cfgs {
        let _ = writeln!(
            m,
            "| {} | {} | {:.2} | {:.2}× | {:.2} | {:.2}× | {:.2}× | {} | {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1}× |",
            c.backend,
            config_name(c.chunk, c.prefetch),
            gb(c.h2d_net_s()),
            b.write_buffer_s / c.h2d_net_s(),
            gb(c.d2h_s),
            b.readback_s / c.d2h_s,
            b.memcpy_s / c.d2h_s,
            c.faults,
            c.d2h_s / c.faults.max(1) as f64 * 1e6,
            c.fault.median * 1e6,
            c.fault.p90 * 1e6,
            c.raw.median * 1e6,
            c.raw.p90 * 1e6,
            c.fault.median / c.raw.median
        );
    }
    let _ = writeln!(m, "\nWhere the time goes (ms for {}, medians):\n", size_name(o.size));
    let _ = writeln!(
        m,
        "| backend | chunk | launch, pages on host | launch, pages resident | of which h2d_ns (zap + staging copy) | kernel_ns of migrating launch | d2h by faults | of which d2h_ns (copy + map + write) | per fault µs outside d2h_ns |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in cfgs {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            c.backend,
            config_name(c.chunk, c.prefetch),
            ms(c.launch_migrate_s),
            ms(c.launch_resident_s),
            ms(c.h2d_stats_s),
            ms(c.kernel_migrate_s),
            ms(c.d2h_s),
            ms(c.d2h_stats_s),
            (c.d2h_s - c.d2h_stats_s) / c.faults.max(1) as f64 * 1e6
        );
    }
    let _ = writeln!(
        m,
        "\nRaw mechanism on {} (svm_migrate::Arena, no device; zap of pages mapped in the user view):\n",
        size_name(o.size)
    );
    let _ = writeln!(m, "| backend | zap ms | restore ms |\n|---|---:|---:|");
    for x in mech {
        let _ = writeln!(m, "| {} | {} | {} |", x.backend, ms(x.zap_s), ms(x.restore_s));
    }
    let _ = writeln!(
        m,
        "\nLaunch overhead against arena size (working set {} read_write, pool 16 MiB, medians of {} launches):\n",
        size_name(SWEEP_SET),
        o.launches
    );
    let _ = writeln!(
        m,
        "| backend | arena | create ms | launch, resident ms | launch after CPU wrote the set ms | page-table bytes / launch | replayable launch, resident ms | evicting launch ms (pool-sized filler and the set in turn) |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|");
    for s in sweeps {
        let _ = writeln!(
            m,
            "| {} | {} | {:.1} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
            s.backend,
            size_name(s.arena),
            s.create_s * 1e3,
            s.resident_s * 1e3,
            s.after_cpu_write_s * 1e3,
            s.pt_bytes,
            s.replayable_s * 1e3,
            s.evicting_s * 1e3
        );
    }
    m
}

fn report_csv(
    o: &Opts,
    b: &Baselines,
    side: &SideBySide,
    mech: &[Mechanism],
    cfgs: &[Config],
    sweeps: &[Sweep],
) -> String {
    let mut s = String::from("section,backend,chunk_bytes,arena_bytes,metric,value,unit\n");
    let mut row = |sec: &str, be: &str, chunk: usize, arena: usize, metric: &str, v: f64, unit: &str| {
        let _ = writeln!(s, "{sec},{be},{chunk},{arena},{metric},{v},{unit}");
    };
    let bytes = o.size as f64;
    row("baseline", "", 0, 0, "memcpy", bytes / b.memcpy_s * 1e-9, "GB/s");
    row("baseline", "", 0, 0, "write_buffer", bytes / b.write_buffer_s * 1e-9, "GB/s");
    row("baseline", "", 0, 0, "readback", bytes / b.readback_s * 1e-9, "GB/s");
    row("paths", "", 0, 0, "write_buffer", bytes / side.write_buffer_s * 1e-9, "GB/s");
    row("paths", "", 0, 0, "readback", bytes / side.readback_s * 1e-9, "GB/s");
    let (swb, srb) = side.baseline_gbs(side.small_size);
    row("paths_small", "", 0, 0, "bytes", side.small_size as f64, "bytes");
    row("paths_small", "", 0, 0, "write_buffer", swb, "GB/s");
    row("paths_small", "", 0, 0, "readback", srb, "GB/s");
    for r in &side.paths {
        let sec = match r.path {
            Path::HostMapped => "path_host_mapped",
            Path::Staged => "path_staged",
            Path::Sparse => "path_sparse",
            Path::SparseHostMapped => "path_sparse_host_mapped",
        };
        let (h, d) = (r.size as f64 / r.h2d_s * 1e-9, r.size as f64 / r.d2h_s * 1e-9);
        let (hr, dr) = side.ratios(r);
        let be = r.backend.name();
        row(sec, be, 64 << 10, 0, "bytes", r.size as f64, "bytes");
        row(sec, be, 64 << 10, 0, "h2d", h, "GB/s");
        row(sec, be, 64 << 10, 0, "h2d_vs_write_buffer", hr, "ratio");
        row(sec, be, 64 << 10, 0, "d2h", d, "GB/s");
        row(sec, be, 64 << 10, 0, "d2h_vs_readback", dr, "ratio");
        row(sec, be, 64 << 10, 0, "cpu_faults", r.faults as f64, "count");
        row(sec, be, 64 << 10, 0, "d2h_prefetch", r.size as f64 / r.prefetch_s * 1e-9, "GB/s");
        row(sec, be, 64 << 10, 0, "d2h_prefetch_vs_readback", side.prefetch_ratio(r), "ratio");
    }
    for x in mech {
        row("mechanism", x.backend.name(), 0, 0, "zap", x.zap_s * 1e3, "ms");
        row("mechanism", x.backend.name(), 0, 0, "restore", x.restore_s * 1e3, "ms");
    }
    for c in cfgs {
        let be = c.backend.name();
        // Without the tree prefetcher: "config"; with it: "config_prefetch".
        let sec = if c.prefetch { "config_prefetch" } else { "config" };
        row(sec, be, c.chunk, 0, "h2d", bytes / c.h2d_net_s() * 1e-9, "GB/s");
        row(sec, be, c.chunk, 0, "h2d_vs_write_buffer", b.write_buffer_s / c.h2d_net_s(), "ratio");
        row(sec, be, c.chunk, 0, "d2h", bytes / c.d2h_s * 1e-9, "GB/s");
        row(sec, be, c.chunk, 0, "d2h_vs_readback", b.readback_s / c.d2h_s, "ratio");
        row(sec, be, c.chunk, 0, "d2h_vs_memcpy", b.memcpy_s / c.d2h_s, "ratio");
        row(sec, be, c.chunk, 0, "launch_migrate", c.launch_migrate_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "launch_resident", c.launch_resident_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "h2d_ns", c.h2d_stats_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "kernel_ns_migrate", c.kernel_migrate_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "d2h_wall", c.d2h_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "d2h_ns", c.d2h_stats_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "cpu_faults", c.faults as f64, "count");
        row(sec, be, c.chunk, 0, "fault_median", c.fault.median * 1e6, "us");
        row(sec, be, c.chunk, 0, "fault_p90", c.fault.p90 * 1e6, "us");
        row(sec, be, c.chunk, 0, "fault_mean", c.fault.mean * 1e6, "us");
        row(sec, be, c.chunk, 0, "raw_fault_median", c.raw.median * 1e6, "us");
        row(sec, be, c.chunk, 0, "raw_fault_p90", c.raw.p90 * 1e6, "us");
        row(sec, be, c.chunk, 0, "raw_fault_mean", c.raw.mean * 1e6, "us");
        row(sec, be, c.chunk, 0, "fault_vs_raw", c.fault.median / c.raw.median, "ratio");
    }
    for w in sweeps {
        let be = w.backend.name();
        row("sweep", be, 0, w.arena, "create", w.create_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "launch_resident", w.resident_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "launch_after_cpu_write", w.after_cpu_write_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "pt_upload_bytes", w.pt_bytes as f64, "bytes");
        row("sweep", be, 0, w.arena, "launch_replayable_resident", w.replayable_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "launch_evicting", w.evicting_s * 1e3, "ms");
    }
    s
}

fn plot(o: &Opts, b: &Baselines, cfgs: &[Config], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    if cfgs.is_empty() {
        return Ok(());
    }
    let gb = |s: f64| o.size as f64 / s * 1e-9;
    let labels: Vec<String> = cfgs
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                if c.backend == FaultBackendKind::Uffd { "uffd" } else { "mprot" },
                config_name(c.chunk, c.prefetch)
            )
        })
        .collect();
    let n = cfgs.len() as u32;
    let root = SVGBackend::new(path, (1950, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "svm migration, {} ({} reps, medians) — bars: runtime; lines: explicit wgpu copies",
            size_name(o.size),
            o.reps
        ),
        ("sans-serif", 18),
    )?;
    let panels = root.split_evenly((1, 3));
    let colors = |c: &Config| if c.backend == FaultBackendKind::Uffd { BLUE } else { GREEN };

    // Throughput panels: (title, runtime values, reference lines).
    let h2d: Vec<f64> = cfgs.iter().map(|c| gb(c.h2d_net_s())).collect();
    let d2h: Vec<f64> = cfgs.iter().map(|c| gb(c.d2h_s)).collect();
    let fault: Vec<f64> = cfgs.iter().map(|c| c.fault.median * 1e6).collect();
    let raw: Vec<f64> = cfgs.iter().map(|c| c.raw.median * 1e6).collect();
    type Panel<'a> = (&'a str, &'a str, &'a Vec<f64>, Vec<(String, f64, RGBColor)>);
    let panel_specs: [Panel<'_>; 3] = [
        ("host → device at launch", "GB/s", &h2d, vec![("write_buffer".into(), gb(b.write_buffer_s), RED)]),
        (
            "device → host by CPU faults",
            "GB/s",
            &d2h,
            vec![("readback".into(), gb(b.readback_s), RED), ("memcpy".into(), gb(b.memcpy_s), BLACK)],
        ),
        ("one CPU fault (one chunk), median", "µs", &fault, vec![]),
    ];
    for (i, (panel, (title, unit, vals, refs))) in panels.iter().zip(panel_specs.iter()).enumerate() {
        let mut ymax = vals.iter().copied().fold(0.0f64, f64::max);
        for r in refs {
            ymax = ymax.max(r.1);
        }
        if i == 2 {
            ymax = ymax.max(raw.iter().copied().filter(|x| x.is_finite()).fold(0.0, f64::max));
        }
        let ymax = (ymax * 1.15).max(1e-6);
        let mut chart = common::bar_axes(panel, (title, 16), &labels, unit, ymax)?;
        chart.draw_series(vals.iter().zip(cfgs).enumerate().map(|(k, (v, c))| {
            let k = k as u32;
            let mut r = Rectangle::new(
                [(SegmentValue::Exact(k), 0.0), (SegmentValue::Exact(k + 1), *v)],
                colors(c).mix(0.7).filled(),
            );
            r.set_margin(0, 0, 6, 6);
            r
        }))?;
        for (name, y, color) in refs {
            let color = *color;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(SegmentValue::Exact(0), *y), (SegmentValue::Exact(n), *y)],
                    color.stroke_width(2),
                )))?
                .label(format!("{name} {y:.2} {unit}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        if i == 2 {
            chart
                .draw_series(raw.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(k, v)| {
                    let k = k as u32;
                    PathElement::new(
                        vec![(SegmentValue::Exact(k), *v), (SegmentValue::Exact(k + 1), *v)],
                        RED.stroke_width(3),
                    )
                }))?
                .label("raw mechanism, same backend & chunk")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
