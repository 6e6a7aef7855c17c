//! Concurrency (issue 14): what a CPU thread pays while a long kernel runs.
//!
//! A kernel of about a second (a register loop over one page of a vector A,
//! its iteration count a launch argument calibrated at start) runs on a
//! second thread (`std::thread::scope`); meanwhile the main thread does one
//! operation that has nothing to do with A and times it:
//!
//! - **fault**: reads one element of a vector B whose pages the device owns
//!   (a launch bound B read-write before): a CPU fault, the page's chunk
//!   migrates back;
//! - **alloc**: `svm.alloc(4096)`;
//! - **free**: `svm.free(p)` of a 4 KiB allocation made before the kernel.
//!
//! The same operations with no kernel running are the idle figures. Every
//! fault sample reads a page of its own 2 MiB block of B (B is one slot of
//! 2 MiB per sample), so every read is a first, non-sequential fault on
//! device-owned memory (the default policy: 64 KiB chunk, tree prefetcher).
//!
//! Every mapping mode and fault backend the machine offers, side by side:
//! the software mode with the host-mapped pool (lavapipe's default), the
//! software mode staged (`host_mapped_pool(false)`, as on a discrete GPU),
//! the sparse mode, and the coherent mode (nothing migrates, so no fault
//! figures; alloc and free still); each under userfaultfd and mprotect.
//!
//! The kernel runs on ONE workgroup, so on lavapipe it keeps one CPU busy
//! and leaves the others to the timed thread and the fault service: the
//! "during" figures measure what the runtime makes the thread wait for, not
//! CPU contention. The operation starts [`Opts::delay`] after the launching
//! thread calls `launch`; the "kernel left" column is the time from the
//! operation's start to the launch's return: an operation that waits for
//! the kernel takes about that long.
//!
//! [`Ctx`] holds one runtime with its kernels and [`Ctx::while_kernel_runs`]
//! runs any closure during the long kernel. Two further sections, functions
//! over the same [`Ctx`] (the uffd one of each mode) with their own tables:
//!
//! - [`two_queues`]: two threads launching a short kernel (about 1 ms) on
//!   two [`LaunchQueue`]s, each its own data, each launch waited before the
//!   next (the realistic pattern), against one thread doing all their
//!   launches; and the same launches queued without waits (the device's own
//!   rate, a floor);
//! - [`small_launches`]: many small launches back to back on one queue,
//!   synchronous (`svm.launch`) against queued (a dependent chain submitted
//!   with raw bindings, then every handle waited): a ping-pong chain, and a
//!   BFS of K levels over the same arrays (also with the CPU reading a flag
//!   after each level, as a level-synchronous BFS does).
//!
//! Their kernels also run one workgroup, so on lavapipe the launching
//! thread keeps a CPU of its own. On lavapipe `vkQueueSubmit` returns only
//! once the submission before it has run, so a queue there is about one
//! kernel deep: a queued launch's host work overlaps the kernel before it,
//! no more.
//!
//! ```text
//! cargo bench -p svm-benches --bench concurrency            # ~1 s kernel, 5 rounds (queues: 9)
//! cargo bench -p svm-benches --bench concurrency -- --quick # ~0.5 s kernel, 2 rounds (3); results/quick/
//! ```

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{gpu_required, machine, median};
use svm::{
    AccessMode, Advice, Binding, FaultBackendKind, Kernel, KernelDescriptor, LaunchDescriptor, LaunchQueue, ManagedVec,
    MappingMode, Stats, Svm, SvmDescriptor,
};

const MIB: usize = 1 << 20;
/// u32 words per 4 KiB page.
const PAGE_WORDS: usize = 1024;
/// Pages per 2 MiB slot of B (one fault sample per slot).
const SLOT_PAGES: usize = 512;
const BACKENDS: [FaultBackendKind; 2] = [FaultBackendKind::Uffd, FaultBackendKind::Mprotect];

/// The long kernel: each of 64 invocations runs a xorshift over its own
/// word of A `p.iters` times (registers only; one load and one store).
const SPIN: &str = "struct P { iters: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x >= arrayLength(&a)) { return; }
    var x = a[g.x] | 1u;
    for (var k = 0u; k < p.iters; k++) { x ^= x << 13u; x ^= x >> 17u; x ^= x << 5u; }
    a[g.x] = x;
}";

/// Writes `page ^ tag` into the first word of every page of B: bound
/// read-write, every page of B becomes device-owned.
const WRITER: &str = "struct P { tag: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read_write> b: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x * 1024u;
    if (i < arrayLength(&b)) { b[i] = g.x ^ p.tag; }
}";

const TAG: u32 = 0x5a5a_0000;

/// A uniform of one u32 (padded to 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct P {
    v: u32,
    pad: [u32; 3],
}

struct Opts {
    quick: bool,
    /// Rounds; each round times every operation idle 3 times and once
    /// during a kernel.
    rounds: usize,
    /// Idle samples per operation and round.
    idle_per_round: usize,
    /// The long kernel's target duration.
    kernel: Duration,
    /// From the launching thread's call to `launch` to the timed operation.
    delay: Duration,
    /// Rounds of the launch-queue sections (every variant once a round).
    queue_rounds: usize,
    /// The short kernel's target duration (two-queue section).
    short: Duration,
    /// Launches per thread in the two-queue section (N).
    per_thread: usize,
    /// Launches of the dependent chain (M, even).
    chain: usize,
    /// BFS levels (K).
    levels: usize,
    out: PathBuf,
}

impl Opts {
    fn parse() -> Self {
        let quick =
            std::env::args().any(|a| a == "--quick") || std::env::var("SVM_BENCH_QUICK").is_ok_and(|v| v == "1");
        let root = std::env::var_os("SVM_BENCH_OUT")
            .map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../results")), PathBuf::from);
        Self {
            quick,
            rounds: if quick { 2 } else { 5 },
            idle_per_round: 3,
            kernel: Duration::from_millis(if quick { 500 } else { 1000 }),
            delay: Duration::from_millis(if quick { 100 } else { 200 }),
            queue_rounds: if quick { 3 } else { 9 },
            short: Duration::from_millis(1),
            per_thread: if quick { 30 } else { 100 },
            chain: if quick { 100 } else { 400 },
            levels: 64,
            out: if quick { root.join("quick") } else { root },
        }
    }

