//! PolyBench-style kernels (2DCONV, GEMM, ATAX, BICG), each in a managed
//! and an explicit-copy variant of one bound kernel (the managed side runs
//! the pointer kernel instead with `--access pointer`).
//!
//! Inputs follow PolyBench's formula-based initialisation but with small
//! integers and dyadic coefficients, so every f32 result is exact whatever
//! the summation order or FMA contraction: results are compared bitwise
//! (managed = explicit = CPU) as long as the bound on the sums stays below
//! 2^24; above that (very large sizes) managed and explicit must still be
//! bitwise equal and the CPU reference is compared with a relative
//! tolerance of 1e-5 of the largest magnitude.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use svm::shaders::kernels;
use svm::{Access, Arg, Binding, LaunchDescriptor};

use crate::explicit::{since_ms, Timing};
use crate::util::{grid, kernel, ms, same_bits, warm_up, warm_up_bound, with_progress, NULL};
use crate::{AccessStyle, Ctx, Outcome};

/// `conv2d_bound.wgsl`'s `Params`: the coefficients as `array<vec4<f32>, 3>`
/// at offset 16 (uniform arrays have a 16-byte stride).
#[repr(C)]
#[derive(Copy, Clone, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct Conv2dParams {
    ni: u32,
    nj: u32,
    pad: [u32; 2],
    c: [f32; 12],
}

/// `gemm_bound.wgsl`'s `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    n: u32,
    alpha: f32,
    beta: f32,
    pad: u32,
}

/// `atax_bound.wgsl`'s and `bicg_bound.wgsl`'s `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct MnParams {
    m: u32,
    n: u32,
    pad: [u32; 2],
}

impl Conv2dParams {
    fn new(ni: u32, nj: u32, coef: &[f32; 9]) -> Self {
        let mut c = [0f32; 12];
        c[..9].copy_from_slice(coef);
        Self { ni, nj, pad: [0; 2], c }
    }
}

/// The managed kernel for `ctx.access`: the bound source or the pointer one.
fn managed_kernel(ctx: &Ctx, name: &str, bound: &str, pointer: &str, entry: &str) -> Result<svm::Kernel> {
    match ctx.access {
        AccessStyle::Bound => kernel(&ctx.svm, &format!("{name} bound"), bound, entry),
        AccessStyle::Pointer => kernel(&ctx.svm, name, pointer, entry),
    }
}

/// Largest integer an f32 holds exactly.
const EXACT: f64 = (1u32 << 24) as f64;

fn check(what: &str, managed: &[f32], explicit: &[f32], want: &[f32], exact: bool) -> Result<()> {
    same_bits(&format!("{what} (managed vs explicit)"), managed, explicit)?;
    if exact {
        return same_bits(&format!("{what} (managed vs CPU)"), managed, want);
    }
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    let bad: Vec<usize> = (0..want.len()).filter(|&i| (managed[i] - want[i]).abs() > 1e-5 * scale).collect();
    if !bad.is_empty() {
        let i = bad[0];
        bail!(
            "{what}: {} of {} differ from the CPU beyond 1e-5 relative, e.g. [{i}] {} vs {}",
            bad.len(),
            want.len(),
            managed[i],
            want[i]
        );
    }
    Ok(())
}

fn report(name: &str, access: AccessStyle, launch: Duration, back: Duration, tm: &Timing, note: String) -> Outcome {
    let access = access.name();
    let managed_ms = ms(launch + back);
    println!(
        "[{name}] managed ({access} access): {managed_ms:.1} ms (launches incl. migration {:.1} ms, results back by CPU fault {:.1} ms)",
        ms(launch),
        ms(back)
    );
    println!("[{name}] explicit: {tm}");
    Outcome { managed_ms: Some(managed_ms), explicit_ms: Some(tm.total_ms()), explicit_split: Some(*tm), note }
}

fn warm(name: &str, managed: Duration, explicit: Duration) {
    println!(
        "[{name}] first dispatch (driver compile, untimed below): managed {:.1} ms, explicit {:.1} ms",
        ms(managed),
        ms(explicit)
    );
}

fn checked_line(ctx: &Ctx, name: &str, exact: bool) {
    if ctx.check {
        let how = if exact { "bitwise equal" } else { "managed = explicit bitwise, CPU within 1e-5" };
        println!("[{name}] managed, explicit and CPU reference: {how}");
    }
}

