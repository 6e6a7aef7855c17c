//! Streaming kernels over managed arrays: vadd and saxpy, each also run on
//! plain wgpu buffers (explicit copies) with the same bound kernel source.

use std::time::Instant;

use anyhow::Result;
use svm::shaders::kernels;
use svm::{Access, Arg, Binding, LaunchDescriptor};

use crate::explicit::{since_ms, Timing};
use crate::util::{grid, kernel, migration_progress, ms, same_bits, warm_up, warm_up_bound, NULL};
use crate::{AccessStyle, Ctx, Outcome};

/// `vadd_bound.wgsl`'s `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct VaddParams {
    n: u32,
    pad: [u32; 3],
}

/// `saxpy_bound.wgsl`'s `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct SaxpyParams {
    a: f32,
    n: u32,
    pad: [u32; 2],
}

/// The managed times: the launch, the read-back by CPU fault, and the same
/// read-back again with the pages already the CPU's (`copy`, untimed in
/// `managed_ms`): the application's own copy, without faults.
struct Managed {
    launch: f64,
    back: f64,
    copy: f64,
}

/// Read a managed result back by CPU faults, timed, and once more with its
/// pages already on the CPU (the application's copy alone).
fn read_back(v: &svm::ManagedVec<f32>, launch: f64) -> (Vec<f32>, Managed) {
    let t = Instant::now();
    let out = v.to_vec();
    let back = since_ms(t);
    let t = Instant::now();
    let again = v.to_vec();
    let copy = since_ms(t);
    drop(again);
    (out, Managed { launch, back, copy })
}

fn report(name: &str, access: AccessStyle, m: &Managed, tm: &Timing, note: String) -> Outcome {
    let Managed { launch, back, copy } = *m;
    let managed_ms = launch + back;
    println!(
        "[{name}] managed ({} access): {managed_ms:.1} ms (launch incl. migration {launch:.1} ms, read back by CPU fault {back:.1} ms)",
        access.name()
    );
    println!("[{name}] the same read-back again, the pages now the CPU's (no fault, untimed above): {copy:.1} ms");
    println!("[{name}] explicit: {tm}");
    Outcome { managed_ms: Some(managed_ms), explicit_ms: Some(tm.total_ms()), explicit_split: Some(*tm), note }
}

pub fn vadd(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(16 << 20);
    let nu = u32::try_from(n)?;
    println!("[Vadd] c = a + b over {n} floats ({} MiB per array), {} access", (n * 4) >> 20, ctx.access.name());
    let k = match ctx.access {
        AccessStyle::Bound => kernel(svm, "vadd bound", kernels::VADD_BOUND, "main")?,
        AccessStyle::Pointer => kernel(svm, "vadd", kernels::VADD, "main")?,
    };
    let ex = ctx.explicit()?;
    let pipeline = ex.pipeline("vadd bound", kernels::VADD_BOUND, "main")?;
    let wm = match ctx.access {
        AccessStyle::Bound => warm_up_bound(svm, &k, &VaddParams::default())?,
        AccessStyle::Pointer => warm_up(svm, &k, &[NULL, NULL, NULL, Arg::U32(0)])?,
    };
    let we = ex.warm_up(&pipeline, &[1, 2, 3], &VaddParams::default())?;
    println!(
        "[Vadd] first dispatch (driver compile, untimed below): managed {:.1} ms, explicit {:.1} ms",
        ms(wm),
        ms(we)
    );
    let mut a = svm.alloc_vec::<f32>(n)?;
    let mut b = svm.alloc_vec::<f32>(n)?;
    let mut c = svm.alloc_vec::<f32>(n)?;
    // Names in errors and in the trace's migration spans.
    a.set_label("vadd a");
    b.set_label("vadd b");
    c.set_label("vadd c");
    let t = Instant::now();
    for i in 0..n {
        a[i] = (i % 1000) as f32 * 0.5;
        b[i] = (i % 777) as f32 + 0.25;
    }
    println!("[Vadd] CPU fill of the managed arrays: {:.1} ms", ms(t.elapsed()));
    // The explicit variant's inputs: ordinary host vectors (copied here,
    // untimed, while the managed pages are still the CPU's).
    let (a_host, b_host) = (a.to_vec(), b.to_vec());
    let params = VaddParams { n: nu, ..Default::default() };
    let workgroups = [grid(n, 256).min(4096), 1, 1];
    let t = Instant::now();
    // a and b in, c (discarded: cleared or copied) in, c back by faults.
    let bar = migration_progress(svm, "vadd: migrations", 4 * n as u64 * 4);
    match ctx.access {
        AccessStyle::Bound => svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[
                    Binding::uniform(&params),
                    Binding::read(&a),
                    Binding::read(&b),
                    Binding::write_discard(&mut c),
                ],
                workgroups,
                ..Default::default()
            },
        )?,
        AccessStyle::Pointer => svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[Arg::ptr(a.as_ptr()), Arg::ptr(b.as_ptr()), Arg::ptr(c.as_ptr()), Arg::U32(nu)],
                access: &[Access::read(&a), Access::read(&b), Access::read_write(&mut c)],
                workgroups,
                ..Default::default()
            },
        )?,
    };
    let (c_managed, managed) = read_back(&c, since_ms(t));
    drop(bar);

    let mut tm = Timing::default();
    let t = Instant::now();
    let bp = ex.uniform("params", &params);
    let (ba, bb, bc) = (ex.upload("a", &a_host), ex.upload("b", &b_host), ex.empty("c", n as u64 * 4));
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch(&pipeline, &[&bp, &ba, &bb, &bc], workgroups)?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let c_explicit: Vec<f32> = ex.read(&bc, n)?;
    tm.download_ms = since_ms(t);

    if ctx.check {
        let want: Vec<f32> = a_host.iter().zip(&b_host).map(|(&x, &y)| x + y).collect();
        same_bits("c (managed vs CPU)", &c_managed, &want)?;
        same_bits("c (explicit vs CPU)", &c_explicit, &want)?;
        println!("[Vadd] managed, explicit and CPU results bitwise equal");
    }
    Ok(report("Vadd", ctx.access, &managed, &tm, format!("{n} floats")))
}

