//! Graph500-style BFS on a Kronecker graph, two demos:
//!
//! * `bfs`: level-synchronous bottom-up steps. The managed variant follows
//!   CPU pointers (per-vertex record -> neighbour array, pointer access),
//!   the explicit variant runs the same level step over CSR arrays in plain
//!   wgpu buffers. Both are validated with the Graph500 rules and must
//!   agree bit for bit.
//! * `bfs-topdown`: top-down steps with an atomic frontier queue, one bound
//!   kernel (`array<atomic<u32>>` parents and next queue) run on managed CSR
//!   arrays and on plain buffers. Both are validated with the Graph500
//!   rules; levels must agree bit for bit (parents depend on which frontier
//!   vertex claims a neighbour first).

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{bail, Result};
use svm::{Access, Arg, Binding, LaunchDescriptor, ManagedVec};

use crate::explicit::{self, since_ms, Explicit};
use crate::kronecker::{self, Graph};
use crate::util::{grid, kernel, ms, progress, si, warm_up, warm_up_bound, Rng, NULL};
use crate::{AccessStyle, Ctx, Outcome};

const UNREACHED: u32 = u32::MAX;
const ROOTS: usize = 4;
/// Seed of the generator (fixed: runs are reproducible).
const SEED: u64 = 0x0062_a95e_ed00_0001;

/// The managed graph's per-vertex record (16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct VertexRec {
    /// CPU pointer to the neighbour array (0 when `degree` is 0).
    adj: u64,
    degree: u32,
    pad: u32,
}

/// The explicit bottom-up kernel's `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BuParams {
    n: u32,
    cur: u32,
    pad: [u32; 2],
}

/// `bfs_topdown_bound.wgsl`'s `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct TdParams {
    /// Vertices in the frontier queue.
    count: u32,
    /// The frontier's level.
    cur: u32,
    pad: [u32; 2],
}

/// One BFS result.
struct Tree {
    level: Vec<u32>,
    parent: Vec<u32>,
    levels: u32,
    ms: f64,
}

/// The graph and its roots, shared by both BFS demos.
fn setup(ctx: &Ctx, name: &str) -> Result<(u32, Graph, Vec<usize>)> {
    let scale = ctx.scale.unwrap_or(16);
    if !(1..=26).contains(&scale) {
        bail!("--scale {scale}: use 1 ..= 26");
    }
    let n = 1usize << scale;
    println!(
        "[{name}] Kronecker graph, scale {scale} ({n} vertices, {} edges; A={} B={} C={}, edge factor {})",
        kronecker::EDGE_FACTOR * n,
        kronecker::A,
        kronecker::B,
        kronecker::C,
        kronecker::EDGE_FACTOR
    );
    let t = Instant::now();
    let g = kronecker::generate(scale, SEED);
    println!("[{name}] CPU generate + CSR: {:.1} ms, {} adjacency entries", ms(t.elapsed()), g.cols.len());

    let mut rng = Rng::new(0xbf5);
    let mut roots = Vec::new();
    let candidates = (0..g.n).filter(|&v| g.degree(v) > 0).count();
    while roots.len() < ROOTS.min(candidates) {
        let v = rng.below(g.n as u64) as usize;
        if g.degree(v) > 0 && !roots.contains(&v) {
            roots.push(v);
        }
    }
    if roots.is_empty() {
        bail!("the graph has no edges");
    }
    Ok((scale, g, roots))
}