    fn command(&self) -> &'static str {
        if self.quick {
            "cargo bench -p svm-benches --bench concurrency -- --quick"
        } else {
            "cargo bench -p svm-benches --bench concurrency"
        }
    }

    /// 2 MiB slots of B: one per fault sample.
    fn slots(&self) -> usize {
        self.rounds * (self.idle_per_round + 1)
    }
}

/// A mapping mode / migration path row.
#[derive(Clone, Copy)]
struct Path {
    name: &'static str,
    mode: MappingMode,
    host_mapped_pool: bool,
}

const PATHS: [Path; 4] = [
    Path { name: "software", mode: MappingMode::Software, host_mapped_pool: true },
    Path { name: "staged", mode: MappingMode::Software, host_mapped_pool: false },
    Path { name: "sparse", mode: MappingMode::Sparse, host_mapped_pool: true },
    Path { name: "coherent", mode: MappingMode::Coherent, host_mapped_pool: true },
];

/// One runtime with the long kernel, its vector A and the writer of B.
struct Ctx {
    svm: Svm,
    spin: Kernel,
    writer: Kernel,
    a: ManagedVec<u32>,
    /// Iterations of [`SPIN`] for the target duration.
    iters: u32,
}

/// Timing of one operation run during the long kernel.
struct During<R> {
    /// The operation's result.
    value: R,
    /// The operation, ms.
    op_ms: f64,
    /// From the operation's start to the launch's return, ms.
    left_ms: f64,
    /// The whole launch, ms.
    kernel_ms: f64,
}

impl Ctx {
    fn new(path: Path, backend: FaultBackendKind) -> Result<Self, svm::SvmError> {
        let desc = SvmDescriptor::default()
            .arena_size(256 * MIB)
            .pool_size(128 * MIB as u64)
            .mapping(path.mode)
            .host_mapped_pool(path.host_mapped_pool)
            .fault_backend(backend);
        let svm = Svm::with_descriptor(&desc)?;
        let kernel = |label, source| {
            svm.create_kernel(&KernelDescriptor { label, source, entry_point: "main" }).expect("kernel compiles")
        };
        let spin = kernel("spin", SPIN);
        let writer = kernel("writer", WRITER);
        let a = svm.alloc_from_slice(&(0..64u32).collect::<Vec<_>>()).expect("A");
        Ok(Self { svm, spin, writer, a, iters: 1 })
    }

    /// One launch of the long kernel with `iters` iterations, ms.
    fn spin_once(svm: &Svm, spin: &Kernel, a: &mut ManagedVec<u32>, iters: u32) -> f64 {
        let p = P { v: iters, pad: [0; 3] };
        let t = Instant::now();
        svm.launch(
            spin,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(a), Binding::uniform(&p)],
                workgroups: [1, 1, 1],
                ..Default::default()
            },
        )
        .expect("spin launch");
        t.elapsed().as_secs_f64() * 1e3
    }

    /// Iterations for a kernel of `target`: grow until a launch takes at
    /// least 100 ms, then scale. Returns them and one launch's time, ms.
    fn calibrate(&mut self, target: Duration) -> (u32, f64) {
        Self::spin_once(&self.svm, &self.spin, &mut self.a, 1); // compile, A resident
        let mut iters: u64 = 1 << 16;
        loop {
            let ms = Self::spin_once(&self.svm, &self.spin, &mut self.a, iters as u32);
            if ms >= 100.0 || iters >= u64::from(u32::MAX) / 4 {
                iters = ((iters as f64 * target.as_secs_f64() * 1e3 / ms) as u64).clamp(1, u64::from(u32::MAX));
                break;
            }
            iters = (iters * 4).min(u64::from(u32::MAX));
        }
        self.iters = iters as u32;
        (self.iters, Self::spin_once(&self.svm, &self.spin, &mut self.a, self.iters))
    }

    /// Run `op` on this thread while the long kernel runs on another,
    /// `delay` after that thread called `launch`.
    fn while_kernel_runs<R>(&mut self, delay: Duration, op: impl FnOnce(&Svm) -> R) -> During<R> {
        let Self { svm, spin, a, iters, .. } = self;
        let (svm, spin, iters) = (&*svm, &*spin, *iters);
        let go = Barrier::new(2);
        std::thread::scope(|s| {
            let launcher = s.spawn(|| {
                go.wait();
                let t0 = Instant::now();
                Self::spin_once(svm, spin, a, iters);
                (t0, Instant::now())
            });
            go.wait();
            std::thread::sleep(delay);
            let t = Instant::now();
            let value = op(svm);
            let op_ms = t.elapsed().as_secs_f64() * 1e3;
            let (t0, end) = launcher.join().expect("launcher thread");
            During {
                value,
                op_ms,
                left_ms: end.saturating_duration_since(t).as_secs_f64() * 1e3,
                kernel_ms: (end - t0).as_secs_f64() * 1e3,
            }
        })
    }

    /// B, `slots` × 2 MiB, every page device-owned (one bound read-write
    /// launch of [`WRITER`]).
    fn device_owned_b(&self, slots: usize) -> ManagedVec<u32> {
        let pages = slots * SLOT_PAGES;
        let mut b = self.svm.alloc_vec::<u32>(pages * PAGE_WORDS).expect("B");
        let p = P { v: TAG, pad: [0; 3] };
        self.svm
            .launch(
                &self.writer,
                &LaunchDescriptor {
                    bindings: &[Binding::read_write(&mut b), Binding::uniform(&p)],
                    workgroups: [u32::try_from(pages.div_ceil(64)).expect("small"), 1, 1],
                    ..Default::default()
                },
            )
            .expect("writer launch");
        b
    }
}