/// 2DCONV: 3x3 stencil over an n x n image.
pub fn conv2d(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(2048).max(3);
    // PolyBench's coefficients rounded to eighths.
    let c: [f32; 9] = [0.25, -0.25, 0.375, 0.5, 0.625, 0.75, -0.75, -0.875, 0.125];
    println!("[Conv2D] 3x3 convolution of a {n} x {n} image ({} MiB per array)", (n * n * 4) >> 20);
    let a: Vec<f32> = (0..n * n).map(|t| ((t / n * 7 + t % n * 13) % 16) as f32 - 8.0).collect();
    let exact = true; // |sum| <= 9 * 8 * 0.875, three fractional bits
    let nu = u32::try_from(n)?;

    let k = managed_kernel(ctx, "conv2d", kernels::CONV2D_BOUND, kernels::CONV2D, "main")?;
    let ex = ctx.explicit()?;
    let pipeline = ex.pipeline("conv2d bound", kernels::CONV2D_BOUND, "main")?;
    // A 2 x 2 image has no inner cell: the warm-ups touch nothing.
    let zero = Conv2dParams::new(2, 2, &[0.0; 9]);
    let wm = match ctx.access {
        AccessStyle::Bound => warm_up_bound(svm, &k, &zero)?,
        AccessStyle::Pointer => {
            let mut args = vec![NULL, NULL, Arg::U32(2), Arg::U32(2)];
            args.extend([Arg::F32(0.0); 9]);
            warm_up(svm, &k, &args)?
        }
    };
    warm("Conv2D", wm, ex.warm_up(&pipeline, &[1, 2], &zero)?);
    let m_a = svm.alloc_from_slice(&a)?;
    let mut m_b = svm.alloc_vec::<f32>(n * n)?;
    let params = Conv2dParams::new(nu, nu, &c);
    let inner = (n - 2) * (n - 2);
    let t = Instant::now();
    match ctx.access {
        AccessStyle::Bound => svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::uniform(&params), Binding::read(&m_a), Binding::write_discard(&mut m_b)],
                workgroups: [grid(inner, 256), 1, 1],
                ..Default::default()
            },
        )?,
        AccessStyle::Pointer => {
            let mut args = vec![Arg::ptr(m_a.as_ptr()), Arg::ptr(m_b.as_ptr()), Arg::U32(nu), Arg::U32(nu)];
            args.extend(c.iter().map(|&v| Arg::F32(v)));
            svm.launch(
                &k,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read(&m_a), Access::read_write(&mut m_b)],
                    workgroups: [grid(inner, 256), 1, 1],
                    ..Default::default()
                },
            )?
        }
    };
    let launch = t.elapsed();
    let t = Instant::now();
    let b_managed = m_b.to_vec();
    let back = t.elapsed();

    let mut tm = Timing::default();
    let t = Instant::now();
    let (bp, ba, bb) = (ex.uniform("params", &params), ex.upload("a", &a), ex.empty("b", (n * n * 4) as u64));
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch(&pipeline, &[&bp, &ba, &bb], [grid(inner, 256), 1, 1])?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let b_explicit: Vec<f32> = ex.read(&bb, n * n)?;
    tm.download_ms = since_ms(t);

    if ctx.check {
        let mut want = vec![0f32; n * n];
        with_progress(n - 2, "CPU reference", |r| {
            let i = r + 1;
            for j in 1..n - 1 {
                let mut acc = 0f32;
                for di in 0..3 {
                    for dj in 0..3 {
                        acc += c[di * 3 + dj] * a[(i + di - 1) * n + (j + dj - 1)];
                    }
                }
                want[i * n + j] = acc;
            }
        });
        check("b", &b_managed, &b_explicit, &want, exact)?;
    }
    checked_line(ctx, "Conv2D", exact);
    Ok(report("Conv2D", ctx.access, launch, back, &tm, format!("{n} x {n}")))
}

