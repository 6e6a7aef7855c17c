//! Launch-queue measurements: two threads on two queues, many small launches
//! (a dependent chain, BFS levels) synchronous vs queued.

use super::*;

pub(super) const CHAIN: &str = "struct P { v: u32, pad0: u32, pad1: u32, pad2: u32 }
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
pub(super) const BFS_LEVEL: &str = "struct P { v: u32, pad0: u32, pad1: u32, pad2: u32 }
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
pub(super) const BFS_INIT: &str = "@group(0) @binding(0) var<storage, read_write> level: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&level)) { level[g.x] = select(0xffffffffu, 0u, g.x == 0u); }
}";

pub(super) const UNREACHED: u32 = u32::MAX;
/// Words of each vector of the chain (16 KiB).
pub(super) const CHAIN_WORDS: usize = 4096;
/// The BFS grid's side: `GRID` × `GRID` vertices, 4-neighbours.
pub(super) const GRID: usize = 64;

pub(super) fn compile(svm: &Svm, label: &str, source: &str) -> Kernel {
    svm.create_kernel(&KernelDescriptor { label, source, entry_point: "main" }).expect("kernel compiles")
}

pub(super) fn uniform(v: u32) -> P {
    P { v, pad: [0; 3] }
}

pub(super) fn since_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Pages migrated either way (the statistics' h2d + d2h) from `s0` to now.
pub(super) fn moved_since(svm: &Svm, s0: &Stats) -> u64 {
    let d = svm.stats().since(s0);
    d.h2d_pages + d.d2h_pages
}

/// One row of the two-queue table: totals of `2 × per_thread` launches, ms.
pub(super) struct ThreadsRow {
    /// Launches per thread (N).
    pub(super) per_thread: usize,
    /// One thread, one queue, every launch waited before the next.
    pub(super) one: Vec<f64>,
    /// Two threads, a queue and a vector each, every launch waited.
    pub(super) two: Vec<f64>,
    /// One thread, every launch submitted, then all waited (the device's
    /// own rate: nothing waits on the host between kernels).
    pub(super) floor: Vec<f64>,
}

/// Two threads each launching the short kernel on their own queue and data
/// (waiting each launch before the next) against one thread doing all
/// their launches, rounds interleaved.
pub(super) fn two_queues(o: &Opts, ctx: &Ctx, iters: u32) -> ThreadsRow {
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
pub(super) struct SmallRow {
    /// The chain's launches (M).
    pub(super) chain: usize,
    /// M synchronous `svm.launch`es, ms.
    pub(super) chain_sync: Vec<f64>,
    /// The statistics' `kernel_ns` over the synchronous chain, ms.
    pub(super) chain_sync_kernel: Vec<f64>,
    /// M launches queued without waits: until the last `launch` returned, ms.
    pub(super) chain_submit: Vec<f64>,
    /// ... until every handle was waited for, ms.
    pub(super) chain_queued: Vec<f64>,
    /// Queued launches not retired right after the last one was submitted.
    pub(super) chain_in_flight: Vec<f64>,
    /// Pages migrated during the timed chains (synchronous, queued).
    pub(super) chain_moved: Vec<(u64, u64)>,
    /// Submissions carrying the queued chain's passes (`Stats::pass_submissions`:
    /// launches queued behind a running one go as one batch).
    pub(super) chain_submissions: Vec<f64>,
    /// BFS levels (K).
    pub(super) levels: usize,
    /// K synchronous launches, ms.
    pub(super) bfs_sync: Vec<f64>,
    /// K synchronous launches, the CPU clearing and reading a flag around
    /// each (a level-synchronous BFS learning whether to go on), ms.
    pub(super) bfs_flag: Vec<f64>,
    /// K launches queued without waits, then all waited, ms.
    pub(super) bfs_queued: Vec<f64>,
    /// ... until the last `launch` returned, ms.
    pub(super) bfs_submit: Vec<f64>,
    /// Queued launches not retired right after the last one was submitted.
    pub(super) bfs_in_flight: Vec<f64>,
    /// Submissions carrying the queued levels' passes.
    pub(super) bfs_submissions: Vec<f64>,
    /// Pages migrated during the flag variant.
    pub(super) bfs_flag_moved: Vec<u64>,
    /// The same K levels on plain wgpu buffers (its own device, same
    /// adapter): one submission a level, waited at the end, ms.
    pub(super) bfs_plain_levels: Vec<f64>,
    /// ... all K levels in one submission, ms.
    pub(super) bfs_plain_one: Vec<f64>,
}

/// The BFS on plain wgpu buffers, the explicit baseline of the queued one:
/// the same kernels (bound access runs unchanged on plain buffers), the
/// CSR arrays uploaded once, a uniform and a bind group per level made up
/// front (as an application would).
struct PlainBfs {
    g: crate::common::PlainGpu,
    init: wgpu::ComputePipeline,
    init_bg: wgpu::BindGroup,
    step: wgpu::ComputePipeline,
    level_bgs: Vec<wgpu::BindGroup>,
    level: wgpu::Buffer,
    staging: wgpu::Buffer,
}

impl PlainBfs {
    fn new(k: usize) -> Self {
        use wgpu::util::DeviceExt as _;
        use wgpu::BufferUsages as U;
        let g = crate::common::PlainGpu::new().expect("a plain wgpu device on the same adapter");
        let d = &g.device;
        let pipeline = |label, src: &str| {
            let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
            d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let (init, step) = (pipeline("plain bfs init", BFS_INIT), pipeline("plain bfs level", BFS_LEVEL));
        let (offsets, cols) = grid_csr();
        let init_buf = |label, data: &[u32], usage| {
            d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::cast_slice(data),
                usage,
            })
        };
        let offsets = init_buf("offsets", &offsets, U::STORAGE);
        let cols = init_buf("cols", &cols, U::STORAGE);
        let level = g.buffer("level", GRID * GRID * 4, U::STORAGE | U::COPY_SRC);
        let flag = g.buffer("flag", PAGE_WORDS * 4, U::STORAGE);
        let staging = g.buffer("level readback", GRID * GRID * 4, U::MAP_READ | U::COPY_DST);
        fn entries<'a>(bufs: &[&'a wgpu::Buffer]) -> Vec<wgpu::BindGroupEntry<'a>> {
            (0u32..)
                .zip(bufs)
                .map(|(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
                .collect()
        }
        let init_bg = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("plain bfs init"),
            layout: &init.get_bind_group_layout(0),
            entries: &entries(&[&level]),
        });
        let layout = step.get_bind_group_layout(0);
        let level_bgs = (0..k as u32)
            .map(|v| {
                let u = init_buf("level uniform", &[v, 0, 0, 0], U::UNIFORM);
                d.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("plain bfs level"),
                    layout: &layout,
                    entries: &entries(&[&offsets, &cols, &level, &flag, &u]),
                })
            })
            .collect();
        Self { g, init, init_bg, step, level_bgs, level, staging }
    }

    fn dispatch(enc: &mut wgpu::CommandEncoder, p: &wgpu::ComputePipeline, bg: &wgpu::BindGroup, groups: u32) {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        pass.set_pipeline(p);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(groups, 1, 1);
    }

    /// Every vertex unreached but 0 (untimed).
    fn start(&self) {
        let mut enc = self.g.device.create_command_encoder(&Default::default());
        Self::dispatch(&mut enc, &self.init, &self.init_bg, (GRID * GRID / 64) as u32);
        self.g.queue.submit([enc.finish()]);
        self.g.wait();
    }

    /// The K levels, one submission each (`one`: all in one), then one
    /// wait; ms.
    fn run(&self, one: bool) -> f64 {
        let t = Instant::now();
        if one {
            let mut enc = self.g.device.create_command_encoder(&Default::default());
            for bg in &self.level_bgs {
                Self::dispatch(&mut enc, &self.step, bg, 1);
            }
            self.g.queue.submit([enc.finish()]);
        } else {
            for bg in &self.level_bgs {
                let mut enc = self.g.device.create_command_encoder(&Default::default());
                Self::dispatch(&mut enc, &self.step, bg, 1);
                self.g.queue.submit([enc.finish()]);
            }
        }
        self.g.wait();
        since_ms(t)
    }

    fn levels(&self) -> Vec<u32> {
        let mut out = vec![0u8; GRID * GRID * 4];
        self.g.readback(&self.level, &self.staging, &mut out);
        bytemuck::cast_slice(&out).to_vec()
    }
}

