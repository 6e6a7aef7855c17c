//! What other threads pay while a launch migrates its data (issue 14).
//!
//! A launch on a second thread declares a vector X the CPU owns (256 MiB;
//! 64 MiB in the sparse mode, as in the migration bench) read-only and
//! runs a kernel that writes one word of a page of its own: the launch is almost all host → device
//! migration of X. Meanwhile the main thread repeats one operation that
//! has nothing to do with X, one every millisecond, until the launch
//! returns, and times each:
//!
//! - **alloc + free**: `svm.alloc(4096)` then `svm.free` of it;
//! - **fault**: a read of one word of a vector B whose pages the device
//!   owns, each read on a 2 MiB block of its own (a first, non-sequential
//!   CPU fault: its 64 KiB chunk migrates back).
//!
//! The figure that matters is the *longest* operation during the launch:
//! an operation that waits for the launch's migration takes about as long
//! as the migration (the runtime holding its lock across the copies), one
//! that does not costs what it costs idle. The idle figures are the same
//! operations with no launch running, interleaved with the others.
//!
//! The same with `svm.prefetch(X, Device)` migrating X instead of a
//! launch (its handle waited on the second thread), and with a replayable
//! launch that reads every page of X through pointers without declaring
//! it: its first pass faults, its replay migrates X.
//!
//! Every migrating path and both fault backends, side by side: the
//! host-mapped pool (lavapipe's default), the staged pool (a discrete
//! GPU's path), the sparse mode host-mapped and staged. The coherent mode
//! migrates nothing (no row).
//!
//! ```text
//! cargo bench -p svm-benches --bench during_migration
//! cargo bench -p svm-benches --bench during_migration -- --quick   # results/quick/
//! ```

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{gpu_required, machine, median, ModePath as Path};
use svm::{
    Access, Arg, Binding, FaultBackendKind, Kernel, KernelDescriptor, LaunchDescriptor, LaunchOptions, Location,
    ManagedVec, MappingMode, Svm, SvmDescriptor,
};

const MIB: usize = 1 << 20;
/// u32 words per 4 KiB page.
const PAGE_WORDS: usize = 1024;
/// u32 words per 2 MiB block of B (one fault per block).
const BLOCK_WORDS: usize = 512 * PAGE_WORDS;
const BACKENDS: [FaultBackendKind; 2] = [FaultBackendKind::Uffd, FaultBackendKind::Mprotect];

/// Writes one word of Y; the launch declares X read-only (larger than a
/// binding may be), so its cost is making X resident.
const TOUCH: &str = "@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@compute @workgroup_size(1)
fn main() { y[0] = y[0] + 1u; }";

/// Reads one word of every page of X through pointers, X not declared: a
/// replayable launch's first pass faults on every page, and its replay
/// migrates X (args: X at words 0-1, X's pages at 2, Y at 3-4).
const READER: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let x = svm_arg_ptr(0u);
    let pages = svm_arg_u32(2u);
    let y = svm_arg_ptr(3u);
    var s = 0u;
    for (var i = g.x; i < pages; i += nwg.x * 64u) { s += svm_load_u32(svm_index(x, i * 1024u, 4u)); }
    if (s == 0xffffffffu) { svm_store_u32(y, s); }
}";

/// Writes the first word of every 2 MiB block of B (bound read-write:
/// every page of B becomes device-owned).
const WRITER: &str = "@group(0) @binding(0) var<storage, read_write> b: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x * 1024u;
    if (i < arrayLength(&b)) { b[i] = g.x ^ 0x5a5a0000u; }
}";

const PATHS: [Path; 4] = common::MIGRATING_PATHS;

struct Opts {
    quick: bool,
    /// Launches per operation kind and path.
    rounds: usize,
    /// Blocks of B: the most faults one launch can see.
    blocks: usize,
    /// Between two operations during a launch.
    gap: Duration,
    out: PathBuf,
}

impl Opts {
    fn parse() -> Self {
        let quick = common::quick();
        Self {
            quick,
            rounds: if quick { 2 } else { 5 },
            blocks: 64,
            gap: Duration::from_millis(1),
            out: common::out_dir(quick),
        }
    }