/// Read the first word of page `slot * SLOT_PAGES` of B: one CPU fault on
/// device-owned memory. Returns the statistics' CPU faults and d2h pages
/// over the read; checks the value.
fn fault_read(svm: &Svm, b: &ManagedVec<u32>, slot: usize) -> (u64, u64) {
    let page = slot * SLOT_PAGES;
    let s0 = svm.stats();
    let v = std::hint::black_box(b[page * PAGE_WORDS]);
    let d = svm.stats().since(&s0);
    assert_eq!(v, page as u32 ^ TAG, "B page {page} read back wrong");
    (d.cpu_faults, d.d2h_pages)
}

fn ms_of(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// Samples of one operation.
#[derive(Default)]
struct Samples {
    idle: Vec<f64>,
    during: Vec<f64>,
}

/// One row of the CPU-operations table.
struct OpsRow {
    path: Path,
    backend: FaultBackendKind,
    /// The pool is in host-mapped memory (the runtime's own answer).
    host_mapped: bool,
    /// `None` where nothing migrates (coherent mode).
    fault: Option<Samples>,
    alloc: Samples,
    free: Samples,
    /// Every during-kernel launch, ms.
    kernel_ms: Vec<f64>,
    /// From each during-kernel operation's start to the launch's return, ms.
    left_ms: Vec<f64>,
    /// Per fault read: CPU faults served, d2h pages.
    faults: Vec<(u64, u64)>,
}

/// Section 1 and 2 for one runtime: faults on device-owned pages the
/// kernel does not use, `alloc(4096)` and `free`, idle and during the long
/// kernel, rounds interleaved.
fn cpu_ops(o: &Opts, ctx: &mut Ctx, path: Path, backend: FaultBackendKind) -> OpsRow {
    let migrates = path.mode != MappingMode::Coherent;
    let b = migrates.then(|| ctx.device_owned_b(o.slots()));
    let mut row = OpsRow {
        path,
        backend,
        host_mapped: ctx.svm.pool_is_host_mapped(),
        fault: migrates.then(Samples::default),
        alloc: Samples::default(),
        free: Samples::default(),
        kernel_ms: Vec::new(),
        left_ms: Vec::new(),
        faults: Vec::new(),
    };
    let mut slot = 0;
    let during = |row: &mut OpsRow, kernel_ms: f64, left_ms: f64| {
        row.kernel_ms.push(kernel_ms);
        row.left_ms.push(left_ms);
    };
    for _ in 0..o.rounds {
        // Idle.
        for _ in 0..o.idle_per_round {
            if let (Some(b), Some(f)) = (&b, &mut row.fault) {
                let mut r = (0, 0);
                f.idle.push(ms_of(|| r = fault_read(&ctx.svm, b, slot)));
                row.faults.push(r);
                slot += 1;
            }
            let mut p = None;
            row.alloc.idle.push(ms_of(|| p = Some(ctx.svm.alloc(4096).expect("alloc"))));
            let p = p.expect("set").as_ptr();
            row.free.idle.push(ms_of(|| ctx.svm.free(p).expect("free")));
        }
        // During the kernel: one kernel per operation.
        if let Some(b) = &b {
            let d = ctx.while_kernel_runs(o.delay, |svm| fault_read(svm, b, slot));
            slot += 1;
            row.faults.push(d.value);
            row.fault.as_mut().expect("migrates").during.push(d.op_ms);
            during(&mut row, d.kernel_ms, d.left_ms);
        }
        let mut p = None;
        let d = ctx.while_kernel_runs(o.delay, |svm| {
            let t = Instant::now();
            p = Some(svm.alloc(4096).expect("alloc"));
            t.elapsed().as_secs_f64() * 1e3
        });
        ctx.svm.free(p.expect("set").as_ptr()).expect("free");
        row.alloc.during.push(d.value);
        during(&mut row, d.kernel_ms, d.left_ms);

        let p = ctx.svm.alloc(4096).expect("alloc").as_ptr();
        let d = ctx.while_kernel_runs(o.delay, |svm| {
            let t = Instant::now();
            svm.free(p).expect("free");
            t.elapsed().as_secs_f64() * 1e3
        });
        row.free.during.push(d.value);
        during(&mut row, d.kernel_ms, d.left_ms);
    }
    row
}

// ---------------------------------------------------------------------------
// Launch queues: two threads on two queues, many small launches back to back.

/// `dst[i] = src[i] * 3 + p.v`: one step of a dependent chain (each launch
/// reads what the previous one wrote; the multiply makes the order matter).
/// One workgroup (on lavapipe: one CPU, as the long kernel).
const CHAIN: &str = "struct P { v: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) l: u32) {
    for (var i = l; i < arrayLength(&dst); i += 64u) { dst[i] = src[i] * 3u + p.v; }
}";

/// One bottom-up BFS level over CSR arrays: an unreached vertex with a
/// neighbour at level `p.v` gets level `p.v + 1`, and `flag[0] = 1`. One
/// workgroup.
const BFS_LEVEL: &str = "struct P { v: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> offsets: array<u32>;
@group(0) @binding(1) var<storage, read> cols: array<u32>;
@group(0) @binding(2) var<storage, read_write> level: array<u32>;
@group(0) @binding(3) var<storage, read_write> flag: array<u32>;
@group(0) @binding(4) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) l: u32) {
    for (var w = l; w < arrayLength(&level); w += 64u) {
        if (level[w] == 0xffffffffu) {
            for (var i = offsets[w]; i < offsets[w + 1u]; i++) {
                if (level[cols[i]] == p.v) { level[w] = p.v + 1u; flag[0] = 1u; break; }
            }
        }
    }
}";

/// A BFS's start: every vertex unreached but vertex 0 (level 0).
const BFS_INIT: &str = "@group(0) @binding(0) var<storage, read_write> level: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&level)) { level[g.x] = select(0xffffffffu, 0u, g.x == 0u); }
}";

const UNREACHED: u32 = u32::MAX;
/// Words of each vector of the chain (16 KiB).
const CHAIN_WORDS: usize = 4096;
/// The BFS grid's side: `GRID` × `GRID` vertices, 4-neighbours.
const GRID: usize = 64;