pub fn saxpy(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(16 << 20);
    let nu = u32::try_from(n)?;
    let alpha = 2.5f32;
    println!(
        "[Saxpy] y = {alpha} x + y over {n} floats ({} MiB per array), {} access",
        (n * 4) >> 20,
        ctx.access.name()
    );
    let k = match ctx.access {
        AccessStyle::Bound => kernel(svm, "saxpy bound", kernels::SAXPY_BOUND, "main")?,
        AccessStyle::Pointer => kernel(svm, "saxpy", kernels::SAXPY, "main")?,
    };
    let ex = ctx.explicit()?;
    let pipeline = ex.pipeline("saxpy bound", kernels::SAXPY_BOUND, "main")?;
    let wm = match ctx.access {
        AccessStyle::Bound => warm_up_bound(svm, &k, &SaxpyParams::default())?,
        AccessStyle::Pointer => warm_up(svm, &k, &[NULL, NULL, Arg::F32(0.0), Arg::U32(0)])?,
    };
    let we = ex.warm_up(&pipeline, &[1, 2], &SaxpyParams::default())?;
    println!(
        "[Saxpy] first dispatch (driver compile, untimed below): managed {:.1} ms, explicit {:.1} ms",
        ms(wm),
        ms(we)
    );
    let mut x = svm.alloc_vec::<f32>(n)?;
    let mut y = svm.alloc_vec::<f32>(n)?;
    // Small integers: every result is exact, so the check is bitwise.
    let t = Instant::now();
    for i in 0..n {
        x[i] = (i % 1000) as f32;
        y[i] = (i % 777) as f32 - 100.0;
    }
    println!("[Saxpy] CPU fill of the managed arrays: {:.1} ms", ms(t.elapsed()));
    let (x_host, y_host) = (x.to_vec(), y.to_vec());
    let params = SaxpyParams { a: alpha, n: nu, ..Default::default() };
    let workgroups = [grid(n, 256).min(4096), 1, 1];
    let t = Instant::now();
    match ctx.access {
        AccessStyle::Bound => svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::uniform(&params), Binding::read(&x), Binding::read_write(&mut y)],
                workgroups,
                ..Default::default()
            },
        )?,
        AccessStyle::Pointer => svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[Arg::ptr(x.as_ptr()), Arg::ptr(y.as_ptr()), Arg::F32(alpha), Arg::U32(nu)],
                access: &[Access::read(&x), Access::read_write(&mut y)],
                workgroups,
                ..Default::default()
            },
        )?,
    };
    let (y_managed, managed) = read_back(&y, since_ms(t));

    let mut tm = Timing::default();
    let t = Instant::now();
    let bp = ex.uniform("params", &params);
    let (bx, by) = (ex.upload("x", &x_host), ex.upload("y", &y_host));
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch(&pipeline, &[&bp, &bx, &by], workgroups)?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let y_explicit: Vec<f32> = ex.read(&by, n)?;
    tm.download_ms = since_ms(t);

    if ctx.check {
        let want: Vec<f32> = x_host.iter().zip(&y_host).map(|(&x, &y)| alpha * x + y).collect();
        same_bits("y (managed vs CPU)", &y_managed, &want)?;
        same_bits("y (explicit vs CPU)", &y_explicit, &want)?;
        println!("[Saxpy] managed, explicit and CPU results bitwise equal");
    }
    Ok(report("Saxpy", ctx.access, &managed, &tm, format!("{n} floats")))
}
