//! The stress engine shared by `stress::short_stress` (conformance test)
//! and `examples/stress.rs` (soak mode).
//!
//! Worker threads each own a few managed arrays and a plain `Vec` copy of
//! each (the reference model). They read and write them on the CPU at
//! random, launch kernels on them (declared and replayable, and the
//! application's own passes through `with_bindings`), prefetch and
//! advise them, free them and allocate new ones, all at once, against one
//! runtime with a small device pool (so launches evict each other's pages).
//! Every read is compared with the model, and every array is compared in
//! full before it is freed and at the end.
//!
//! The concurrency contract is kept: a thread launches only on its own
//! arrays, and holds no reference into them while it does (launch is
//! synchronous on the calling thread); no thread touches another's arrays.
//!
//! With `Config::mirror_pool`, a second runtime mirrors the arena
//! (`Svm::mirror`: another logical device) and each operation of the
//! mixed and kernel workers picks one of the two at random: an array's
//! pages move between the devices, and CPU faults go to whichever has them.
//!
//! Queue workers (`stress_queues.rs`) do the same with launches that do not
//! wait: on launch queues shared between them, handles held while the
//! thread works on other data, waited for in a random order, some leaked.
//!
//! A watchdog thread ends the process (exit code 3, after printing each
//! thread's current operation and the runtime's statistics) when no
//! operation completes for `watchdog`: a deadlock is reported, not hung on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use svm::{Access, Advice, Arg, Kernel, KernelDescriptor, LaunchDescriptor, LaunchOptions, Location, ManagedVec, Svm};

#[path = "../support/app.rs"]
mod app;
#[path = "stress_queues.rs"]
mod queues;
#[path = "stress_report.rs"]
mod report;
use report::merge;
pub use report::Report;

// AFFINE and FILL are shared with the GPU tests (and this file's example).
#[path = "../support/kernels.rs"]
mod kernels;
pub use kernels::{AFFINE, FILL};
/// dst[i] = dst[i] + src[i] * mul, i < n. Args: src, dst, n, mul.
const ADD_SRC: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let src = svm_arg_ptr(0u); let dst = svm_arg_ptr(2u); let n = svm_arg_u32(4u); let mul = svm_arg_u32(5u);
    for (var i = g.x; i < n; i += nw.x * 64u) {
        let q = svm_index(dst, i, 4u);
        svm_store_u32(q, svm_load_u32(q) + svm_load_u32(svm_index(src, i, 4u)) * mul);
    }
}";

/// b[i] = b[i] * p.x + p.y over the bound array (a kernel of plain
/// bindings: no prelude).
const SCALE_BOUND: &str = "@group(0) @binding(0) var<storage, read_write> b: array<u32>;
@group(0) @binding(1) var<uniform> p: vec4<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let n = arrayLength(&b);
    for (var i = g.x; i < n; i += nw.x * 64u) { b[i] = b[i] * p.x + p.y; }
}";
/// b[i] = i * p.x + p.y over the whole bound array (bound `write_discard`).
const FILL_BOUND: &str = "@group(0) @binding(0) var<storage, read_write> b: array<u32>;
@group(0) @binding(1) var<uniform> p: vec4<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let n = arrayLength(&b);
    for (var i = g.x; i < n; i += nw.x * 64u) { b[i] = i * p.x + p.y; }
}";

