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

#[path = "../common/mod.rs"]
mod common;
mod paths;
mod report;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use paths::*;
use report::*;
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

/// Cost of the mechanism on `size` bytes: zap and restore of the whole range.
struct Mechanism {
    backend: FaultBackendKind,
    zap_s: f64,
    restore_s: f64,
    /// Per 2 MiB span, as a CPU fault moves it back: zap, then (after the
    /// span's bytes were written through the alias view, as the copy back
    /// does) restore; medians, s.
    span_zap_s: f64,
    span_restore_s: f64,
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
    // Span by span, the host copy written between zap and restore.
    let span = 2 * MIB;
    let bytes = vec![7u8; span];
    let (mut sz, mut sr) = (vec![], vec![]);
    for off in (0..o.size).step_by(span) {
        // Every page of the span mapped first, as after the CPU wrote it.
        for p in (off..off + span).step_by(PAGE) {
            std::hint::black_box(raw.touch(p));
        }
        let t = Instant::now();
        raw.arena().zap(off, span).expect("zap");
        sz.push(secs(t.elapsed()));
        // SAFETY: the span is zapped from the user view (no access until
        // the restore below) and nothing else uses this arena.
        unsafe { raw.arena().write_host(off, &bytes) };
        let t = Instant::now();
        raw.arena().restore(off, span).expect("restore");
        sr.push(secs(t.elapsed()));
    }
    Some(Mechanism {
        backend,
        zap_s: median(&mut z),
        restore_s: median(&mut r),
        span_zap_s: median(&mut sz),
        span_restore_s: median(&mut sr),
    })
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
