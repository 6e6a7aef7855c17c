//! Histogram with atomics on managed memory: the bins are an
//! `array<atomic<u32>>` bound read_write to a managed vector, filled by
//! `atomicAdd` from every invocation; the explicit-copy twin runs the same
//! kernel on plain wgpu buffers. Both are checked against the CPU count.
//! Bound access only (the prelude has no atomics through pointers).

use std::time::Instant;

use anyhow::{bail, Result};
use svm::shaders::kernels;
use svm::{Binding, LaunchDescriptor};

use crate::explicit::{since_ms, Timing};
use crate::util::{grid, kernel, ms, same_bits, warm_up_bound, Rng};
use crate::{AccessStyle, Ctx, Outcome};

/// Bins of the histogram.
const BINS: u32 = 256;

/// `histogram_bound.wgsl`'s `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    bins: u32,
    pad: [u32; 2],
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(4 << 20);
    let nu = u32::try_from(n)?;
    println!(
        "[Histogram] {n} u32 values ({} MiB) into {BINS} bins with atomicAdd on managed memory (bound access)",
        (n * 4) >> 20
    );
    if ctx.access == AccessStyle::Pointer {
        println!("[Histogram] --access pointer: this demo has no pointer variant (atomics need bound access)");
    }
    let k = kernel(svm, "histogram bound", kernels::HISTOGRAM_BOUND, "main")?;
    let ex = ctx.explicit()?;
    let pipeline = ex.pipeline("histogram bound", kernels::HISTOGRAM_BOUND, "main")?;
    let zero = Params { n: 0, bins: 1, ..Default::default() };
    let wm = warm_up_bound(svm, &k, &zero)?;
    let we = ex.warm_up(&pipeline, &[1, 2], &zero)?;
    println!(
        "[Histogram] first dispatch (driver compile, untimed below): managed {:.1} ms, explicit {:.1} ms",
        ms(wm),
        ms(we)
    );

    // Skewed data: half the values are small (a few hot bins), half are
    // uniform, so some bins see heavy atomic contention.
    let t = Instant::now();
    let mut data = svm.alloc_vec::<u32>(n.max(1))?;
    let mut rng = Rng::new(0x4157);
    for v in data.iter_mut() {
        let r = rng.next_u32();
        *v = if r & 1 == 0 { (r >> 1) % 8 } else { r >> 1 };
    }
    let mut hist = svm.alloc_vec::<u32>(BINS as usize)?;
    println!("[Histogram] CPU fill of the managed data: {:.1} ms", ms(t.elapsed()));
    let data_host = data.to_vec();
    let params = Params { n: nu, bins: BINS, ..Default::default() };
    let workgroups = [grid(n, 256).min(4096), 1, 1];

    // Managed: the CPU zeroes the bins (they are the CPU's until the launch),
    // the kernel adds to them atomically, the CPU reads them by fault.
    let t = Instant::now();
    hist.fill(0);
    svm.launch(
        &k,
        &LaunchDescriptor {
            bindings: &[Binding::uniform(&params), Binding::read(&data), Binding::read_write(&mut hist)],
            workgroups,
            ..Default::default()
        },
    )?;
    let launch = since_ms(t);
    let t = Instant::now();
    let h_managed = hist.to_vec();
    let back = since_ms(t);

    let mut tm = Timing::default();
    let t = Instant::now();
    let bp = ex.uniform("params", &params);
    let bd = ex.upload("data", &data_host);
    let bh = ex.upload("hist", &[0u32; BINS as usize]);
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch(&pipeline, &[&bp, &bd, &bh], workgroups)?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let h_explicit: Vec<u32> = ex.read(&bh, BINS as usize)?;
    tm.download_ms = since_ms(t);

    if ctx.check {
        let t = Instant::now();
        let mut want = vec![0u32; BINS as usize];
        for &v in &data_host[..n] {
            want[(v % BINS) as usize] += 1;
        }
        same_bits("bins (managed vs CPU)", &h_managed, &want)?;
        same_bits("bins (explicit vs CPU)", &h_explicit, &want)?;
        let total: u64 = h_managed.iter().map(|&c| u64::from(c)).sum();
        if total != n as u64 {
            bail!("the bins count {total} values, not {n}");
        }
        println!(
            "[Histogram] CPU reference {:.1} ms; managed, explicit and CPU counts equal (largest bin {})",
            ms(t.elapsed()),
            want.iter().max().copied().unwrap_or(0)
        );
    }
    let managed_ms = launch + back;
    println!(
        "[Histogram] managed: {managed_ms:.1} ms (zero bins + launch incl. migration {launch:.1} ms, read bins back by CPU fault {back:.1} ms)"
    );
    println!("[Histogram] explicit: {tm}");
    Ok(Outcome {
        managed_ms: Some(managed_ms),
        explicit_ms: Some(tm.total_ms()),
        explicit_split: Some(tm),
        note: format!("{n} values, {BINS} bins"),
    })
}