/// Level-synchronous bottom-up BFS: managed (CPU pointers, pointer access)
/// against explicit copies (CSR).
pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let (scale, g, roots) = setup(ctx, "BFS")?;
    let mut managed = Managed::build(ctx, &g)?;
    let ex = ctx.explicit()?;
    let t = Instant::now();
    let ex_graph = ExplicitGraph::upload(ex, &g)?;
    let upload_ms = since_ms(t);
    let wm = warm_up(&ctx.svm, &managed.kernel, &[NULL, NULL, NULL, NULL, Arg::U32(0), Arg::U32(0)])?;
    let we = ex.warm_up(&ex_graph.pipeline, &[1, 2, 3, 4, 5], &BuParams::default())?;
    println!(
        "[BFS] first dispatch (driver compile, untimed below): managed {:.1} ms, explicit {:.1} ms",
        ms(wm),
        ms(we)
    );
    println!("[BFS] explicit: graph upload (CSR, {} MiB): {upload_ms:.1} ms", ((g.cols.len() + g.n + 1) * 4) >> 20);
    if ctx.access == AccessStyle::Bound {
        println!("[BFS] the managed variant follows CPU pointers (pointer access); `bfs-topdown` is the bound one");
    }
    compare(ctx, "BFS", scale, &g, &roots, true, |root| managed.bfs(ctx, root), |root| ex_graph.bfs(ex, root))
}

/// Top-down BFS with an atomic frontier queue, one bound kernel on managed
/// CSR arrays and on plain buffers.
pub fn run_topdown(ctx: &Ctx) -> Result<Outcome> {
    let (scale, g, roots) = setup(ctx, "BFS-TD")?;
    if ctx.access == AccessStyle::Pointer {
        println!("[BFS-TD] --access pointer: this demo has no pointer variant (atomics need bound access)");
    }
    let mut managed = ManagedTd::build(ctx, &g)?;
    let ex = ctx.explicit()?;
    let t = Instant::now();
    let ex_graph = ExplicitTd::upload(ex, &g)?;
    let upload_ms = since_ms(t);
    let wm = warm_up_bound(&ctx.svm, &managed.kernel, &TdParams::default())?;
    let we = ex.warm_up(&ex_graph.pipeline, &[1, 2, 3, 4, 5, 6], &TdParams::default())?;
    println!(
        "[BFS-TD] first dispatch (driver compile, untimed below): managed {:.1} ms, explicit {:.1} ms",
        ms(wm),
        ms(we)
    );
    println!("[BFS-TD] explicit: graph upload (CSR, {} MiB): {upload_ms:.1} ms", ((g.cols.len() + g.n + 1) * 4) >> 20);
    compare(ctx, "BFS-TD", scale, &g, &roots, false, |root| managed.bfs(ctx, root), |root| ex_graph.bfs(ex, root))
}

