//! Linked lists built on the CPU with raw pointers, walked by a kernel.

use std::time::Instant;

use anyhow::{bail, Result};
use svm::{Access, Arg, LaunchDescriptor, LaunchOptions};

use crate::util::{kernel, ms, warm_up, Rng, NULL};
use crate::{Ctx, Outcome};

use svm::shaders::kernels::ListNode as Node;

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(1 << 20).max(1);
    let lists = 4096usize.min(n);
    println!("[List] {n} nodes in {lists} linked lists, linked in random order");
    let k = kernel(svm, "list", svm::shaders::kernels::LIST, "main")?;
    let w = warm_up(svm, &k, &[NULL, NULL, Arg::U32(0), Arg::U32(0)])?;
    println!("[List] first dispatch (driver compile, untimed below): {:.1} ms", ms(w));
    let mut nodes = svm.alloc_vec::<Node>(n)?;
    let mut heads = svm.alloc_vec::<u64>(lists)?;
    let mut out = svm.alloc_vec::<u32>(lists)?;
    // Random placement: list position `pos` lives in slot order[pos].
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(0x2545_f491_4f6c_dd1d).shuffle(&mut order);
    let base = nodes.as_mut_ptr();
    let mut want = vec![0u32; lists];
    for (pos, &slot) in order.iter().enumerate() {
        let l = pos % lists;
        let value = u32::try_from(slot % 1_000_003)?;
        want[l] = want[l].wrapping_add(value);
        let next = order.get(pos + lists).map_or(0, |&s| base.wrapping_add(s) as u64);
        nodes[slot] = Node { next, value, pad: 0 };
        if pos < lists {
            heads[l] = base.wrapping_add(slot) as u64;
        }
    }
    let args = [
        Arg::ptr(heads.as_ptr()),
        Arg::ptr(out.as_ptr()),
        Arg::U32(u32::try_from(lists)?),
        Arg::U32(u32::try_from(n)?),
    ];
    let t = Instant::now();
    svm.launch(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read(&nodes), Access::read(&heads), Access::read_write(&mut out)],
            bindings: &[],
            workgroups: [u32::try_from(lists.div_ceil(64))?, 1, 1],
        },
    )?;
    let launch = t.elapsed();
    println!("[List] launch (migrate in + walk): {:.1} ms", ms(launch));
    let t = Instant::now();
    let got = out.to_vec();
    let back = t.elapsed();
    if ctx.check {
        let bad = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        if bad != 0 {
            bail!("{bad} of {lists} list sums wrong");
        }
    }

    // The same walk with only the output declared (replayable launches
    // write only ranges declared read-write): the kernel discovers the
    // nodes it reads through GPU faults and is replayed (it only overwrites
    // `out`).
    out.fill(0);
    let before = svm.stats();
    let t = Instant::now();
    let report = svm.launch_with(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read_write(&mut out)],
            workgroups: [u32::try_from(lists.div_ceil(64))?, 1, 1],
            ..Default::default()
        },
        &LaunchOptions::replayable(),
    )?;
    let on_demand = t.elapsed();
    let got = out.to_vec();
    let s = svm.stats().since(&before);
    println!(
        "[List] only the output declared: {:.1} ms, {} GPU-faulted pages, {} replays, {} pages migrated in (declared: {:.1} ms)",
        ms(on_demand),
        report.gpu_fault_pages,
        report.replays,
        s.h2d_pages,
        ms(launch)
    );
    if ctx.check && got != want {
        bail!("list sums wrong with only the output declared");
    }
    Ok(Outcome {
        managed_ms: Some(ms(launch + back)),
        note: format!("{n} nodes, {lists} lists; on demand: {:.0} ms, {} replays", ms(on_demand), report.replays),
        ..Default::default()
    })
}