/// GEMM: C = alpha A B + beta C, n x n.
pub fn gemm(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(512).max(1);
    let (alpha, beta) = (1.5f32, 1.25f32);
    println!("[GEMM] C = {alpha} A B + {beta} C, {n} x {n} ({} MiB per matrix)", (n * n * 4) >> 20);
    let a: Vec<f32> = (0..n * n).map(|t| ((t / n * (t % n) + 1) % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..n * n).map(|t| ((t / n * (t % n + 2)) % 5) as f32 - 2.0).collect();
    let c0: Vec<f32> = (0..n * n).map(|t| ((t / n * (t % n) + 3) % 9) as f32 - 4.0).collect();
    // |sum| <= n * 3 * 2 * 1.5 + 4 * 1.25, two fractional bits.
    let exact = (n as f64 * 9.0 + 5.0) * 4.0 < EXACT;
    let nu = u32::try_from(n)?;
    let wg = u32::try_from(n.div_ceil(16))?;

    let k = managed_kernel(ctx, "gemm", kernels::GEMM_BOUND, kernels::GEMM, "main")?;
    let ex = ctx.explicit()?;
    let pipeline = ex.pipeline("gemm bound", kernels::GEMM_BOUND, "main")?;
    let wm = match ctx.access {
        AccessStyle::Bound => warm_up_bound(svm, &k, &GemmParams::default())?,
        AccessStyle::Pointer => warm_up(svm, &k, &[NULL, NULL, NULL, Arg::U32(0), Arg::F32(0.0), Arg::F32(0.0)])?,
    };
    warm("GEMM", wm, ex.warm_up(&pipeline, &[1, 2, 3], &GemmParams::default())?);
    let m_a = svm.alloc_from_slice(&a)?;
    let m_b = svm.alloc_from_slice(&b)?;
    let mut m_c = svm.alloc_from_slice(&c0)?;
    let params = GemmParams { n: nu, alpha, beta, pad: 0 };
    let t = Instant::now();
    match ctx.access {
        AccessStyle::Bound => svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[
                    Binding::uniform(&params),
                    Binding::read(&m_a),
                    Binding::read(&m_b),
                    Binding::read_write(&mut m_c),
                ],
                workgroups: [wg, wg, 1],
                ..Default::default()
            },
        )?,
        AccessStyle::Pointer => svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[
                    Arg::ptr(m_a.as_ptr()),
                    Arg::ptr(m_b.as_ptr()),
                    Arg::ptr(m_c.as_ptr()),
                    Arg::U32(nu),
                    Arg::F32(alpha),
                    Arg::F32(beta),
                ],
                access: &[Access::read(&m_a), Access::read(&m_b), Access::read_write(&mut m_c)],
                workgroups: [wg, wg, 1],
                ..Default::default()
            },
        )?,
    };
    let launch = t.elapsed();
    let t = Instant::now();
    let c_managed = m_c.to_vec();
    let back = t.elapsed();

    let mut tm = Timing::default();
    let t = Instant::now();
    let bp = ex.uniform("params", &params);
    let (ba, bb, bc) = (ex.upload("a", &a), ex.upload("b", &b), ex.upload("c", &c0));
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch(&pipeline, &[&bp, &ba, &bb, &bc], [wg, wg, 1])?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let c_explicit: Vec<f32> = ex.read(&bc, n * n)?;
    tm.download_ms = since_ms(t);

    if ctx.check {
        let mut want = vec![0f32; n * n];
        with_progress(n, "CPU reference", |i| {
            for j in 0..n {
                let mut acc = beta * c0[i * n + j];
                for k in 0..n {
                    acc += alpha * a[i * n + k] * b[k * n + j];
                }
                want[i * n + j] = acc;
            }
        });
        check("c", &c_managed, &c_explicit, &want, exact)?;
    }
    checked_line(ctx, "GEMM", exact);
    Ok(report("GEMM", ctx.access, launch, back, &tm, format!("{n} x {n}")))
}