/// Run both variants from every root, validate both trees (Graph500 rules
/// and the CPU's levels), compare their levels (and parents, where the
/// traversal is deterministic), and report TEPS.
#[allow(clippy::too_many_arguments, reason = "one call site per BFS demo")]
fn compare(
    ctx: &Ctx,
    name: &str,
    scale: u32,
    g: &Graph,
    roots: &[usize],
    same_parents: bool,
    mut managed: impl FnMut(usize) -> Result<Tree>,
    mut explicit: impl FnMut(usize) -> Result<Tree>,
) -> Result<Outcome> {
    let mut failures = Vec::new();
    let (mut m_ms, mut e_ms) = (0.0, 0.0);
    let (mut m_inv_teps, mut e_inv_teps) = (0.0, 0.0);
    for &root in roots {
        let mt = managed(root)?;
        let et = explicit(root)?;
        let reached = mt.level.iter().filter(|&&l| l != UNREACHED).count();
        // Graph500: input edge tuples inside the traversed component.
        let edges = g.edges.iter().filter(|e| mt.level[e.0 as usize] != UNREACHED).count();
        let (mteps, eteps) = (edges as f64 / (mt.ms / 1e3), edges as f64 / (et.ms / 1e3));
        println!(
            "[{name}] root {root}: {} levels, {reached} vertices, {edges} edges; managed {:.1} ms ({}TEPS), explicit {:.1} ms ({}TEPS)",
            mt.levels,
            mt.ms,
            si(mteps),
            et.ms,
            si(eteps)
        );
        m_ms += mt.ms;
        e_ms += et.ms;
        m_inv_teps += 1.0 / mteps;
        e_inv_teps += 1.0 / eteps;
        if ctx.check {
            let t = Instant::now();
            let reference = cpu_bfs(g, root);
            for (what, tr) in [("managed", &mt), ("explicit", &et)] {
                if let Err(e) = validate(g, root, tr, &reference) {
                    failures.push(format!("root {root}, {what}: {e:#}"));
                }
            }
            let same = crate::util::same_bits("level", &mt.level, &et.level).and_then(|()| {
                if same_parents {
                    crate::util::same_bits("parent", &mt.parent, &et.parent)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = same {
                failures.push(format!("root {root}, managed vs explicit: {e:#}"));
            }
            println!("[{name}] root {root}: Graph500 validation of both trees + comparison: {:.1} ms", ms(t.elapsed()));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    let k = roots.len() as f64;
    let (mh, eh) = (k / m_inv_teps, k / e_inv_teps);
    println!("[{name}] harmonic mean TEPS over {} roots: managed {}TEPS, explicit {}TEPS", roots.len(), si(mh), si(eh));
    if ctx.check {
        if same_parents {
            println!("[{name}] levels and parents of the two variants are bitwise equal");
        } else {
            println!(
                "[{name}] levels of the two variants are bitwise equal (parents: valid BFS trees, which frontier vertex wins a claim varies)"
            );
        }
    }
    Ok(Outcome {
        managed_ms: Some(m_ms),
        explicit_ms: Some(e_ms),
        note: format!("scale {scale}, {} roots; TEPS managed {}, explicit {}", roots.len(), si(mh), si(eh)),
        ..Default::default()
    })
}

/// The graph in managed memory: per-vertex records holding CPU pointers
/// into one neighbour pool, the lists placed in random vertex order.
struct Managed {
    verts: ManagedVec<VertexRec>,
    adj: ManagedVec<u32>,
    level: ManagedVec<u32>,
    parent: ManagedVec<u32>,
    changed: ManagedVec<u32>,
    kernel: svm::Kernel,
}

impl Managed {
    fn build(ctx: &Ctx, g: &Graph) -> Result<Self> {
        let svm = &ctx.svm;
        let t = Instant::now();
        let mut verts = svm.alloc_vec::<VertexRec>(g.n)?;
        let mut adj = svm.alloc_vec::<u32>(g.cols.len().max(1))?;
        let mut order: Vec<usize> = (0..g.n).collect();
        Rng::new(0x1a7).shuffle(&mut order);
        let pb = progress(g.n as u64, "building managed adjacency");
        let mut pos = 0usize;
        for (i, &v) in order.iter().enumerate() {
            let nb = g.neighbours(v);
            adj[pos..pos + nb.len()].copy_from_slice(nb);
            verts[v] =
                VertexRec { adj: if nb.is_empty() { 0 } else { adj.addr_of(pos) }, degree: nb.len() as u32, pad: 0 };
            pos += nb.len();
            if i % 4096 == 4095 {
                pb.inc(4096);
            }
        }
        pb.finish_and_clear();
        println!(
            "[BFS] managed: {} vertex records + neighbour lists ({} MiB) built through CPU pointers: {:.1} ms",
            g.n,
            (g.n * 16 + g.cols.len() * 4) >> 20,
            ms(t.elapsed())
        );
        // The graph is only read by the kernel, once per level: keep its
        // device copy between launches (the CPU keeps reading it too).
        svm.advise(verts.as_ptr().cast(), core::mem::size_of_val(&verts[..]), svm::Advice::ReadMostly)?;
        svm.advise(adj.as_ptr().cast(), core::mem::size_of_val(&adj[..]), svm::Advice::ReadMostly)?;
        Ok(Self {
            verts,
            adj,
            level: svm.alloc_vec::<u32>(g.n)?,
            parent: svm.alloc_vec::<u32>(g.n)?,
            changed: svm.alloc_vec::<u32>(1)?,
            kernel: kernel(svm, "bfs", svm::shaders::kernels::BFS, "main")?,
        })
    }

    /// Level-synchronous BFS from `root`: one launch per level; the CPU reads
    /// the `changed` word after each (a CPU fault brings its page back).
    fn bfs(&mut self, ctx: &Ctx, root: usize) -> Result<Tree> {
        let svm = &ctx.svm;
        let n = self.verts.len();
        let Self { verts, adj, level, parent, changed, kernel } = self;
        level.fill(UNREACHED);
        parent.fill(UNREACHED);
        level[root] = 0;
        parent[root] = root as u32;
        let t = Instant::now();
        let mut cur = 0u32;
        loop {
            changed[0] = 0;
            let args = [
                Arg::ptr(verts.as_ptr()),
                Arg::ptr(level.as_ptr()),
                Arg::ptr(parent.as_ptr()),
                Arg::ptr(changed.as_ptr()),
                Arg::U32(n as u32),
                Arg::U32(cur),
            ];
            svm.launch(
                kernel,
                &LaunchDescriptor {
                    args: &args,
                    access: &[
                        Access::read(verts),
                        Access::read(adj),
                        Access::read_write(level),
                        Access::read_write(parent),
                        Access::read_write(changed),
                    ],
                    bindings: &[],
                    workgroups: [grid(n, 256), 1, 1],
                },
            )?;
            if changed[0] == 0 {
                break;
            }
            cur += 1;
        }
        let elapsed = ms(t.elapsed());
        Ok(Tree { level: level.to_vec(), parent: parent.to_vec(), levels: cur + 1, ms: elapsed })
    }
}

/// The explicit-copy graph: CSR in storage buffers, uploaded once.
struct ExplicitGraph {
    n: usize,
    offsets: wgpu::Buffer,
    cols: wgpu::Buffer,
    level: wgpu::Buffer,
    parent: wgpu::Buffer,
    changed: wgpu::Buffer,
    params: wgpu::Buffer,
    pipeline: wgpu::ComputePipeline,
}

impl ExplicitGraph {
    fn upload(ex: &Explicit, g: &Graph) -> Result<Self> {
        let s = Self {
            n: g.n,
            offsets: ex.upload("offsets", &g.offsets),
            cols: ex.upload("cols", if g.cols.is_empty() { &[0u32][..] } else { &g.cols }),
            level: ex.empty("level", g.n as u64 * 4),
            parent: ex.empty("parent", g.n as u64 * 4),
            changed: ex.empty("changed", 4),
            params: ex.uniform("params", &BuParams::default()),
            pipeline: ex.pipeline("bfs", explicit::wgsl::BFS, "main")?,
        };
        ex.wait()?;
        Ok(s)
    }

    fn bfs(&self, ex: &Explicit, root: usize) -> Result<Tree> {
        let mut level = vec![UNREACHED; self.n];
        let mut parent = vec![UNREACHED; self.n];
        level[root] = 0;
        parent[root] = root as u32;
        let t = Instant::now();
        ex.write(&self.level, &level);
        ex.write(&self.parent, &parent);
        let mut cur = 0u32;
        loop {
            ex.write(&self.changed, &[0u32]);
            ex.write_uniform(&self.params, &BuParams { n: self.n as u32, cur, pad: [0; 2] });
            ex.dispatch(
                &self.pipeline,
                &[&self.params, &self.offsets, &self.cols, &self.level, &self.parent, &self.changed],
                [grid(self.n, 256), 1, 1],
            )?;
            if ex.read::<u32>(&self.changed, 1)?[0] == 0 {
                break;
            }
            cur += 1;
        }
        let elapsed = since_ms(t);
        Ok(Tree {
            level: ex.read(&self.level, self.n)?,
            parent: ex.read(&self.parent, self.n)?,
            levels: cur + 1,
            ms: elapsed,
        })
    }
}

/// The top-down graph in managed memory: CSR arrays (bound), parents and
/// levels, two frontier queues `[count, v0, v1, ...]` used in turn.
struct ManagedTd {
    offsets: ManagedVec<u32>,
    cols: ManagedVec<u32>,
    parent: ManagedVec<u32>,
    level: ManagedVec<u32>,
    queues: [ManagedVec<u32>; 2],
    kernel: svm::Kernel,
}

impl ManagedTd {
    fn build(ctx: &Ctx, g: &Graph) -> Result<Self> {
        let svm = &ctx.svm;
        let t = Instant::now();
        let offsets = svm.alloc_from_slice(&g.offsets)?;
        let cols = svm.alloc_from_slice(if g.cols.is_empty() { &[0u32][..] } else { &g.cols })?;
        println!(
            "[BFS-TD] managed: CSR arrays ({} MiB) written by the CPU: {:.1} ms",
            ((g.cols.len() + g.n + 1) * 4) >> 20,
            ms(t.elapsed())
        );
        // Read by every level's launch: keep the device copy.
        svm.advise(offsets.as_ptr().cast(), core::mem::size_of_val(&offsets[..]), svm::Advice::ReadMostly)?;
        svm.advise(cols.as_ptr().cast(), core::mem::size_of_val(&cols[..]), svm::Advice::ReadMostly)?;
        Ok(Self {
            offsets,
            cols,
            parent: svm.alloc_vec::<u32>(g.n)?,
            level: svm.alloc_vec::<u32>(g.n)?,
            queues: [svm.alloc_vec::<u32>(g.n + 1)?, svm.alloc_vec::<u32>(g.n + 1)?],
            kernel: kernel(svm, "bfs topdown bound", svm::shaders::kernels::BFS_TOPDOWN_BOUND, "main")?,
        })
    }

    /// One launch per level; the CPU zeroes the next queue's count before
    /// it and reads the count after it (a CPU fault brings that page back).
    fn bfs(&mut self, ctx: &Ctx, root: usize) -> Result<Tree> {
        let svm = &ctx.svm;
        let Self { offsets, cols, parent, level, queues, kernel } = self;
        level.fill(UNREACHED);
        parent.fill(UNREACHED);
        level[root] = 0;
        parent[root] = root as u32;
        queues[0][0] = 1;
        queues[0][1] = root as u32;
        let t = Instant::now();
        let (mut cur, mut count, mut f) = (0u32, 1u32, 0usize);
        loop {
            let [q0, q1] = queues;
            let (front, next) = if f == 0 { (&*q0, q1) } else { (&*q1, q0) };
            next[0] = 0;
            let params = TdParams { count, cur, pad: [0; 2] };
            svm.launch(
                kernel,
                &LaunchDescriptor {
                    bindings: &[
                        Binding::uniform(&params),
                        Binding::read(offsets),
                        Binding::read(cols),
                        // Only the frontier's entries.
                        Binding::read(&front.slice(..count as usize + 1)),
                        Binding::read_write(parent),
                        Binding::read_write(level),
                        Binding::read_write(next),
                    ],
                    workgroups: [grid(count as usize, 256), 1, 1],
                    ..Default::default()
                },
            )?;
            count = next[0];
            if count == 0 {
                break;
            }
            cur += 1;
            f ^= 1;
        }
        let elapsed = ms(t.elapsed());
        Ok(Tree { level: level.to_vec(), parent: parent.to_vec(), levels: cur + 1, ms: elapsed })
    }
}

/// The explicit-copy top-down graph: the same arrays in storage buffers.
struct ExplicitTd {
    n: usize,
    offsets: wgpu::Buffer,
    cols: wgpu::Buffer,
    parent: wgpu::Buffer,
    level: wgpu::Buffer,
    queues: [wgpu::Buffer; 2],
    params: wgpu::Buffer,
    pipeline: wgpu::ComputePipeline,
}

impl ExplicitTd {
    fn upload(ex: &Explicit, g: &Graph) -> Result<Self> {
        let s = Self {
            n: g.n,
            offsets: ex.upload("offsets", &g.offsets),
            cols: ex.upload("cols", if g.cols.is_empty() { &[0u32][..] } else { &g.cols }),
            parent: ex.empty("parent", g.n as u64 * 4),
            level: ex.empty("level", g.n as u64 * 4),
            queues: [ex.empty("queue 0", (g.n as u64 + 1) * 4), ex.empty("queue 1", (g.n as u64 + 1) * 4)],
            params: ex.uniform("params", &TdParams::default()),
            pipeline: ex.pipeline("bfs topdown bound", svm::shaders::kernels::BFS_TOPDOWN_BOUND, "main")?,
        };
        ex.wait()?;
        Ok(s)
    }

    fn bfs(&self, ex: &Explicit, root: usize) -> Result<Tree> {
        let mut level = vec![UNREACHED; self.n];
        let mut parent = vec![UNREACHED; self.n];
        level[root] = 0;
        parent[root] = root as u32;
        let t = Instant::now();
        ex.write(&self.level, &level);
        ex.write(&self.parent, &parent);
        ex.write(&self.queues[0], &[1u32, root as u32]);
        let (mut cur, mut count, mut f) = (0u32, 1u32, 0usize);
        loop {
            let (front, next) = (&self.queues[f], &self.queues[f ^ 1]);
            ex.write(next, &[0u32]);
            ex.write_uniform(&self.params, &TdParams { count, cur, pad: [0; 2] });
            ex.dispatch(
                &self.pipeline,
                &[&self.params, &self.offsets, &self.cols, front, &self.parent, &self.level, next],
                [grid(count as usize, 256), 1, 1],
            )?;
            count = ex.read::<u32>(next, 1)?[0];
            if count == 0 {
                break;
            }
            cur += 1;
            f ^= 1;
        }
        let elapsed = since_ms(t);
        Ok(Tree {
            level: ex.read(&self.level, self.n)?,
            parent: ex.read(&self.parent, self.n)?,
            levels: cur + 1,
            ms: elapsed,
        })
    }
}

/// Queue-based CPU BFS: the reference levels.
fn cpu_bfs(g: &Graph, root: usize) -> Vec<u32> {
    let mut level = vec![UNREACHED; g.n];
    let mut q = VecDeque::from([root]);
    level[root] = 0;
    while let Some(u) = q.pop_front() {
        for &v in g.neighbours(u) {
            if level[v as usize] == UNREACHED {
                level[v as usize] = level[u] + 1;
                q.push_back(v as usize);
            }
        }
    }
    level
}

/// The Graph500 validation rules, plus equality of the levels with the CPU
/// reference (which also proves reached set = the root's component).
fn validate(g: &Graph, root: usize, t: &Tree, reference: &[u32]) -> Result<()> {
    let mut errs: Vec<String> = Vec::new();
    let mut err = |s: String| {
        if errs.len() < 5 {
            errs.push(s);
        }
    };
    // 1. The root is its own parent, on level 0.
    if t.parent[root] != root as u32 || t.level[root] != 0 {
        err(format!("root {root}: parent {} level {}", t.parent[root], t.level[root]));
    }
    let mut bad = 0usize;
    for (v, (&l, &p)) in t.level.iter().zip(&t.parent).enumerate() {
        // 5. Reached set = the root's connected component (and BFS levels).
        if l != reference[v] {
            bad += 1;
            err(format!("vertex {v}: level {l}, reference {}", reference[v]));
            continue;
        }
        if l == UNREACHED {
            if p != UNREACHED {
                bad += 1;
                err(format!("unreached vertex {v} has parent {p}"));
            }
            continue;
        }
        if v == root {
            continue;
        }
        // 2. Tree edges join levels that differ by exactly one.
        if p as usize >= g.n || t.level[p as usize] == UNREACHED || t.level[p as usize] + 1 != l {
            bad += 1;
            err(format!("vertex {v} (level {l}) has parent {p} on level {:?}", t.level.get(p as usize)));
            continue;
        }
        // 4. The parent edge exists in the graph.
        if !g.neighbours(v).contains(&p) {
            bad += 1;
            err(format!("tree edge {v}-{p} is not in the graph"));
        }
    }
    // 3. Every graph edge joins levels at most one apart, or two unreached ends.
    for &(u, v) in &g.edges {
        let (lu, lv) = (t.level[u as usize], t.level[v as usize]);
        let ok = if lu == UNREACHED || lv == UNREACHED { lu == lv } else { lu.abs_diff(lv) <= 1 };
        if !ok {
            bad += 1;
            err(format!("edge {u}-{v} joins levels {lu} and {lv}"));
        }
    }
    if bad > 0 {
        bail!("{bad} violations: {}", errs.join("; "));
    }
    Ok(())
}