/// What `x -> 3x + p` gives after the prep (`x -> 9x`) and then `p` = 1..=m.
pub(super) fn chain_expected(m: usize) -> Vec<u32> {
    (0..CHAIN_WORDS as u32)
        .map(|i| (1..=m as u32).fold(i.wrapping_mul(9), |x, p| x.wrapping_mul(3).wrapping_add(p)))
        .collect()
}

/// A `GRID` × `GRID` grid's CSR arrays (offsets, neighbours).
pub(super) fn grid_csr() -> (Vec<u32>, Vec<u32>) {
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
pub(super) fn small_launches(o: &Opts, ctx: &Ctx) -> SmallRow {
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
        row.chain_submissions.push(d.pass_submissions as f64);
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
    let plain = PlainBfs::new(k);
    let plain_check = |what: &str| {
        for (i, l) in plain.levels().into_iter().enumerate() {
            let d = (i % GRID + i / GRID) as u32;
            assert_eq!(l, if d as usize <= k { d } else { UNREACHED }, "{what} BFS: vertex {i}");
        }
    };
    plain.start();
    plain.run(true);
    for _ in 0..o.queue_rounds {
        for one in [false, true] {
            plain.start();
            let ms = plain.run(one);
            if one {
                row.bfs_plain_one.push(ms)
            } else {
                row.bfs_plain_levels.push(ms)
            }
            plain_check(if one { "plain, one submission" } else { "plain" });
        }
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
        let s0 = svm.stats();
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
        row.bfs_submissions.push(svm.stats().since(&s0).pass_submissions as f64);
        check(&level, "queued");
    }
    row
}