fn compile(svm: &Svm, label: &str, source: &str) -> Kernel {
    svm.create_kernel(&KernelDescriptor { label, source, entry_point: "main" }).expect("kernel compiles")
}

fn uniform(v: u32) -> P {
    P { v, pad: [0; 3] }
}

fn since_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Pages migrated either way (the statistics' h2d + d2h) from `s0` to now.
fn moved_since(svm: &Svm, s0: &Stats) -> u64 {
    let d = svm.stats().since(s0);
    d.h2d_pages + d.d2h_pages
}

/// One row of the two-queue table: totals of `2 × per_thread` launches, ms.
struct ThreadsRow {
    /// Launches per thread (N).
    per_thread: usize,
    /// One thread, one queue, every launch waited before the next.
    one: Vec<f64>,
    /// Two threads, a queue and a vector each, every launch waited.
    two: Vec<f64>,
    /// One thread, every launch submitted, then all waited (the device's
    /// own rate: nothing waits on the host between kernels).
    floor: Vec<f64>,
}

/// Two threads each launching the short kernel on their own queue and data
/// (waiting each launch before the next) against one thread doing all
/// their launches, rounds interleaved.
fn two_queues(o: &Opts, ctx: &Ctx, iters: u32) -> ThreadsRow {
    let (svm, spin, n) = (&ctx.svm, &ctx.spin, o.per_thread);
    // A page each (the kernel uses its first 64 words).
    let mut a: [ManagedVec<u32>; 2] = [0u32, 1]
        .map(|t| svm.alloc_from_slice(&(0..PAGE_WORDS as u32).map(|i| i ^ (t << 16)).collect::<Vec<_>>()).expect("A"));
    let u = uniform(iters);
    let launch_wait = |q: &LaunchQueue, a: &mut ManagedVec<u32>| {
        q.launch(
            spin,
            &LaunchDescriptor { bindings: &[Binding::read_write(a), Binding::uniform(&u)], ..Default::default() },
        )
        .expect("short launch")
        .wait()
        .expect("short kernel");
    };
    let queues = [svm.create_queue(), svm.create_queue()];
    // Compiled, A device-owned.
    for v in &mut a {
        launch_wait(&queues[0], v);
    }
    let mut row = ThreadsRow { per_thread: n, one: Vec::new(), two: Vec::new(), floor: Vec::new() };
    for _ in 0..o.queue_rounds {
        let t = Instant::now();
        for i in 0..2 * n {
            launch_wait(&queues[0], &mut a[i % 2]);
        }
        row.one.push(since_ms(t));

        let go = Barrier::new(3);
        let two = std::thread::scope(|s| {
            let threads: Vec<_> = a
                .iter_mut()
                .zip(&queues)
                .map(|(v, q)| {
                    let (go, launch_wait) = (&go, &launch_wait);
                    s.spawn(move || {
                        go.wait();
                        for _ in 0..n {
                            launch_wait(q, v);
                        }
                    })
                })
                .collect();
            go.wait();
            let t = Instant::now();
            for th in threads {
                th.join().expect("launching thread");
            }
            since_ms(t)
        });
        row.two.push(two);

        let ptrs = [a[0].as_ptr(), a[1].as_ptr()];
        // SAFETY: no reference to either vector is used until every handle
        // below is waited for.
        let binds: Vec<[Binding<'_>; 2]> = (0..2 * n)
            .map(|i| unsafe {
                [Binding::raw(ptrs[i % 2].cast(), PAGE_WORDS * 4, AccessMode::ReadWrite), Binding::uniform(&u)]
            })
            .collect();
        let t = Instant::now();
        let pending: Vec<_> = binds
            .iter()
            .map(|b| queues[0].launch(spin, &LaunchDescriptor { bindings: b, ..Default::default() }).expect("submit"))
            .collect();
        for p in pending {
            p.wait().expect("short kernel");
        }
        row.floor.push(since_ms(t));
    }
    row
}

/// One row of the small-launches table.
#[derive(Default)]
struct SmallRow {
    /// The chain's launches (M).
    chain: usize,
    /// M synchronous `svm.launch`es, ms.
    chain_sync: Vec<f64>,
    /// The statistics' `kernel_ns` over the synchronous chain, ms.
    chain_sync_kernel: Vec<f64>,
    /// M launches queued without waits: until the last `launch` returned, ms.
    chain_submit: Vec<f64>,
    /// ... until every handle was waited for, ms.
    chain_queued: Vec<f64>,
    /// Queued launches not retired right after the last one was submitted.
    chain_in_flight: Vec<f64>,
    /// Pages migrated during the timed chains (synchronous, queued).
    chain_moved: Vec<(u64, u64)>,
    /// BFS levels (K).
    levels: usize,
    /// K synchronous launches, ms.
    bfs_sync: Vec<f64>,
    /// K synchronous launches, the CPU clearing and reading a flag around
    /// each (a level-synchronous BFS learning whether to go on), ms.
    bfs_flag: Vec<f64>,
    /// K launches queued without waits, then all waited, ms.
    bfs_queued: Vec<f64>,
    /// ... until the last `launch` returned, ms.
    bfs_submit: Vec<f64>,
    /// Queued launches not retired right after the last one was submitted.
    bfs_in_flight: Vec<f64>,
    /// Pages migrated during the flag variant.
    bfs_flag_moved: Vec<u64>,
}

/// What `x -> 3x + p` gives after the prep (`x -> 9x`) and then `p` = 1..=m.
fn chain_expected(m: usize) -> Vec<u32> {
    (0..CHAIN_WORDS as u32)
        .map(|i| (1..=m as u32).fold(i.wrapping_mul(9), |x, p| x.wrapping_mul(3).wrapping_add(p)))
        .collect()
}

/// A `GRID` × `GRID` grid's CSR arrays (offsets, neighbours).
fn grid_csr() -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32];
    let mut cols = Vec::new();
    for y in 0..GRID {
        for x in 0..GRID {
            let v = (y * GRID + x) as u32;
            let w = GRID as u32;
            if x > 0 {
                cols.push(v - 1);
            }
            if x + 1 < GRID {
                cols.push(v + 1);
            }
            if y > 0 {
                cols.push(v - w);
            }
            if y + 1 < GRID {
                cols.push(v + w);
            }
            offsets.push(cols.len() as u32);
        }
    }
    (offsets, cols)
}

