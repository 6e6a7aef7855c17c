//! CSR sparse matrix-vector product: managed and explicit-copy variants of
//! one bound kernel (or the pointer kernel on the managed side, with
//! `--access pointer`).

use std::time::Instant;

use anyhow::Result;
use svm::shaders::kernels;
use svm::{Access, Arg, Binding, LaunchDescriptor};

use crate::explicit::{since_ms, Timing};
use crate::util::{grid, kernel, ms, same_bits, warm_up, warm_up_bound, Rng, NULL};
use crate::{AccessStyle, Ctx, Outcome};

/// `spmv_bound.wgsl`'s `Params` (padded to 16 bytes).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    pad: [u32; 3],
}

pub fn run(ctx: &Ctx) -> Result<Outcome> {
    let svm = &ctx.svm;
    let rows = ctx.size.unwrap_or(1 << 18).max(1);
    // Random sparsity (0..32 entries per row, random columns); small integer
    // values, so every sum is exact in f32 and the comparison is bitwise.
    let t = Instant::now();
    let mut rng = Rng::new(0x5b3);
    let mut rowptr = Vec::with_capacity(rows + 1);
    rowptr.push(0u32);
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    for _ in 0..rows {
        for _ in 0..rng.below(32) {
            cols.push(rng.below(rows as u64) as u32);
            vals.push(rng.below(9) as f32 - 4.0);
        }
        rowptr.push(u32::try_from(cols.len())?);
    }
    let x: Vec<f32> = (0..rows).map(|j| (j % 9) as f32 - 4.0).collect();
    let nnz = cols.len();
    println!(
        "[SpMV] y = A x, {rows} x {rows} CSR matrix, {nnz} nonzeros ({} MiB): CPU build {:.1} ms",
        (nnz * 8 + rows * 12) >> 20,
        ms(t.elapsed())
    );
    let reference = |r: usize| -> f32 {
        let mut acc = 0.0f32;
        for k in rowptr[r] as usize..rowptr[r + 1] as usize {
            acc += vals[k] * x[cols[k] as usize];
        }
        acc
    };

    // Managed: the CPU's arrays are what the kernel reads.
    let k = match ctx.access {
        AccessStyle::Bound => kernel(svm, "spmv bound", kernels::SPMV_BOUND, "main")?,
        AccessStyle::Pointer => kernel(svm, "spmv", kernels::SPMV, "main")?,
    };
    let ex = ctx.explicit()?;
    let pipeline = ex.pipeline("spmv bound", kernels::SPMV_BOUND, "main")?;
    let wm = match ctx.access {
        AccessStyle::Bound => warm_up_bound(svm, &k, &Params::default())?,
        AccessStyle::Pointer => warm_up(svm, &k, &[NULL, NULL, NULL, NULL, NULL, Arg::U32(0)])?,
    };
    let we = ex.warm_up(&pipeline, &[1, 2, 3, 4, 5], &Params::default())?;
    println!(
        "[SpMV] first dispatch (driver compile, untimed below): managed {:.1} ms, explicit {:.1} ms",
        ms(wm),
        ms(we)
    );
    let m_rowptr = svm.alloc_from_slice(&rowptr)?;
    let m_cols = svm.alloc_from_slice(if cols.is_empty() { &[0u32][..] } else { &cols })?;
    let m_vals = svm.alloc_from_slice(if vals.is_empty() { &[0f32][..] } else { &vals })?;
    let m_x = svm.alloc_from_slice(&x)?;
    let mut m_y = svm.alloc_vec::<f32>(rows)?;
    let params = Params { rows: u32::try_from(rows)?, ..Default::default() };
    let t = Instant::now();
    match ctx.access {
        AccessStyle::Bound => svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[
                    Binding::uniform(&params),
                    Binding::read(&m_rowptr),
                    Binding::read(&m_cols),
                    Binding::read(&m_vals),
                    Binding::read(&m_x),
                    Binding::write_discard(&mut m_y),
                ],
                workgroups: [grid(rows, 256), 1, 1],
                ..Default::default()
            },
        )?,
        AccessStyle::Pointer => svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[
                    Arg::ptr(m_rowptr.as_ptr()),
                    Arg::ptr(m_cols.as_ptr()),
                    Arg::ptr(m_vals.as_ptr()),
                    Arg::ptr(m_x.as_ptr()),
                    Arg::ptr(m_y.as_ptr()),
                    Arg::U32(params.rows),
                ],
                access: &[
                    Access::read(&m_rowptr),
                    Access::read(&m_cols),
                    Access::read(&m_vals),
                    Access::read(&m_x),
                    Access::read_write(&mut m_y),
                ],
                workgroups: [grid(rows, 256), 1, 1],
                ..Default::default()
            },
        )?,
    };
    let launch = t.elapsed();
    let t = Instant::now();
    let y_managed = m_y.to_vec();
    let back = t.elapsed();
    let managed_ms = ms(launch + back);
    println!(
        "[SpMV] managed ({} access): {managed_ms:.1} ms (launch incl. migration {:.1} ms, read y back by fault {:.1} ms)",
        ctx.access.name(),
        ms(launch),
        ms(back)
    );

    // Explicit copies.
    let mut tm = Timing::default();
    let t = Instant::now();
    let b_params = ex.uniform("params", &params);
    let b_rowptr = ex.upload("rowptr", &rowptr);
    let b_cols = ex.upload("cols", if cols.is_empty() { &[0u32][..] } else { &cols });
    let b_vals = ex.upload("vals", if vals.is_empty() { &[0f32][..] } else { &vals });
    let b_x = ex.upload("x", &x);
    let b_y = ex.empty("y", rows as u64 * 4);
    ex.wait()?;
    tm.upload_ms = since_ms(t);
    let t = Instant::now();
    ex.dispatch(&pipeline, &[&b_params, &b_rowptr, &b_cols, &b_vals, &b_x, &b_y], [grid(rows, 256), 1, 1])?;
    tm.kernel_ms = since_ms(t);
    let t = Instant::now();
    let y_explicit: Vec<f32> = ex.read(&b_y, rows)?;
    tm.download_ms = since_ms(t);
    println!("[SpMV] explicit: {tm}");

    if ctx.check {
        let t = Instant::now();
        let want: Vec<f32> = (0..rows).map(reference).collect();
        same_bits("y (managed vs CPU)", &y_managed, &want)?;
        same_bits("y (explicit vs CPU)", &y_explicit, &want)?;
        println!("[SpMV] CPU reference {:.1} ms; managed, explicit and CPU results bitwise equal", ms(t.elapsed()));
    }
    Ok(Outcome {
        managed_ms: Some(managed_ms),
        explicit_ms: Some(tm.total_ms()),
        explicit_split: Some(tm),
        note: format!("{rows} rows, {nnz} nonzeros"),
    })
}