/// The stress's kernels.
struct Kernels {
    affine: Kernel,
    fill: Kernel,
    add_src: Kernel,
    scale_bound: Kernel,
    /// SCALE_BOUND as the application's own pipeline (`with_bindings`).
    app_scale: svm::wgpu::ComputePipeline,
    fill_bound: Kernel,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub duration: Duration,
    /// Mixed CPU / kernel workers.
    pub workers: usize,
    /// Workers that mostly launch kernels (on their own arrays).
    pub kernel_workers: usize,
    /// Workers that launch on launch queues and hold, wait for in any
    /// order or leak the handles while working on other data.
    pub queue_workers: usize,
    /// Launch queues the queue workers share.
    pub queues: usize,
    pub seed: u64,
    /// No completed operation for this long = deadlock.
    pub watchdog: Duration,
    /// Largest array, in u32 words (some arrays are 2 MiB+ regardless).
    pub max_words: usize,
    /// A mirror of the runtime (another logical device) with this pool,
    /// used by the mixed and kernel workers beside the runtime itself.
    pub mirror_pool: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(8),
            workers: 3,
            kernel_workers: 1,
            queue_workers: 2,
            queues: 3,
            seed: 0x5eed,
            watchdog: Duration::from_secs(60),
            max_words: 96 * 1024,
            mirror_pool: None,
        }
    }
}

#[derive(Default)]
struct Shared {
    ops: AtomicU64,
    stop: AtomicBool,
    current: Vec<Mutex<String>>,
    report: Mutex<Report>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }
}

struct Buf {
    v: ManagedVec<u32>,
    model: Vec<u32>,
}

struct Worker<'a> {
    id: usize,
    /// The runtimes mirroring the arena and their kernels: each operation
    /// picks one (the fields below are the pick).
    devs: &'a [(&'a Svm, &'a Kernels)],
    svm: &'a Svm,
    affine: &'a Kernel,
    app_scale: &'a svm::wgpu::ComputePipeline,
    fill: &'a Kernel,
    add_src: &'a Kernel,
    shared: &'a Shared,
    rng: Rng,
    bufs: Vec<Buf>,
    max_words: usize,
    local: Report,
    /// The last operations, for a mismatch report.
    recent: Vec<String>,
}

fn wg(n: usize) -> [u32; 3] {
    [((n as u32).div_ceil(64)).clamp(1, 256), 1, 1]
}