/// Many small launches on one queue, synchronous against queued: a
/// dependent chain (ping-pong between two vectors) and a BFS of K levels
/// over the same arrays.
fn small_launches(o: &Opts, ctx: &Ctx) -> SmallRow {
    let svm = &ctx.svm;
    let (m, k) = (o.chain, o.levels);
    let mut row = SmallRow { chain: m, levels: k, ..Default::default() };
    let q = svm.create_queue();

    // The chain.
    let chain = compile(svm, "chain", CHAIN);
    let mut v: [ManagedVec<u32>; 2] = [(); 2].map(|()| svm.alloc_vec::<u32>(CHAIN_WORDS).expect("chain vector"));
    let wg = [1, 1, 1];
    let us: Vec<P> = (1..=m as u32).map(uniform).collect();
    let zero = uniform(0);
    let expected = chain_expected(m);
    // v0 = i, then two untimed launches (v0 = 9i): both vectors device-owned.
    let prep = |v: &mut [ManagedVec<u32>; 2]| {
        for (i, x) in v[0].iter_mut().enumerate() {
            *x = i as u32;
        }
        for s in 0..2 {
            let [v0, v1] = &mut *v;
            let (src, dst) = if s == 0 { (&*v0, v1) } else { (&*v1, v0) };
            svm.launch(
                &chain,
                &LaunchDescriptor {
                    bindings: &[Binding::read(src), Binding::read_write(dst), Binding::uniform(&zero)],
                    workgroups: wg,
                    ..Default::default()
                },
            )
            .expect("chain prep");
        }
    };
    // m even: the last launch writes v0.
    let check = |v: &[ManagedVec<u32>; 2], what: &str| assert!(v[0][..] == expected[..], "{what} chain: wrong result");
    for _ in 0..o.queue_rounds {
        prep(&mut v);
        let s0 = svm.stats();
        let t = Instant::now();
        for (s, u) in us.iter().enumerate() {
            let [v0, v1] = &mut v;
            let (src, dst) = if s % 2 == 0 { (&*v0, v1) } else { (&*v1, v0) };
            svm.launch(
                &chain,
                &LaunchDescriptor {
                    bindings: &[Binding::read(src), Binding::read_write(dst), Binding::uniform(u)],
                    workgroups: wg,
                    ..Default::default()
                },
            )
            .expect("chain launch");
        }
        row.chain_sync.push(since_ms(t));
        let d = svm.stats().since(&s0);
        assert_eq!(d.launches, m as u64, "launches counted");
        row.chain_sync_kernel.push(d.kernel_ns as f64 / 1e6);
        let sync_moved = d.h2d_pages + d.d2h_pages;
        check(&v, "synchronous");

        prep(&mut v);
        let ptrs = [v[0].as_ptr(), v[1].as_ptr()];
        // SAFETY: no reference to either vector is used until every
        // handle below is waited for.
        let binds: Vec<[Binding<'_>; 3]> = us
            .iter()
            .enumerate()
            .map(|(s, u)| unsafe {
                [
                    Binding::raw(ptrs[s % 2].cast(), CHAIN_WORDS * 4, AccessMode::Read),
                    Binding::raw(ptrs[1 - s % 2].cast(), CHAIN_WORDS * 4, AccessMode::ReadWrite),
                    Binding::uniform(u),
                ]
            })
            .collect();
        let mut pending = Vec::with_capacity(m);
        let s0 = svm.stats();
        let t = Instant::now();
        for b in &binds {
            pending.push(
                q.launch(&chain, &LaunchDescriptor { bindings: b, workgroups: wg, ..Default::default() })
                    .expect("submit"),
            );
        }
        row.chain_submit.push(since_ms(t));
        row.chain_in_flight.push(q.in_flight() as f64);
        for p in pending {
            p.wait().expect("chain kernel");
        }
        row.chain_queued.push(since_ms(t));
        let d = svm.stats().since(&s0);
        assert_eq!(d.launches, m as u64, "launches counted");
        row.chain_moved.push((sync_moved, d.h2d_pages + d.d2h_pages));
        check(&v, "queued");
    }
    drop(v);

    // The BFS.
    let level_k = compile(svm, "bfs level", BFS_LEVEL);
    let init = compile(svm, "bfs init", BFS_INIT);
    let (offsets, cols) = grid_csr();
    let n = GRID * GRID;
    let offsets = svm.alloc_from_slice(&offsets).expect("offsets");
    let cols = svm.alloc_from_slice(&cols).expect("cols");
    for (p, len) in [(offsets.as_ptr(), offsets.len()), (cols.as_ptr(), cols.len())] {
        // Read by every level: keep the device copy (as the BFS demo does).
        svm.advise(p.cast(), len * 4, Advice::ReadMostly).expect("advise");
    }
    let mut level = svm.alloc_vec::<u32>(n).expect("level");
    let mut flag = svm.alloc_vec::<u32>(PAGE_WORDS).expect("flag");
    let wg = [1, 1, 1];
    let us: Vec<P> = (0..k as u32).map(uniform).collect();
    // Untimed: every vertex unreached but 0, on the device.
    let start = |level: &mut ManagedVec<u32>| {
        let init_wg = [(n / 64) as u32, 1, 1];
        svm.launch(
            &init,
            &LaunchDescriptor { bindings: &[Binding::read_write(level)], workgroups: init_wg, ..Default::default() },
        )
        .expect("bfs init");
    };
    let check = |level: &ManagedVec<u32>, what: &str| {
        for (i, &l) in level.iter().enumerate() {
            let d = (i % GRID + i / GRID) as u32;
            let want = if d as usize <= k { d } else { UNREACHED };
            assert_eq!(l, want, "{what} BFS: vertex {i}");
        }
    };
    let sync_level = |level: &mut ManagedVec<u32>, flag: &mut ManagedVec<u32>, u: &P| {
        svm.launch(
            &level_k,
            &LaunchDescriptor {
                bindings: &[
                    Binding::read(&offsets),
                    Binding::read(&cols),
                    Binding::read_write(level),
                    Binding::read_write(flag),
                    Binding::uniform(u),
                ],
                workgroups: wg,
                ..Default::default()
            },
        )
        .expect("bfs level");
    };
    // Warm: the level kernel compiled, the CSR arrays' device copies made.
    start(&mut level);
    sync_level(&mut level, &mut flag, &us[0]);
    for _ in 0..o.queue_rounds {
        start(&mut level);
        let t = Instant::now();
        for u in &us {
            sync_level(&mut level, &mut flag, u);
        }
        row.bfs_sync.push(since_ms(t));
        check(&level, "synchronous");

        start(&mut level);
        let s0 = svm.stats();
        let t = Instant::now();
        for u in &us {
            flag[0] = 0;
            sync_level(&mut level, &mut flag, u);
            assert_eq!(flag[0], 1, "a level found no vertex");
        }
        row.bfs_flag.push(since_ms(t));
        row.bfs_flag_moved.push(moved_since(svm, &s0));
        check(&level, "flag");

        start(&mut level);
        let (lp, fp) = (level.as_ptr(), flag.as_ptr());
        // SAFETY: no reference to `level` or `flag` is used until every
        // handle below is waited for.
        let binds: Vec<[Binding<'_>; 5]> = us
            .iter()
            .map(|u| unsafe {
                [
                    Binding::read(&offsets),
                    Binding::read(&cols),
                    Binding::raw(lp.cast(), n * 4, AccessMode::ReadWrite),
                    Binding::raw(fp.cast(), PAGE_WORDS * 4, AccessMode::ReadWrite),
                    Binding::uniform(u),
                ]
            })
            .collect();
        let mut pending = Vec::with_capacity(k);
        let t = Instant::now();
        for b in &binds {
            pending.push(
                q.launch(&level_k, &LaunchDescriptor { bindings: b, workgroups: wg, ..Default::default() })
                    .expect("submit"),
            );
        }
        let submitted = since_ms(t);
        row.bfs_in_flight.push(q.in_flight() as f64);
        for p in pending {
            p.wait().expect("bfs level");
        }
        row.bfs_queued.push(since_ms(t));
        row.bfs_submit.push(submitted);
        check(&level, "queued");
    }
    row
}

/// The launch-queue sections' figures for one runtime (uffd backend).
struct QueueRow {
    backend: FaultBackendKind,
    host_mapped: bool,
    threads: ThreadsRow,
    small: SmallRow,
}

/// Where device pages live.
fn pool_name(mode: MappingMode, host_mapped: bool) -> &'static str {
    match (mode, host_mapped) {
        (MappingMode::Coherent, _) => "arena in place",
        (MappingMode::Sparse, _) => "sparse buffer",
        (_, true) => "host-mapped",
        (_, false) => "staged",
    }
}

/// ms with a precision fit for µs and for seconds.
fn ms(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.4}")
    } else if x < 10.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

