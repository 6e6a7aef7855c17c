//! Streaming kernels over managed arrays: vadd and saxpy.

use std::time::Instant;

use anyhow::{bail, Result};
use svm::{Access, Arg, LaunchDescriptor};

use crate::util::{grid, kernel, ms, warm_up, NULL};
use crate::{Ctx, Outcome};

pub fn vadd(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(16 << 20);
    println!("[Vadd] c = a + b over {n} floats ({} MiB per array)", (n * 4) >> 20);
    let k = kernel(svm, "vadd", svm::shaders::kernels::VADD, "main")?;
    let w = warm_up(svm, &k, &[NULL, NULL, NULL, Arg::U32(0)])?;
    println!("[Vadd] first dispatch (driver compile, untimed below): {:.1} ms", ms(w));
    let mut a = svm.alloc_vec::<f32>(n)?;
    let mut b = svm.alloc_vec::<f32>(n)?;
    let mut c = svm.alloc_vec::<f32>(n)?;
    let t = Instant::now();
    for i in 0..n {
        a[i] = (i % 1000) as f32 * 0.5;
        b[i] = (i % 777) as f32 + 0.25;
    }
    println!("[Vadd] CPU fill: {:.1} ms", ms(t.elapsed()));
    let args = [Arg::ptr(a.as_ptr()), Arg::ptr(b.as_ptr()), Arg::ptr(c.as_ptr()), Arg::U32(u32::try_from(n)?)];
    let t = Instant::now();
    svm.launch(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read(&a), Access::read(&b), Access::read_write(&mut c)],
            bindings: &[],
            workgroups: [grid(n, 256).min(4096), 1, 1],
        },
    )?;
    let launch = t.elapsed();
    println!("[Vadd] launch (migrate in + kernel): {:.1} ms", ms(launch));
    let t = Instant::now();
    let mut bad = 0usize;
    for i in 0..n {
        if c[i] != a[i] + b[i] {
            bad += 1;
        }
    }
    let back = t.elapsed();
    println!("[Vadd] CPU check (migrates c back by fault): {:.1} ms", ms(back));
    if bad != 0 {
        bail!("{bad} of {n} elements wrong");
    }
    Ok(Outcome { managed_ms: Some(ms(launch + back)), note: format!("{n} floats"), ..Default::default() })
}

pub fn saxpy(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(16 << 20);
    let alpha = 2.5f32;
    println!("[Saxpy] y = {alpha} x + y over {n} floats ({} MiB per array)", (n * 4) >> 20);
    let k = kernel(svm, "saxpy", svm::shaders::kernels::SAXPY, "main")?;
    let w = warm_up(svm, &k, &[NULL, NULL, Arg::F32(0.0), Arg::U32(0)])?;
    println!("[Saxpy] first dispatch (driver compile, untimed below): {:.1} ms", ms(w));
    let mut x = svm.alloc_vec::<f32>(n)?;
    let mut y = svm.alloc_vec::<f32>(n)?;
    // Small integers: every result is exact, so the check is bitwise.
    let t = Instant::now();
    for i in 0..n {
        x[i] = (i % 1000) as f32;
        y[i] = (i % 777) as f32 - 100.0;
    }
    let want: Vec<f32> =
        if ctx.check { x.iter().zip(y.iter()).map(|(&x, &y)| alpha * x + y).collect() } else { Vec::new() };
    println!("[Saxpy] CPU fill and reference: {:.1} ms", ms(t.elapsed()));
    let args = [Arg::ptr(x.as_ptr()), Arg::ptr(y.as_ptr()), Arg::F32(alpha), Arg::U32(u32::try_from(n)?)];
    let t = Instant::now();
    svm.launch(
        &k,
        &LaunchDescriptor {
            args: &args,
            access: &[Access::read(&x), Access::read_write(&mut y)],
            bindings: &[],
            workgroups: [grid(n, 256).min(4096), 1, 1],
        },
    )?;
    let launch = t.elapsed();
    println!("[Saxpy] launch (migrate in + kernel): {:.1} ms", ms(launch));
    let t = Instant::now();
    let got = y.to_vec();
    let back = t.elapsed();
    println!("[Saxpy] read y back (CPU faults): {:.1} ms", ms(back));
    if ctx.check {
        crate::util::same_bits("y", &got, &want)?;
    }
    Ok(Outcome { managed_ms: Some(ms(launch + back)), note: format!("{n} floats"), ..Default::default() })
}