impl Worker<'_> {
    fn note(&mut self, what: String) {
        *self.shared.current[self.id].lock().expect("current") = what.clone();
        if self.recent.len() == 16 {
            self.recent.remove(0);
        }
        self.recent.push(what);
    }

    fn error(&mut self, what: String) {
        eprintln!("stress worker {}: ERROR {what}", self.id);
        self.local.errors.push(what);
    }

    fn new_buf(&mut self) -> Option<Buf> {
        let words = if self.rng.below(12) == 0 {
            // A 2 MiB-aligned one now and then.
            (2 << 20) / 4 + self.rng.below(4096)
        } else {
            1 + self.rng.below(self.max_words)
        };
        let seed = self.rng.u32();
        let model: Vec<u32> = (0..words as u32).map(|i| i.wrapping_mul(2_654_435_761) ^ seed).collect();
        match self.svm.alloc_from_slice(&model) {
            Ok(v) => {
                self.local.allocs += 1;
                Some(Buf { v, model })
            }
            Err(e) => {
                self.error(format!("alloc of {words} words: {e}"));
                None
            }
        }
    }

    fn check(&mut self, b: usize, lo: usize, hi: usize) {
        let buf = &self.bufs[b];
        let got = &buf.v[lo..hi];
        let want = &buf.model[lo..hi];
        self.local.checked_bytes += ((hi - lo) * 4) as u64;
        if got != want {
            let bad: Vec<usize> = (lo..hi).filter(|&i| buf.v[i] != buf.model[i]).collect();
            let first = bad[0];
            let msg = format!(
                "MISMATCH worker {} buf {:#x} ({} words): {} words differ in [{lo}, {hi}); first [{first}] = {:#x}, model {:#x}; recent ops: {:?}",
                self.id,
                buf.v.as_ptr() as usize,
                buf.v.len(),
                bad.len(),
                buf.v[first],
                buf.model[first],
                self.recent
            );
            self.local.mismatches += bad.len() as u64;
            eprintln!("{msg}");
            // Resynchronise so one corruption is reported once.
            let b = &mut self.bufs[b];
            for i in bad {
                b.model[i] = b.v[i];
            }
        }
    }

    /// `b[i] = b[i] * mul + add` over buffer `b` in the application's own
    /// pass (`with_bindings`), submitted inside the scope.
    fn app_scale(&mut self, b: usize, mul: u32, add: u32) -> Result<(), svm::LaunchError> {
        use svm::wgpu;
        use wgpu::util::DeviceExt as _;
        let (svm, pipeline) = (self.svm, self.app_scale);
        let buf = &mut self.bufs[b];
        let groups = wg(buf.v.len())[0];
        let u = svm.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("stress app scale"),
            contents: bytemuck::cast_slice(&[mul, add, 0u32, 0]),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        svm.with_bindings(&[svm::Binding::read_write(&mut buf.v)], |views| {
            let resources = [wgpu::BindingResource::Buffer(views[0].clone()), u.as_entire_binding()];
            app::app_pass(svm, pipeline, &resources, groups);
        })
    }

    fn range(&mut self, len: usize) -> (usize, usize) {
        let a = self.rng.below(len);
        let n = 1 + self.rng.below(4096.min(len - a));
        (a, a + n)
    }

    fn step(&mut self, kernels_mostly: bool) {
        if self.devs.len() > 1 {
            let (svm, k) = self.devs[self.rng.below(self.devs.len())];
            (self.svm, self.affine, self.app_scale, self.fill, self.add_src) =
                (svm, &k.affine, &k.app_scale, &k.fill, &k.add_src);
        }
        if self.bufs.is_empty() {
            if let Some(b) = self.new_buf() {
                self.bufs.push(b);
            }
            return;
        }
        let b = self.rng.below(self.bufs.len());
        let len = self.bufs[b].v.len();
        let dice =
            if kernels_mostly { [5, 10, 70, 80, 84, 88, 90, 91, 100] } else { [25, 50, 62, 68, 71, 77, 82, 85, 100] };
        let r = self.rng.below(100);
        if r < dice[0] {
            // CPU write of a random range.
            let (lo, hi) = self.range(len);
            let x = self.rng.u32();
            self.note(format!("cpu write buf {b} [{lo}, {hi})"));
            let buf = &mut self.bufs[b];
            for i in lo..hi {
                let val = x.wrapping_add(i as u32);
                buf.v[i] = val;
                buf.model[i] = val;
            }
            self.local.cpu_writes += 1;
        } else if r < dice[1] {
            // CPU read, checked: a range, or all of it.
            let (lo, hi) = if self.rng.below(6) == 0 { (0, len) } else { self.range(len) };
            self.note(format!("cpu read buf {b} [{lo}, {hi})"));
            self.check(b, lo, hi);
            self.local.cpu_reads += 1;
        } else if r < dice[2] && self.rng.below(4) == 0 {
            // The same through the application's own pipeline and pass.
            let (mul, add) = (self.rng.u32() | 1, self.rng.u32());
            self.note(format!("with_bindings scale buf {b} ({len} words)"));
            match self.app_scale(b, mul, add) {
                Ok(()) => self.bufs[b].model.iter_mut().for_each(|x| *x = x.wrapping_mul(mul).wrapping_add(add)),
                Err(e) => self.error(format!("with_bindings: {e}")),
            }
            self.local.launches += 1;
            self.local.app_passes += 1;
        } else if r < dice[2] {
            let (mul, add) = (self.rng.u32() | 1, self.rng.u32());
            self.note(format!("launch affine buf {b} ({len} words)"));
            let buf = &mut self.bufs[b];
            let args = [Arg::ptr(buf.v.as_ptr()), Arg::U32(len as u32), Arg::U32(mul), Arg::U32(add)];
            let res = self.svm.launch(
                self.affine,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read_write(&mut buf.v)],
                    bindings: &[],
                    workgroups: wg(len),
                },
            );
            match res {
                Ok(()) => buf.model.iter_mut().for_each(|x| *x = x.wrapping_mul(mul).wrapping_add(add)),
                Err(e) => self.error(format!("launch affine: {e}")),
            }
            self.local.launches += 1;
        } else if r < dice[3] {
            if self.bufs.len() < 2 {
                return;
            }
            let s = (b + 1 + self.rng.below(self.bufs.len() - 1)) % self.bufs.len();
            let mul = self.rng.u32();
            self.note(format!("launch add_src buf {s} -> buf {b}"));
            let (src, dst) = if s < b {
                let (x, y) = self.bufs.split_at_mut(b);
                (&x[s], &mut y[0])
            } else {
                let (x, y) = self.bufs.split_at_mut(s);
                (&y[0], &mut x[b])
            };
            let n = src.v.len().min(dst.v.len());
            let args = [Arg::ptr(src.v.as_ptr()), Arg::ptr(dst.v.as_ptr()), Arg::U32(n as u32), Arg::U32(mul)];
            let res = self.svm.launch(
                self.add_src,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read(&src.v), Access::read_write(&mut dst.v)],
                    bindings: &[],
                    workgroups: wg(n),
                },
            );
            match res {
                Ok(()) => {
                    for i in 0..n {
                        dst.model[i] = dst.model[i].wrapping_add(src.model[i].wrapping_mul(mul));
                    }
                }
                Err(e) => self.error(format!("launch add_src: {e}")),
            }
            self.local.launches += 1;
        } else if r < dice[4] {
            // Replayable, nothing declared: the kernel discovers its pages.
            // Passes may be repeated, so the kernel must be idempotent.
            let (mul, add) = (self.rng.u32() | 1, self.rng.u32());
            self.note(format!("replayable fill buf {b} ({len} words)"));
            let buf = &mut self.bufs[b];
            let args = [Arg::ptr(buf.v.as_ptr()), Arg::U32(len as u32), Arg::U32(mul), Arg::U32(add)];
            // No reference into buf.v is alive during the call (this thread
            // is the only user and is inside it).
            let res = self.svm.launch_with(
                self.fill,
                &LaunchDescriptor { args: &args, access: &[], bindings: &[], workgroups: wg(len) },
                // SAFETY: as said above, no reference into any buffer is
                // alive while the kernel runs; it writes only buf.v.
                &unsafe { LaunchOptions::replayable().allow_undeclared_writes() },
            );
            let res = match res {
                // Known runtime bug (conformance test
                // `bad_input::replayable_launch_evicts_under_pressure`): a
                // replayable launch maps every device-owned page, so none
                // can be evicted for it and it fails with PoolExhausted
                // when other arrays fill the pool. Passes may have run:
                // finish the job with a declared launch (the result does
                // not depend on what the failed one did).
                Err(svm::LaunchError::PoolExhausted { .. }) => {
                    self.local.known_replay_pool_exhausted += 1;
                    self.svm
                        .launch(
                            self.fill,
                            &LaunchDescriptor {
                                args: &args,
                                access: &[Access::read_write(&mut buf.v)],
                                bindings: &[],
                                workgroups: wg(len),
                            },
                        )
                        .map(|()| Default::default())
                }
                other => other,
            };
            match res {
                Ok(_) => {
                    for (i, x) in buf.model.iter_mut().enumerate() {
                        *x = (i as u32).wrapping_mul(mul).wrapping_add(add);
                    }
                }
                Err(e) => self.error(format!("replayable launch: {e}")),
            }
            self.local.replayable_launches += 1;
        } else if r < dice[5] {
            // Free one, allocate another.
            self.note(format!("free buf {b}, alloc"));
            self.check(b, 0, len);
            drop(self.bufs.swap_remove(b));
            self.local.frees += 1;
            if self.bufs.len() < 4 {
                if let Some(nb) = self.new_buf() {
                    self.bufs.push(nb);
                }
            }
            if self.bufs.len() < 2 {
                if let Some(nb) = self.new_buf() {
                    self.bufs.push(nb);
                }
            }
        } else if r < dice[6] {
            let to = if self.rng.below(2) == 0 { Location::Device } else { Location::Host };
            self.note(format!("prefetch buf {b} to {to:?}"));
            let p = self.bufs[b].v.as_ptr().cast::<u8>();
            match self.svm.prefetch(p, len * 4, to).wait() {
                Ok(_) => {}
                // Known runtime bug (conformance test
                // `bad_input::prefetch_after_launch_evicts_under_pressure`):
                // the previous launch's pages are not evictable for a
                // prefetch. A prefetch moves no data, so nothing to redo.
                Err(svm::LaunchError::PoolExhausted { .. }) => self.local.known_prefetch_pool_exhausted += 1,
                Err(e) => self.error(format!("prefetch: {e}")),
            }
            self.local.prefetches += 1;
        } else if r < dice[7] {
            let advice = [
                Advice::ReadMostly,
                Advice::UnsetReadMostly,
                Advice::PreferredLocation(Location::Host),
                Advice::PreferredLocation(Location::Device),
                Advice::UnsetPreferredLocation,
            ][self.rng.below(5)];
            self.note(format!("advise buf {b} {advice:?}"));
            let p = self.bufs[b].v.as_ptr().cast::<u8>();
            if let Err(e) = self.svm.advise(p, len * 4, advice) {
                self.error(format!("advise: {e}"));
            }
            self.local.advises += 1;
        } else {
            // Scattered read-modify-writes (write faults on device pages,
            // write-protect faults on ReadMostly copies).
            self.note(format!("cpu rmw buf {b}"));
            let k = 1 + self.rng.below(64);
            for _ in 0..k {
                let i = self.rng.below(len);
                let buf = &mut self.bufs[b];
                let got = buf.v[i];
                if got != buf.model[i] {
                    self.local.mismatches += 1;
                    eprintln!(
                        "MISMATCH worker {} rmw buf {:#x}[{i}] = {got:#x}, model {:#x}; recent {:?}",
                        self.id,
                        buf.v.as_ptr() as usize,
                        buf.model[i],
                        self.recent
                    );
                    buf.model[i] = got;
                }
                let buf = &mut self.bufs[b];
                buf.v[i] = got.wrapping_add(1);
                buf.model[i] = got.wrapping_add(1);
            }
            self.local.cpu_writes += 1;
            self.local.cpu_reads += 1;
        }
    }
}