/// `during / idle`.
fn ratio(idle: f64, during: f64) -> String {
    let r = during / idle.max(1e-9);
    if r >= 100.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

fn table(rows: &[Result<OpsRow, String>], names: &[(Path, FaultBackendKind)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | kernel ms | kernel left at op start ms | fault idle ms | fault during ms | fault ratio | d2h KiB per fault | alloc idle ms | alloc during ms | alloc ratio | free idle ms | free during ms | free ratio |"
    );
    let _ = writeln!(t, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (r, (path, backend)) in rows.iter().zip(names) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | {backend} | unavailable: {e} |||||||||||||", path.name);
                continue;
            }
        };
        let med = |v: &[f64]| median(&mut v.to_vec());
        let pool = pool_name(r.path.mode, r.host_mapped);
        let (fi, fd, fr, kib) = match &r.fault {
            Some(f) => {
                let (i, d) = (med(&f.idle), med(&f.during));
                let kib: Vec<f64> = r.faults.iter().map(|&(_, p)| p as f64 * 4.0).collect();
                (ms(i), ms(d), ratio(i, d), format!("{:.0}", med(&kib)))
            }
            None => ("no faults".into(), "no faults".into(), String::new(), String::new()),
        };
        let (ai, ad) = (med(&r.alloc.idle), med(&r.alloc.during));
        let (xi, xd) = (med(&r.free.idle), med(&r.free.during));
        let _ = writeln!(
            t,
            "| {} | {} | {pool} | {} | {} | {fi} | {fd} | {fr} | {kib} | {} | {} | {} | {} | {} | {} |",
            r.path.name,
            r.backend,
            ms(med(&r.kernel_ms)),
            ms(med(&r.left_ms)),
            ms(ai),
            ms(ad),
            ratio(ai, ad),
            ms(xi),
            ms(xd),
            ratio(xi, xd),
        );
    }
    t
}

fn med(v: &[f64]) -> f64 {
    median(&mut v.to_vec())
}

/// `a / b` as a factor.
fn times(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b.max(1e-9))
}

/// The two-queue table, one row per mapping mode.
fn threads_table(rows: &[(Path, Result<QueueRow, String>)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | launches (2 × N) | one thread ms | one thread launches/s | two threads ms | two threads launches/s | two threads / one thread | ms per launch, one thread | ms per launch, queued floor | queued floor launches/s |"
    );
    let _ = writeln!(t, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (path, r) in rows {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | uffd | unavailable: {e} ||||||||||", path.name);
                continue;
            }
        };
        let th = &r.threads;
        let launches = 2 * th.per_thread;
        let (one, two, floor) = (med(&th.one), med(&th.two), med(&th.floor));
        let rate = |ms_total: f64| format!("{:.0}", launches as f64 / (ms_total / 1e3));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {launches} | {} | {} | {} | {} | {} | {} | {} | {} |",
            path.name,
            r.backend,
            pool_name(path.mode, r.host_mapped),
            ms(one),
            rate(one),
            ms(two),
            rate(two),
            times(one, two),
            ms(one / launches as f64),
            ms(floor / launches as f64),
            rate(floor),
        );
    }
    t
}