    fn command(&self) -> &'static str {
        if self.quick {
            "cargo bench -p svm-benches --bench during_migration -- --quick"
        } else {
            "cargo bench -p svm-benches --bench during_migration"
        }
    }
}

struct Ctx {
    svm: Svm,
    touch: Kernel,
    reader: Kernel,
    writer: Kernel,
    x: ManagedVec<u32>,
    y: ManagedVec<u32>,
    b: ManagedVec<u32>,
}

impl Ctx {
    fn new(o: &Opts, path: Path, backend: FaultBackendKind) -> Result<Self, svm::SvmError> {
        let x_bytes = if path.mode == MappingMode::Sparse { 64 * MIB } else { 256 * MIB };
        let b_bytes = o.blocks * 2 * MIB;
        let desc = SvmDescriptor::default()
            .arena_size((x_bytes + b_bytes + 64 * MIB).next_power_of_two())
            .pool_size((x_bytes + b_bytes + 32 * MIB) as u64)
            .mapping(path.mode)
            .host_mapped_pool(path.host_mapped_pool)
            .fault_backend(backend);
        let svm = Svm::with_descriptor(&desc)?;
        let kernel = |label, source| {
            svm.create_kernel(&KernelDescriptor { label, source, entry_point: "main" }).expect("kernel compiles")
        };
        let (touch, reader, writer) = (kernel("touch", TOUCH), kernel("reader", READER), kernel("writer", WRITER));
        let x = svm.alloc_from_iter((0..x_bytes / 4).map(|i| i as u32)).expect("X");
        let y = svm.alloc_vec::<u32>(PAGE_WORDS).expect("Y");
        let b = svm.alloc_vec::<u32>(b_bytes / 4).expect("B");
        Ok(Self { svm, touch, reader, writer, x, y, b })
    }

    /// Every page of B device-owned again (the faults brought some back).
    fn reset_b(&mut self) {
        let pages = self.b.len() / PAGE_WORDS;
        self.svm
            .launch(
                &self.writer,
                &LaunchDescriptor {
                    bindings: &[Binding::read_write(&mut self.b)],
                    workgroups: [u32::try_from(pages.div_ceil(64)).expect("small"), 1, 1],
                    ..Default::default()
                },
            )
            .expect("writer launch");
    }