fn run_worker(devs: &[(&Svm, &Kernels)], shared: &Shared, cfg: &Config, id: usize, kernels_mostly: bool) {
    let (svm, k) = devs[0];
    let mut w = Worker {
        id,
        devs,
        svm,
        affine: &k.affine,
        app_scale: &k.app_scale,
        fill: &k.fill,
        add_src: &k.add_src,
        shared,
        rng: Rng(cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(id as u64 * 7919 + 1) | 1),
        bufs: Vec::new(),
        max_words: cfg.max_words,
        local: Report::default(),
        recent: Vec::new(),
    };
    for _ in 0..3 {
        if let Some(b) = w.new_buf() {
            w.bufs.push(b);
        }
    }
    while !shared.stop.load(Relaxed) {
        w.step(kernels_mostly);
        w.local.ops += 1;
        shared.ops.fetch_add(1, Relaxed);
    }
    w.note("final check".into());
    for b in 0..w.bufs.len() {
        let len = w.bufs[b].v.len();
        w.check(b, 0, len);
    }
    w.local.frees += w.bufs.len() as u64;
    drop(core::mem::take(&mut w.bufs));
    w.note("done".into());
    merge(&shared.report, &w.local);
}

fn run_queue_worker(svm: &Svm, k: &Kernels, queues: &[svm::LaunchQueue], shared: &Shared, cfg: &Config, id: usize) {
    let mut w = queues::QueueWorker {
        id,
        svm,
        k,
        queues,
        shared,
        rng: Rng(cfg.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(id as u64 * 7919 + 1) | 1),
        bufs: Vec::new(),
        max_words: cfg.max_words,
        local: Report::default(),
        recent: Vec::new(),
    };
    queues::run_queue_worker(&mut w);
    w.note("done".into());
    merge(&shared.report, &w.local);
}