/// The dependent-chain table.
fn chain_table(rows: &[(Path, Result<QueueRow, String>)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | launches (M) | sync ms per launch | queued: submit ms per launch | queued ms per launch | saved ms per launch | sync / queued | queued: in flight after the last submit | sync: submitted → retired ms per launch (Stats) | pages moved sync / queued |"
    );
    let _ = writeln!(t, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (path, r) in rows {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | uffd | unavailable: {e} ||||||||||", path.name);
                continue;
            }
        };
        let s = &r.small;
        let m = s.chain as f64;
        let (sync, queued) = (med(&s.chain_sync) / m, med(&s.chain_queued) / m);
        let moved_sync = s.chain_moved.iter().map(|p| p.0).max().unwrap_or(0);
        let moved_queued = s.chain_moved.iter().map(|p| p.1).max().unwrap_or(0);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {moved_sync} / {moved_queued} |",
            path.name,
            r.backend,
            pool_name(path.mode, r.host_mapped),
            s.chain,
            ms(sync),
            ms(med(&s.chain_submit) / m),
            ms(queued),
            ms(sync - queued),
            times(sync, queued),
            med(&s.chain_in_flight),
            ms(med(&s.chain_sync_kernel) / m),
        );
    }
    t
}

/// The BFS table.
fn bfs_table(rows: &[(Path, Result<QueueRow, String>)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | levels (K) | sync ms | sync + flag ms | queued ms (submit) | ms per level: sync / + flag / queued | saved per level vs sync | saved per level vs sync + flag | sync / queued | sync + flag / queued | queued: in flight after the last submit | pages moved per level, + flag |"
    );
    let _ = writeln!(t, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (path, r) in rows {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | uffd | unavailable: {e} ||||||||||||", path.name);
                continue;
            }
        };
        let s = &r.small;
        let k = s.levels as f64;
        let (sync, flag, queued) = (med(&s.bfs_sync), med(&s.bfs_flag), med(&s.bfs_queued));
        let moved: Vec<f64> = s.bfs_flag_moved.iter().map(|&p| p as f64 / k).collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} / {} / {} | {} | {} | {} | {} | {:.0} | {:.1} |",
            path.name,
            r.backend,
            pool_name(path.mode, r.host_mapped),
            s.levels,
            ms(sync),
            ms(flag),
            ms(queued),
            ms(med(&s.bfs_submit)),
            ms(sync / k),
            ms(flag / k),
            ms(queued / k),
            ms((sync - queued) / k),
            ms((flag - queued) / k),
            times(sync, queued),
            times(flag, queued),
            med(&s.bfs_in_flight),
            med(&moved),
        );
    }
    t
}

