//! A binary search tree built on the CPU with raw pointers in managed
//! memory, searched by a kernel that follows the same pointers.

use std::ptr::NonNull;
use std::time::Instant;

use anyhow::{bail, Result};
use svm::{Access, AccessMode, Arg, LaunchDescriptor, LaunchOptions, Svm};

use crate::util::{grid, kernel, ms, progress, warm_up, Rng, NULL};
use crate::{Ctx, Outcome};

/// The `tree` kernel's node (24 bytes): child pointers as the GPU sees them.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
struct TreeNode {
    left: u64,
    right: u64,
    key: u32,
    value: u32,
}

const ABSENT: u32 = u32::MAX;

/// A raw managed allocation, freed on drop.
struct RawAlloc {
    svm: Svm,
    ptr: NonNull<u8>,
    len: usize,
}

impl RawAlloc {
    fn new(svm: &Svm, len: usize) -> Result<Self> {
        Ok(Self { svm: svm.clone(), ptr: svm.alloc(len)?, len })
    }
}

impl Drop for RawAlloc {
    fn drop(&mut self) {
        if let Err(e) = self.svm.free(self.ptr.as_ptr()) {
            eprintln!("tree: freeing the node pool: {e}");
        }
    }
}

/// The tree's key for item `i`: multiplication by an odd constant is a
/// bijection of u32, so keys are distinct and spread out.
fn key_of(i: u32) -> u32 {
    i.wrapping_mul(0x9e37_79b1) ^ 0x5bd1_e995
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(1 << 20).max(1);
    let nq = n;
    println!(
        "[Tree] binary search tree of {n} keys (24-byte nodes, raw pointers), inserted in random order; {nq} lookups"
    );
    let k = kernel(svm, "tree", svm::shaders::kernels::TREE, "main")?;
    let w = warm_up(svm, &k, &[NULL, NULL, NULL, Arg::U32(0), Arg::U32(0)])?;
    println!("[Tree] first dispatch (driver compile, untimed below): {:.1} ms", ms(w));
    let pool = RawAlloc::new(svm, n * core::mem::size_of::<TreeNode>())?;
    let base: *mut TreeNode = pool.ptr.as_ptr().cast();
    let mut rng = Rng::new(0x7ee5);
    let mut order: Vec<u32> = (0..u32::try_from(n)?).collect();
    rng.shuffle(&mut order);

    // Insert: node `slot` holds item order[slot]; the walk follows the raw
    // child pointers stored in managed memory.
    let t = Instant::now();
    let pb = progress(n as u64, "building the tree");
    let mut max_depth = 0u32;
    let mut depth_sum = 0u64;
    for (slot, &item) in order.iter().enumerate() {
        let key = key_of(item);
        // SAFETY: `slot < n`, inside the pool of `n` nodes owned by `pool`;
        // the pool is 4 KiB aligned (24-byte nodes stay 8-aligned) and only
        // this function touches it (raw pointers, no references kept). Child
        // pointers are 0 or addresses of nodes already written.
        unsafe {
            let node = base.add(slot);
            node.write(TreeNode { left: 0, right: 0, key, value: item });
            if slot > 0 {
                let mut cur = base;
                let mut depth = 1;
                loop {
                    let link: *mut u64 = if key < (*cur).key { &raw mut (*cur).left } else { &raw mut (*cur).right };
                    if *link == 0 {
                        *link = node as u64;
                        break;
                    }
                    cur = *link as *mut TreeNode;
                    depth += 1;
                }
                max_depth = max_depth.max(depth);
                depth_sum += u64::from(depth);
            }
        }
        if slot % 4096 == 4095 {
            pb.inc(4096);
        }
    }
    pb.finish_and_clear();
    println!(
        "[Tree] CPU build: {:.1} ms, depth max {max_depth}, mean {:.1}",
        ms(t.elapsed()),
        depth_sum as f64 / n as f64
    );

    // Queries: half present keys, half random (mostly absent).
    let mut queries = svm.alloc_vec::<u32>(nq)?;
    for (i, q) in queries.iter_mut().enumerate() {
        *q = if i % 2 == 0 { key_of(rng.below(n as u64) as u32) } else { rng.next_u32() };
    }
    let mut out = svm.alloc_vec::<u32>(nq)?;
    let args = [
        Arg::ptr(base),
        Arg::ptr(queries.as_ptr()),
        Arg::ptr(out.as_ptr()),
        Arg::U32(u32::try_from(nq)?),
        Arg::U32(max_depth + 1),
    ];
    // SAFETY: read-only access; the CPU writes no node during the launch.
    let nodes = unsafe { Access::raw(pool.ptr.as_ptr(), pool.len, AccessMode::Read) };
    let t = Instant::now();
    svm.launch(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[nodes, Access::read(&queries), Access::read_write(&mut out)],
            bindings: &[],
            workgroups: [grid(nq, 64), 1, 1],
        },
    )?;
    let launch = t.elapsed();
    println!("[Tree] launch (migrate in + {nq} lookups): {:.1} ms", ms(launch));
    let t = Instant::now();
    let got = out.to_vec();
    let back = t.elapsed();
    println!("[Tree] read results back (CPU faults): {:.1} ms", ms(back));

    let mut found = 0usize;
    if ctx.check {
        // Reference: binary search in a sorted copy (independent of the tree).
        let t = Instant::now();
        let mut sorted: Vec<(u32, u32)> = (0..u32::try_from(n)?).map(|i| (key_of(i), i)).collect();
        sorted.sort_unstable();
        let mut bad = Vec::new();
        for (i, (&q, &g)) in queries.iter().zip(&got).enumerate() {
            let want = sorted.binary_search_by_key(&q, |e| e.0).map_or(ABSENT, |j| sorted[j].1);
            found += usize::from(want != ABSENT);
            if g != want {
                bad.push(format!("query {i} key {q:#x}: got {g:#x}, want {want:#x}"));
            }
        }
        println!("[Tree] CPU reference: {:.1} ms, {found} of {nq} keys present", ms(t.elapsed()));
        if !bad.is_empty() {
            bail!("{} of {nq} lookups wrong, e.g. {}", bad.len(), bad[..bad.len().min(3)].join("; "));
        }
    }
    // The same lookups with only the output declared (replayable launches
    // write only ranges declared read-write): the nodes and queries come by
    // GPU faults and replays.
    out.fill(0);
    let before = svm.stats();
    let t = Instant::now();
    let report = svm.launch_with(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read_write(&mut out)],
            workgroups: [grid(nq, 64), 1, 1],
            ..Default::default()
        },
        &LaunchOptions::replayable(),
    )?;
    let on_demand = t.elapsed();
    let s = svm.stats().since(&before);
    println!(
        "[Tree] only the output declared: {:.1} ms, {} GPU-faulted pages, {} replays, {} pages migrated in (declared: {:.1} ms)",
        ms(on_demand),
        report.gpu_fault_pages,
        report.replays,
        s.h2d_pages,
        ms(launch)
    );
    if ctx.check && out[..] != got[..] {
        bail!("lookups differ with only the output declared");
    }
    let rate = nq as f64 / launch.as_secs_f64();
    Ok(Outcome {
        managed_ms: Some(ms(launch + back)),
        note: format!("{n} keys, {} lookups/s (incl. migration)", crate::util::si(rate)),
        ..Default::default()
    })
}