/// ATAX: y = A^T (A x), A is n x n; two launches, tmp stays on the device.
pub fn atax(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(2048).max(1);
    let m = n;
    println!("[ATAX] y = A^T (A x), A {m} x {n} ({} MiB)", (m * n * 4) >> 20);
    let a: Vec<f32> = (0..m * n).map(|t| ((t / n + 2 * (t % n)) % 3) as f32 - 1.0).collect();
    let x: Vec<f32> = (0..n).map(|j| (j % 5) as f32 - 2.0).collect();
    // |tmp| <= 2 n, |y| <= 2 m n.
    let exact = 2.0 * m as f64 * n as f64 <= EXACT;
    let (mu, nu) = (u32::try_from(m)?, u32::try_from(n)?);

    let k_ax = managed_kernel(ctx, "atax ax", kernels::ATAX_BOUND, kernels::ATAX, "ax")?;
    let k_aty = managed_kernel(ctx, "atax aty", kernels::ATAX_BOUND, kernels::ATAX, "aty")?;
    let ex = ctx.explicit()?;
    let p_ax = ex.pipeline("atax ax bound", kernels::ATAX_BOUND, "ax")?;
    let p_aty = ex.pipeline("atax aty bound", kernels::ATAX_BOUND, "aty")?;
    let zero = [NULL, NULL, NULL, NULL, Arg::U32(0), Arg::U32(0)];
    let wm = match ctx.access {
        AccessStyle::Bound => {
            warm_up_bound(svm, &k_ax, &MnParams::default())? + warm_up_bound(svm, &k_aty, &MnParams::default())?
        }
        AccessStyle::Pointer => warm_up(svm, &k_ax, &zero)? + warm_up(svm, &k_aty, &zero)?,
    };
    warm(
        "ATAX",
        wm,
        ex.warm_up(&p_ax, &[1, 2, 3], &MnParams::default())? + ex.warm_up(&p_aty, &[1, 3, 4], &MnParams::default())?,
    );
    let m_a = svm.alloc_from_slice(&a)?;
    let m_x = svm.alloc_from_slice(&x)?;
    let mut m_tmp = svm.alloc_vec::<f32>(m)?;
    let mut m_y = svm.alloc_vec::<f32>(n)?;
    let params = MnParams { m: mu, n: nu, ..Default::default() };
    let t = Instant::now();
    match ctx.access {
        AccessStyle::Bound => {
            // Each entry point binds only what it uses (p, a, x, tmp / p, a, tmp, y).
            svm.launch(
                &k_ax,
                &LaunchDescriptor {
                    bindings: &[
                        Binding::uniform(&params),
                        Binding::read(&m_a),
                        Binding::read(&m_x),
                        Binding::write_discard(&mut m_tmp),
                    ],
                    workgroups: [grid(m, 256), 1, 1],
                    ..Default::default()
                },
            )?;
            svm.launch(
                &k_aty,
                &LaunchDescriptor {
                    bindings: &[
                        Binding::uniform(&params),
                        Binding::read(&m_a),
                        Binding::read_write(&mut m_tmp),
                        Binding::write_discard(&mut m_y),
                    ],
                    workgroups: [grid(n, 256), 1, 1],
                    ..Default::default()
                },
            )?;
        }
        AccessStyle::Pointer => {
            let args = [
                Arg::ptr(m_a.as_ptr()),
                Arg::ptr(m_x.as_ptr()),
                Arg::ptr(m_tmp.as_ptr()),
                Arg::ptr(m_y.as_ptr()),
                Arg::U32(mu),
                Arg::U32(nu),
            ];
            svm.launch(
                &k_ax,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read(&m_a), Access::read(&m_x), Access::read_write(&mut m_tmp)],
                    workgroups: [grid(m, 256), 1, 1],
                    ..Default::default()
                },
            )?;
            svm.launch(
                &k_aty,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read(&m_a), Access::read(&m_tmp), Access::read_write(&mut m_y)],
                    workgroups: [grid(n, 256), 1, 1],
                    ..Default::default()
                },
            )?;
        }
    }
    let launch = t.elapsed();
    let t = Instant::now();
    let y_managed = m_y.to_vec();
    let back = t.elapsed();

    let mut tm = Timing::default();
    let t = Instant::now();
    let bp = ex.uniform("params", &params);
    let (ba, bx) = (ex.upload("a", &a), ex.upload("x", &x));
    let (btmp, by) = (ex.empty("tmp", m as u64 * 4), ex.empty("y", n as u64 * 4));
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch_at(&p_ax, &[(0, &bp), (1, &ba), (2, &bx), (3, &btmp)], [grid(m, 256), 1, 1])?;
    ex.dispatch_at(&p_aty, &[(0, &bp), (1, &ba), (3, &btmp), (4, &by)], [grid(n, 256), 1, 1])?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let y_explicit: Vec<f32> = ex.read(&by, n)?;
    tm.download_ms = since_ms(t);

    if ctx.check {
        let tmp: Vec<f32> = (0..m)
            .map(|i| {
                let mut acc = 0f32;
                for j in 0..n {
                    acc += a[i * n + j] * x[j];
                }
                acc
            })
            .collect();
        let want: Vec<f32> = (0..n)
            .map(|j| {
                let mut acc = 0f32;
                for i in 0..m {
                    acc += a[i * n + j] * tmp[i];
                }
                acc
            })
            .collect();
        check("y", &y_managed, &y_explicit, &want, exact)?;
    }
    checked_line(ctx, "ATAX", exact);
    Ok(report("ATAX", ctx.access, launch, back, &tm, format!("{m} x {n}, 2 launches")))
}