    /// The launch (or prefetch) that migrates X; returns its time and its
    /// h2d time, ms.
    fn migrate(svm: &Svm, bg: Bg, k: (&Kernel, &Kernel), x: &ManagedVec<u32>, y: &mut ManagedVec<u32>) -> (f64, f64) {
        let (touch, reader) = k;
        let s0 = svm.stats();
        let t = Instant::now();
        match bg {
            Bg::Replay => {
                let pages = u32::try_from(x.len() / PAGE_WORDS).expect("small");
                let args = [Arg::ptr(x.as_ptr()), Arg::U32(pages), Arg::ptr(y.as_ptr())];
                let report = svm
                    .launch_with(
                        reader,
                        &LaunchDescriptor {
                            args: &args,
                            access: &[Access::read_write(y)],
                            workgroups: [4, 1, 1],
                            ..Default::default()
                        },
                        &LaunchOptions::replayable(),
                    )
                    .expect("reader launch");
                assert!(report.replays >= 1, "X was not declared: the first pass faults");
            }
            Bg::Launch => svm
                .launch(
                    touch,
                    &LaunchDescriptor {
                        bindings: &[Binding::read_write(y)],
                        access: &[Access::read(x)],
                        workgroups: [1, 1, 1],
                        ..Default::default()
                    },
                )
                .expect("touch launch"),
            Bg::Prefetch => {
                svm.prefetch(x.as_ptr().cast(), x.len() * 4, Location::Device).wait().expect("prefetch X");
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let d = svm.stats().since(&s0);
        assert!(d.h2d_pages as usize >= x.len() / PAGE_WORDS, "X migrated");
        (ms, d.h2d_ns as f64 / 1e6)
    }
}

/// What migrates X on the second thread.
#[derive(Clone, Copy, PartialEq)]
enum Bg {
    /// A launch declaring X read-only (its copy is dropped after).
    Launch,
    /// `svm.prefetch(X, Device)` (X is brought back before the next one).
    Prefetch,
    /// A replayable launch reading every page of X, not declared: its
    /// replay migrates X (read-only copies, dropped after).
    Replay,
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    AllocFree,
    Fault,
}

/// One operation; `block` is B's next block for a fault.
fn op(svm: &Svm, b: &ManagedVec<u32>, kind: Op, block: &mut usize) -> f64 {
    let t = Instant::now();
    match kind {
        Op::AllocFree => {
            let p = svm.alloc(4096).expect("alloc");
            svm.free(p.as_ptr()).expect("free");
        }
        Op::Fault => {
            let i = *block * BLOCK_WORDS;
            let v = std::hint::black_box(b[i]);
            assert_eq!(v, (i / PAGE_WORDS) as u32 ^ 0x5a5a_0000, "B read back wrong");
            *block += 1;
        }
    }
    t.elapsed().as_secs_f64() * 1e3
}

#[derive(Default)]
struct Samples {
    idle: Vec<f64>,
    during: Vec<f64>,
    /// The longest operation of each launch.
    worst: Vec<f64>,
}

struct Row {
    launch_ms: Vec<f64>,
    h2d_ms: Vec<f64>,
    ops: [Samples; 2],
}

fn run(o: &Opts, ctx: &mut Ctx, bg: Bg) -> Row {
    let mut row = Row { launch_ms: Vec::new(), h2d_ms: Vec::new(), ops: Default::default() };
    // X on the host (the previous variant may have prefetched it); then
    // compile, Y resident.
    ctx.svm.prefetch(ctx.x.as_ptr().cast(), ctx.x.len() * 4, Location::Host).wait().expect("X back");
    Ctx::migrate(&ctx.svm, Bg::Launch, (&ctx.touch, &ctx.reader), &ctx.x, &mut ctx.y);
    for _ in 0..o.rounds {
        for (k, kind) in [Op::AllocFree, Op::Fault].into_iter().enumerate() {
            if bg == Bg::Prefetch {
                ctx.svm.prefetch(ctx.x.as_ptr().cast(), ctx.x.len() * 4, Location::Host).wait().expect("X back");
            }
            ctx.reset_b();
            let mut block = 0;
            for _ in 0..3 {
                let ms = op(&ctx.svm, &ctx.b, kind, &mut block);
                row.ops[k].idle.push(ms);
            }
            let Ctx { svm, touch, reader, x, y, b, .. } = &mut *ctx;
            let (svm, kernels, x, b) = (&*svm, (&*touch, &*reader), &*x, &*b);
            let go = Barrier::new(2);
            let (launched, ops) = std::thread::scope(|s| {
                let launcher = s.spawn(|| {
                    go.wait();
                    Ctx::migrate(svm, bg, kernels, x, y)
                });
                go.wait();
                let mut ops = Vec::new();
                while !launcher.is_finished() && block < o.blocks {
                    ops.push(op(svm, b, kind, &mut block));
                    std::thread::sleep(o.gap);
                }
                (launcher.join().expect("launcher"), ops)
            });
            row.launch_ms.push(launched.0);
            row.h2d_ms.push(launched.1);
            let s = &mut row.ops[k];
            s.worst.push(ops.iter().copied().fold(0.0, f64::max));
            s.during.extend(ops);
        }
    }
    row
}

fn main() {
    let o = Opts::parse();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut device = None;
    for path in PATHS {
        for backend in BACKENDS {
            let t = Instant::now();
            let r = Ctx::new(&o, path, backend).map(|mut ctx| {
                device.get_or_insert_with(|| ctx.svm.device_info().to_string());
                let in_use = ctx.svm.fault_backend();
                let rows = [Bg::Launch, Bg::Prefetch, Bg::Replay].map(|bg| run(&o, &mut ctx, bg));
                (in_use, ctx.svm.pool_is_host_mapped(), rows)
            });
            if let Err(e) = &r {
                assert!(!gpu_required() || path.mode == MappingMode::Sparse, "SVM_REQUIRE_GPU=1 but no runtime: {e}");
            }
            eprintln!("{} / {backend}: {:.1} s", path.name, t.elapsed().as_secs_f64());
            rows.push((path, backend, r.map_err(|e| e.to_string())));
        }
    }
    let Some(device) = device else {
        println!("SKIP: the during_migration bench needs a GPU adapter");
        return;
    };
    let total = started.elapsed().as_secs_f64();
    let mut m = String::new();
    let _ = writeln!(
        m,
        "### Other threads' operations while a launch migrates its data{}\n",
        if o.quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(m, "- command: `{}`", o.command());
    let _ = writeln!(m, "- source: {}", common::git_describe());
    let _ = writeln!(m, "- machine: {}", machine());
    let _ = writeln!(m, "- device: {device}");
    let _ = writeln!(
        m,
        "- a launch on a second thread declares X read-only (256 MiB; sparse 64 MiB) and writes one word of a page of its own: it is \
         almost all host → device migration (and, in the second row of each path, a prefetch of X to the device; in the third, a replayable launch whose pointer kernel reads a word of every page of X undeclared, migrated by its replay); the main thread repeats one operation every {} ms until the launch \
         returns (faults: at most {} a launch); {} launches per operation and path, operations interleaved; \
         idle: 3 of each operation before each launch; whole run {total:.0} s\n",
        o.gap.as_millis(),
        o.blocks,
        o.rounds
    );
    let _ = writeln!(
        m,
        "| path | backend | migrated by | its time ms | its h2d ms | alloc+free idle ms | during: median / longest ms | fault idle ms | during: median / longest ms | ops during one |"
    );
    let _ = writeln!(m, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (path, asked, r) in &mut rows {
        match r {
            Err(e) => {
                let _ = writeln!(m, "| {} | {asked} | unavailable: {e} | | | | | | | |", path.name);
            }
            Ok((backend, host_mapped, by_bg)) => {
                let name = if path.mode == MappingMode::Software && *host_mapped != path.host_mapped_pool {
                    format!("{} (pool host-mapped: {host_mapped})", path.name)
                } else {
                    path.name.to_string()
                };
                for (bg, row) in ["a launch", "a prefetch", "a replay"].into_iter().zip(by_bg.iter_mut()) {
                    let [a, f] = &mut row.ops;
                    let n = (a.during.len() + f.during.len()) as f64 / (2 * o.rounds) as f64;
                    let _ = writeln!(
                        m,
                        "| {name} | {backend} | {bg} | {:.1} | {:.1} | {:.4} | {:.4} / {:.2} | {:.3} | {:.3} / {:.2} | {n:.0} |",
                        median(&mut row.launch_ms),
                        median(&mut row.h2d_ms),
                        median(&mut a.idle),
                        median(&mut a.during),
                        a.worst.iter().copied().fold(0.0, f64::max),
                        median(&mut f.idle),
                        median(&mut f.during),
                        f.worst.iter().copied().fold(0.0, f64::max),
                    );
                }
            }
        }
    }
    let _ = writeln!(
        m,
        "\nmigrated by: a launch declaring X read-only, or `svm.prefetch(X, Device)` (X brought back to the host \
         before each), or a replayable launch whose GPU faults on X (not declared) its replay serves (read-only copies \
         of X's chunks, dropped after). its time: the whole `svm.launch` or prefetch (its handle waited), median; its h2d: the \
         statistics' `h2d_ns` over it (every copy, under the update lock or not). alloc+free: `svm.alloc(4096)` then `svm.free`. fault: a read of a word of \
         B (device-owned) on a 2 MiB block of its own (64 KiB migrate back). during: every operation timed while a \
         launch or prefetch ran, median, and the longest of all: an operation that waited for its migration takes \
         about its h2d time. A replayable launch maps every resident page for its passes (B is device-owned): a \
         fault on B waits for the whole launch by design; alloc + free do not (a free waits only for a launch whose \
         pages it meets)."
    );
    println!("\n{m}");
    std::fs::create_dir_all(&o.out).expect("create results dir");
    std::fs::write(o.out.join("during_migration.md"), &m).expect("write during_migration.md");
    eprintln!("wrote {}/during_migration.md in {total:.0} s", o.out.display());
}
