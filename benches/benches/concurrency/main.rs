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
//! the sparse mode (and staged: its blocks copied through the queue, as on
//! a discrete GPU), and the coherent mode (nothing migrates, so no fault
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
//! once the submission before it has run; launches queued behind a running
//! one wait in the runtime's open batch instead and go to the GPU together,
//! one submission, once it is done ("queued: submissions"), so the
//! launching thread never waits for the device to take a submission.
//!
//! ```text
//! cargo bench -p svm-benches --bench concurrency            # ~1 s kernel, 5 rounds (queues: 9)
//! cargo bench -p svm-benches --bench concurrency -- --quick # ~0.5 s kernel, 2 rounds (3); results/quick/
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{gpu_required, machine, median, ModePath as Path};
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
        let quick = common::quick();
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
            out: common::out_dir(quick),
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
        self.rounds * (self.idle_per_round + 3)
    }
}

const PATHS: [Path; 5] = [
    Path { name: "software", mode: MappingMode::Software, host_mapped_pool: true },
    Path { name: "staged", mode: MappingMode::Software, host_mapped_pool: false },
    Path { name: "sparse", mode: MappingMode::Sparse, host_mapped_pool: true },
    Path { name: "sparse staged", mode: MappingMode::Sparse, host_mapped_pool: false },
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

    /// Run `op` on this thread while the long kernel runs (queued, its
    /// handle leaked so that its borrow of A ends) and another thread,
    /// started `delay` before `op`, reads A: its CPU fault waits for the
    /// kernel. Returns `op`'s result, its time (ms), and whether that
    /// thread was still waiting when `op` ended.
    fn while_a_fault_waits<R>(&mut self, delay: Duration, op: impl FnOnce(&Svm) -> R) -> (R, f64, bool) {
        self.while_another_thread(
            delay,
            |_, a| {
                std::hint::black_box(a[0]);
            },
            op,
        )
    }

    /// [`Self::while_a_fault_waits`] with any `waiter` (given the runtime
    /// and A) on the other thread.
    fn while_another_thread<R>(
        &mut self,
        delay: Duration,
        waiter: impl FnOnce(&Svm, &ManagedVec<u32>) + Send,
        op: impl FnOnce(&Svm) -> R,
    ) -> (R, f64, bool) {
        let Self { svm, spin, a, iters, .. } = self;
        let svm = &*svm;
        let q = svm.create_queue();
        let p = P { v: *iters, pad: [0; 3] };
        {
            let binds = [Binding::read_write(a), Binding::uniform(&p)];
            let pending = q
                .launch(spin, &LaunchDescriptor { bindings: &binds, workgroups: [1, 1, 1], ..Default::default() })
                .expect("spin launch");
            std::mem::forget(pending);
        }
        let waiting = AtomicBool::new(true);
        let a = &*a;
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                waiter(svm, a);
                waiting.store(false, Ordering::SeqCst);
            });
            std::thread::sleep(delay);
            let t = Instant::now();
            let value = op(svm);
            let op_ms = t.elapsed().as_secs_f64() * 1e3;
            let still = waiting.load(Ordering::SeqCst);
            waiter.join().expect("waiter thread");
            // The kernel is done before the next sample (a read of A waits
            // for it): a waiter that did not wait for it must not leave it
            // running into the next measurement.
            std::hint::black_box(a[0]);
            (value, op_ms, still)
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
    /// Faults during the kernel while another thread's fault waits for
    /// it (on the kernel's own data), ms; and how many of them ended while
    /// that thread still waited.
    behind: Vec<f64>,
    behind_early: usize,
    /// `alloc(4096)` + `free` during the kernel while another thread's
    /// fault on B (not the kernel's data) copies back (on the staged path
    /// its copy queues behind the kernel on a one-queue device), ms; and
    /// how many ended while that fault still waited.
    beside_copy: Vec<f64>,
    beside_copy_early: usize,
    /// alloc + free while another thread's launch on new data waits behind
    /// the kernel (sparse: binding its pages), ms; and how many ended first.
    beside_launch: Vec<f64>,
    beside_launch_early: usize,
    /// alloc + free while another thread's application pass runs
    /// (`with_bindings`), ms; and how many ended while its scope was open.
    beside_app: Vec<f64>,
    beside_app_early: usize,
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
        behind: Vec::new(),
        behind_early: 0,
        beside_copy: Vec::new(),
        beside_copy_early: 0,
        beside_launch: Vec::new(),
        beside_launch_early: 0,
        beside_app: Vec::new(),
        beside_app_early: 0,
    };
    let writer = ctx
        .svm
        .create_kernel(&KernelDescriptor { label: "writer (other thread)", source: WRITER, entry_point: "main" })
        .expect("kernel compiles");
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
            let (r, ms, early) = ctx.while_a_fault_waits(o.delay, |svm| fault_read(svm, b, slot));
            slot += 1;
            row.faults.push(r);
            row.behind.push(ms);
            row.behind_early += usize::from(early);
            let read = |svm: &Svm, _: &ManagedVec<u32>| {
                fault_read(svm, b, slot);
            };
            let ((), ms, early) = ctx.while_another_thread(o.delay, read, |svm| {
                let p = svm.alloc(4096).expect("alloc");
                svm.free(p.as_ptr()).expect("free");
            });
            slot += 1;
            row.beside_copy.push(ms);
            row.beside_copy_early += usize::from(early);
        }
        // Another thread launches on new data (its own queue): the launch
        // queues behind the kernel (sparse: its pages' bind waits for it).
        let mut c = ctx.svm.alloc_vec::<u32>(SLOT_PAGES * PAGE_WORDS).expect("C");
        let cm = &mut c;
        let writer = &writer;
        let launch_c = move |svm: &Svm, _: &ManagedVec<u32>| {
            let q = svm.create_queue();
            let p = P { v: TAG, pad: [0; 3] };
            let binds = [Binding::read_write(cm), Binding::uniform(&p)];
            let wg = [u32::try_from(SLOT_PAGES.div_ceil(64)).expect("small"), 1, 1];
            q.launch(writer, &LaunchDescriptor { bindings: &binds, workgroups: wg, ..Default::default() })
                .expect("writer launch")
                .wait()
                .expect("writer");
        };
        let ((), ms, early) = ctx.while_another_thread(o.delay, launch_c, |svm| {
            let p = svm.alloc(4096).expect("alloc");
            svm.free(p.as_ptr()).expect("free");
        });
        assert_eq!(c[PAGE_WORDS], 1 ^ TAG, "the other thread's launch");
        drop(c);
        row.beside_launch.push(ms);
        row.beside_launch_early += usize::from(early);
        // Another thread's application pass (`with_bindings`), as long.
        let (ms, early) = ctx.while_an_app_pass(o.delay, |svm| {
            let p = svm.alloc(4096).expect("alloc");
            svm.free(p.as_ptr()).expect("free");
        });
        row.beside_app.push(ms);
        row.beside_app_early += usize::from(early);

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
mod app_pass;
mod queues;
mod report;
use queues::*;
use report::*;

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
         allocation made before. another thread's fault waiting for the kernel: that thread reads A (the kernel's \
         own data) first, then this thread faults on B. alloc + free beside another thread's fault copying back: \
         that thread reads B (a fault on data the kernel does not use) first; on the staged path (and the sparse \
         mode's staged blocks) its copy back goes through the device's one queue, behind the kernel, and is waited \
         for with the runtime's update lock released (before: under it, so this thread's alloc waited for the \
         kernel too). alloc + free beside another thread's launch on new data: that thread launches a kernel \
         over 2 MiB allocated just before, on a queue of its own (queued behind the long kernel; in the sparse \
         mode its pages' bind waits for the kernel, and is sent with the update lock released: before, under it). \
         alloc + free beside another thread's application pass: no launch; that thread's `with_bindings` over a \
         vector of its own runs the long kernel's code on an application pipeline, submitted inside `f` (before, \
         `f` and the wait for its work held the update lock). ratio: during / idle. kernel left at op start: from the timed operation's start to \
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
         hide. Every queue submits to the device's one GPU queue: kernels run one after another."
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
         was submitted, as where a launch waits for one in flight whose pages it shares). submissions: \
         `Stats::pass_submissions` over the queued run: launches queued behind a running one wait in the \
         runtime's open batch and go as one submission (at most 32 passes) once the GPU is done with the one \
         before (on lavapipe `vkQueueSubmit` itself returns only once the submission before it has run). \
         submitted → retired: the statistics' `kernel_ns` over the synchronous chain, per launch (`launches` counts \
         M in both variants). pages moved: h2d + d2h pages in the timed run (the most of any round).\n"
    );
    m.push_str(&bfs_table(&queue_rows));
    let _ = writeln!(
        m,
        "\nsync: `svm.launch` per level. sync + flag: the CPU clears `flag[0]` before each level and reads it after \
         (a level-synchronous BFS learning whether to go on: a CPU fault each way). queued: the K levels submitted \
         without waiting (a BFS must then know K beforehand, or run past its last level), then every handle waited; \
         in parentheses: until the last `launch` returned. in flight, submissions: as for the chain. pages moved per level: \
         h2d + d2h pages of the flag variant over K."
    );
    println!("\n{m}");
    std::fs::create_dir_all(&o.out).expect("create results dir");
    std::fs::write(o.out.join("concurrency.md"), &m).expect("write concurrency.md");
    eprintln!("wrote {}/concurrency.md in {total:.0} s", o.out.display());
}