/// Run the stress on `svm` for `cfg.duration`.
pub fn run(svm: &Svm, cfg: &Config) -> Report {
    let kernels = |svm: &Svm| {
        let kernel = |label, source| {
            svm.create_kernel(&KernelDescriptor { label, source, entry_point: "main" }).expect("kernel")
        };
        Kernels {
            affine: kernel("stress affine", AFFINE),
            fill: kernel("stress fill", FILL),
            add_src: kernel("stress add_src", ADD_SRC),
            scale_bound: kernel("stress scale (bound)", SCALE_BOUND),
            fill_bound: kernel("stress fill (bound)", FILL_BOUND),
            app_scale: app::app_pipeline(svm, "stress app scale", SCALE_BOUND),
        }
    };
    let k = kernels(svm);
    let mirror = cfg.mirror_pool.map(|pool| {
        let m = svm.mirror(&svm::SvmDescriptor::default().pool_size(pool)).expect("mirror");
        let km = kernels(&m);
        (m, km)
    });
    let mut devs: Vec<(&Svm, &Kernels)> = vec![(svm, &k)];
    if let Some((m, km)) = &mirror {
        devs.push((m, km));
    }
    let queues: Vec<svm::LaunchQueue> = (0..cfg.queues.max(1)).map(|_| svm.create_queue()).collect();
    let threads = cfg.workers + cfg.kernel_workers + cfg.queue_workers;
    let shared =
        Shared { current: (0..threads).map(|_| Mutex::new(String::from("starting"))).collect(), ..Shared::default() };
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let shared = &shared;
        let (k, queues, devs) = (&k, &queues[..], &devs[..]);
        // Watchdog.
        s.spawn(move || {
            let mut last = shared.ops.load(Relaxed);
            let mut since = Instant::now();
            while !shared.stop.load(Relaxed) || shared.current.iter().any(|c| *c.lock().expect("c") != "done") {
                std::thread::sleep(Duration::from_millis(200));
                let now = shared.ops.load(Relaxed);
                if now != last {
                    last = now;
                    since = Instant::now();
                } else if since.elapsed() > cfg.watchdog {
                    eprintln!("STRESS WATCHDOG: no operation completed for {:?}: deadlock suspected", cfg.watchdog);
                    for (i, c) in shared.current.iter().enumerate() {
                        // try_lock: the dump itself must not hang.
                        match c.try_lock() {
                            Ok(g) => eprintln!("  thread {i}: {}", *g),
                            Err(_) => eprintln!("  thread {i}: <busy>"),
                        }
                    }
                    eprintln!("  runtime statistics:\n{}", svm.stats());
                    std::process::exit(3);
                }
                if t0.elapsed() >= cfg.duration {
                    shared.stop.store(true, Relaxed);
                }
            }
        });
        for id in 0..threads {
            if id >= cfg.workers + cfg.kernel_workers {
                s.spawn(move || run_queue_worker(svm, k, queues, shared, cfg, id));
            } else {
                let kernels_mostly = id >= cfg.workers;
                s.spawn(move || run_worker(devs, shared, cfg, id, kernels_mostly));
            }
        }
    });
    for q in &queues {
        q.finish();
    }
    if let Some((m, _)) = &mirror {
        assert_eq!(m.device_resident_pages(), 0, "the arrays were freed: nothing left on the mirror's device");
    }
    drop(devs);
    drop(mirror);
    let mut r = shared.report.into_inner().expect("report");
    r.elapsed = t0.elapsed();
    r.stats = Some(svm.stats());
    r
}