/// BICG: s = A^T r and q = A p, A is n x n; one launch.
pub fn bicg(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let n = ctx.size.unwrap_or(2048).max(1);
    let m = n;
    println!("[BICG] s = A^T r, q = A p, A {m} x {n} ({} MiB)", (m * n * 4) >> 20);
    let a: Vec<f32> = (0..m * n).map(|t| ((t / n * (t % n) + 1) % 5) as f32 - 2.0).collect();
    let r: Vec<f32> = (0..m).map(|i| (i % 3) as f32 - 1.0).collect();
    let p: Vec<f32> = (0..n).map(|j| (j % 4) as f32 - 2.0).collect();
    let exact = 4.0 * m.max(n) as f64 <= EXACT;
    let (mu, nu) = (u32::try_from(m)?, u32::try_from(n)?);

    let k = managed_kernel(ctx, "bicg", kernels::BICG_BOUND, kernels::BICG, "main")?;
    let ex = ctx.explicit()?;
    let pipeline = ex.pipeline("bicg bound", kernels::BICG_BOUND, "main")?;
    let wm = match ctx.access {
        AccessStyle::Bound => warm_up_bound(svm, &k, &MnParams::default())?,
        AccessStyle::Pointer => warm_up(svm, &k, &[NULL, NULL, NULL, NULL, NULL, Arg::U32(0), Arg::U32(0)])?,
    };
    warm("BICG", wm, ex.warm_up(&pipeline, &[1, 2, 3, 4, 5], &MnParams::default())?);
    let m_a = svm.alloc_from_slice(&a)?;
    let m_r = svm.alloc_from_slice(&r)?;
    let m_p = svm.alloc_from_slice(&p)?;
    let mut m_s = svm.alloc_vec::<f32>(n)?;
    let mut m_q = svm.alloc_vec::<f32>(m)?;
    let params = MnParams { m: mu, n: nu, ..Default::default() };
    let t = Instant::now();
    match ctx.access {
        AccessStyle::Bound => svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[
                    Binding::uniform(&params),
                    Binding::read(&m_a),
                    Binding::read(&m_r),
                    Binding::read(&m_p),
                    Binding::write_discard(&mut m_s),
                    Binding::write_discard(&mut m_q),
                ],
                workgroups: [grid(m.max(n), 256), 1, 1],
                ..Default::default()
            },
        )?,
        AccessStyle::Pointer => svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[
                    Arg::ptr(m_a.as_ptr()),
                    Arg::ptr(m_r.as_ptr()),
                    Arg::ptr(m_p.as_ptr()),
                    Arg::ptr(m_s.as_ptr()),
                    Arg::ptr(m_q.as_ptr()),
                    Arg::U32(mu),
                    Arg::U32(nu),
                ],
                access: &[
                    Access::read(&m_a),
                    Access::read(&m_r),
                    Access::read(&m_p),
                    Access::read_write(&mut m_s),
                    Access::read_write(&mut m_q),
                ],
                workgroups: [grid(m.max(n), 256), 1, 1],
                ..Default::default()
            },
        )?,
    };
    let launch = t.elapsed();
    let t = Instant::now();
    let s_managed = m_s.to_vec();
    let q_managed = m_q.to_vec();
    let back = t.elapsed();

    let mut tm = Timing::default();
    let t = Instant::now();
    let bpar = ex.uniform("params", &params);
    let (ba, br, bp) = (ex.upload("a", &a), ex.upload("r", &r), ex.upload("p", &p));
    let (bs, bq) = (ex.empty("s", n as u64 * 4), ex.empty("q", m as u64 * 4));
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch(&pipeline, &[&bpar, &ba, &br, &bp, &bs, &bq], [grid(m.max(n), 256), 1, 1])?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let s_explicit: Vec<f32> = ex.read(&bs, n)?;
    let q_explicit: Vec<f32> = ex.read(&bq, m)?;
    tm.download_ms = since_ms(t);

    if ctx.check {
        let s_want: Vec<f32> = (0..n)
            .map(|j| {
                let mut acc = 0f32;
                for i in 0..m {
                    acc += r[i] * a[i * n + j];
                }
                acc
            })
            .collect();
        let q_want: Vec<f32> = (0..m)
            .map(|i| {
                let mut acc = 0f32;
                for j in 0..n {
                    acc += a[i * n + j] * p[j];
                }
                acc
            })
            .collect();
        check("s", &s_managed, &s_explicit, &s_want, exact)?;
        check("q", &q_managed, &q_explicit, &q_want, exact)?;
    }
    checked_line(ctx, "BICG", exact);
    Ok(report("BICG", ctx.access, launch, back, &tm, format!("{m} x {n}")))
}