fn main() {
    let o = Opts::parse();
    let started = Instant::now();
    let mut probe = match Ctx::new(PATHS[0], BACKENDS[0]) {
        Ok(c) => c,
        Err(e) => {
            assert!(!gpu_required(), "SVM_REQUIRE_GPU=1 but no runtime: {e}");
            println!("SKIP: the concurrency bench needs a GPU adapter: {e}");
            return;
        }
    };
    let device = probe.svm.device_info().to_string();
    let machine = machine();
    let (iters, cal_ms) = probe.calibrate(o.kernel);
    drop(probe);
    eprintln!("machine: {machine}\ndevice: {device}\nlong kernel: {iters} iterations, {cal_ms:.0} ms");

    // The short kernel of the two-queue section, scaled from the long one.
    let short_iters = ((f64::from(iters) * o.short.as_secs_f64() * 1e3 / cal_ms) as u32).max(1);

    let mut names = Vec::new();
    let mut rows = Vec::new();
    // Launch-queue sections: under the first backend (uffd) only.
    let mut queue_rows = Vec::new();
    let (mut ops_s, mut queue_s) = (0.0, 0.0);
    for path in PATHS {
        for backend in BACKENDS {
            let t = Instant::now();
            names.push((path, backend));
            let ctx = Ctx::new(path, backend).map_err(|e| e.to_string());
            let row = match ctx {
                Err(e) => {
                    if backend == BACKENDS[0] {
                        queue_rows.push((path, Err(e.clone())));
                    }
                    Err(e)
                }
                Ok(mut ctx) => {
                    ctx.iters = iters;
                    // Compile, A resident.
                    Ctx::spin_once(&ctx.svm, &ctx.spin, &mut ctx.a, 1);
                    // The backend in use (not merely the one asked for).
                    let in_use = ctx.svm.fault_backend();
                    let row = cpu_ops(&o, &mut ctx, path, in_use);
                    let missed = row.faults.iter().filter(|&&(f, _)| f == 0).count();
                    assert!(row.fault.is_none() || missed == 0, "{missed} reads of device-owned pages did not fault");
                    ops_s += t.elapsed().as_secs_f64();
                    if backend == BACKENDS[0] {
                        let tq = Instant::now();
                        let threads = two_queues(&o, &ctx, short_iters);
                        let small = small_launches(&o, &ctx);
                        let host_mapped = ctx.svm.pool_is_host_mapped();
                        queue_rows.push((path, Ok(QueueRow { backend: in_use, host_mapped, threads, small })));
                        queue_s += tq.elapsed().as_secs_f64();
                        eprintln!("{} / {backend}: launch queues in {:.1} s", path.name, tq.elapsed().as_secs_f64());
                    }
                    Ok(row)
                }
            };
            eprintln!(
                "{} / {backend}: {} in {:.1} s",
                path.name,
                if row.is_ok() { "done" } else { "unavailable" },
                t.elapsed().as_secs_f64()
            );
            rows.push(row);
        }
    }
    let total = started.elapsed().as_secs_f64();

    let mut m = String::new();
    let _ = writeln!(
        m,
        "### Concurrency: a CPU thread's faults, alloc and free while a long kernel runs{}\n",
        if o.quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(m, "- command: `{}`", o.command());
    let _ = writeln!(m, "- source: {}", common::git_describe());
    let _ = writeln!(m, "- machine: {machine}");
    let _ = writeln!(m, "- device: {device}");
    let _ = writeln!(
        m,
        "- long kernel: one workgroup of 64 invocations looping {iters} times over one page of A (calibrated: {cal_ms:.0} ms); \
         launched on a second thread; the timed operation starts {} ms after that thread calls `launch`",
        o.delay.as_millis()
    );
    let _ = writeln!(
        m,
        "- medians of {} idle and {} during-kernel samples per operation (one kernel per during sample), rounds interleaved; \
         arena 256 MiB, pool 128 MiB, fault chunk 64 KiB + prefetcher (defaults); whole run {total:.0} s \
         (this section {ops_s:.0} s, the launch-queue sections below {queue_s:.0} s)\n",
        o.rounds * o.idle_per_round,
        o.rounds
    );
    m.push_str(&table(&rows, &names));
    let _ = writeln!(
        m,
        "\nfault: one read of a word of B, whose pages a launch bound read-write before (device-owned), on a 2 MiB \
         block of its own per sample; the kernel uses only A. alloc: `svm.alloc(4096)`; free: `svm.free` of a 4 KiB \
         allocation made before. ratio: during / idle. kernel left at op start: from the timed operation's start to \
         the long launch's return; an operation that waits for the kernel (the runtime's lock held across it) takes \
         about that long. pool: where device pages live (host-mapped: migration is a CPU copy; staged: copies \
         through the queue; sparse: bound memory blocks; arena in place: nothing migrates)."
    );
    let _ = writeln!(
        m,
        "\n### Launch queues: two threads launching on two queues vs one thread{}\n",
        if o.quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(
        m,
        "- same command and runs as above, fault backend uffd; medians of {} rounds, the variants interleaved in each",
        o.queue_rounds
    );
    let _ = writeln!(
        m,
        "- short kernel: the long kernel's loop {short_iters} times (about {} ms), one workgroup of 64 invocations over \
         one page of its own vector; N = {} launches per thread\n",
        o.short.as_millis(),
        o.per_thread
    );
    m.push_str(&threads_table(&queue_rows));
    let _ = writeln!(
        m,
        "\none thread: one thread, one queue, 2N launches alternating between the two vectors, each \
         `launch(..).wait()`ed before the next. two threads: a queue and a vector each, N launches each, each waited \
         before the next (`std::thread::scope`, timed from a barrier to both joins). two threads / one thread: one \
         thread's time over two threads'. queued floor: one thread submits all 2N on one queue without waiting, then \
         waits for all: the device's own rate (nothing waits on the host between kernels), so its ms per launch is \
         about one kernel's, and one thread's ms per launch minus it is the host round trip a second thread could \
         hide. Every queue submits to the device's one GPU queue: kernels run one after another; on lavapipe \
         `vkQueueSubmit` also returns only once the submission before it has run (a queue is about one kernel \
         deep there)."
    );
    let _ = writeln!(
        m,
        "\n### Launch queues: many small launches back to back on one queue{}\n",
        if o.quick { " (quick run)" } else { "" }
    );
    let _ = writeln!(
        m,
        "- same command and runs as above, fault backend uffd; medians of {} rounds, the variants interleaved in \
         each; no CPU access to the data inside a timed run (results checked after each run)",
        o.queue_rounds
    );
    let _ = writeln!(
        m,
        "- dependent chain: M = {} launches of `dst[i] = src[i] * 3 + k` over {CHAIN_WORDS} u32 (16 KiB), ping-pong \
         between two vectors, both device-owned before the timed run",
        o.chain
    );
    let _ = writeln!(
        m,
        "- BFS: a bottom-up level kernel over the CSR arrays of a {GRID} × {GRID} grid (4-neighbours, {} vertices), \
         K = {} levels from a corner; CSR arrays advised `ReadMostly` (as the BFS demo), levels reset on the device \
         before each run",
        GRID * GRID,
        o.levels
    );
    let _ = writeln!(
        m,
        "- both kernels run one workgroup of 64 invocations (on lavapipe: one CPU, the other left to the launching \
         thread, as for the long kernel above)\n"
    );
    m.push_str(&chain_table(&queue_rows));
    let _ = writeln!(
        m,
        "\nsync: `svm.launch` each (submit + wait). queued: each `LaunchQueue::launch`ed with raw bindings (the next \
         reads what this one writes) without waiting, then every handle waited in order; submit: until the last \
         `launch` returned. saved: sync minus queued per launch, the host round trip a queue saves. in flight: \
         `LaunchQueue::in_flight()` right after the last submit: launches not retired yet (how many of them are \
         done on the GPU depends on when the completion thread ran; 1: every launch was retired before the next one \
         was submitted, as where a launch waits for one in flight whose pages it shares). On lavapipe \
         `vkQueueSubmit` itself returns only once the submission before it has run, so a queued launch's host \
         work overlaps the kernel before it, no more. \
         submitted → retired: the statistics' `kernel_ns` over the synchronous chain, per launch (`launches` counts \
         M in both variants). pages moved: h2d + d2h pages in the timed run (the most of any round).\n"
    );
    m.push_str(&bfs_table(&queue_rows));
    let _ = writeln!(
        m,
        "\nsync: `svm.launch` per level. sync + flag: the CPU clears `flag[0]` before each level and reads it after \
         (a level-synchronous BFS learning whether to go on: a CPU fault each way). queued: the K levels submitted \
         without waiting (a BFS must then know K beforehand, or run past its last level), then every handle waited; \
         in parentheses: until the last `launch` returned. in flight: as for the chain. pages moved per level: \
         h2d + d2h pages of the flag variant over K."
    );
    println!("\n{m}");
    std::fs::create_dir_all(&o.out).expect("create results dir");
    std::fs::write(o.out.join("concurrency.md"), &m).expect("write concurrency.md");
    eprintln!("wrote {}/concurrency.md in {total:.0} s", o.out.display());
}
