//! svm demos: kernels on managed memory built by the CPU, checked against a
//! CPU reference, with migration statistics; the array demos (vadd, saxpy,
//! SpMV, PolyBench), the BFS variants and the histogram also run an
//! explicit-copy variant (plain wgpu buffers) for comparison.
//!
//! The array demos use bound access by default ([`AccessStyle::Bound`]):
//! plain WGSL kernels with their own bindings, bound to managed ranges; the
//! explicit-copy twin runs the same kernel source on plain wgpu buffers.
//! [`AccessStyle::Pointer`] runs the managed side with the prelude's
//! pointer kernels instead.
//!
//! The `svm-demos` binary is the command line over this library; the
//! `demos` benchmark of `svm-benches` runs the same [`Demo`]s through
//! [`Demo::run`].

mod bfs;
mod explicit;
mod histogram;
mod kronecker;
mod list;
mod polybench;
mod spmv;
pub mod trace;
mod tree;
mod util;
mod vadd;

use std::cell::OnceCell;

use anyhow::Result;
use clap::ValueEnum;
use svm::Svm;

pub use crate::explicit::{Explicit, NoAdapter, Timing};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Demo {
    /// c = a + b over `size` floats (default 16 M).
    Vadd,
    /// y = a x + y over `size` floats (default 16 M).
    Saxpy,
    /// Sum `size` linked-list nodes (default 1 M) scattered over the arena.
    List,
    /// Look up keys in a CPU-built binary search tree of `size` keys (default 1 M).
    Tree,
    /// Graph500-style BFS on a Kronecker graph of 2^scale vertices (default
    /// 16): level-synchronous, bottom-up, following CPU pointers.
    Bfs,
    /// The same graphs, top-down BFS with an atomic frontier queue over CSR
    /// arrays (bound access, `array<atomic<u32>>`).
    BfsTopdown,
    /// CSR sparse matrix-vector product, `size` rows (default 256 K).
    Spmv,
    /// PolyBench 2DCONV on a size x size image (default 2048).
    Conv2d,
    /// PolyBench GEMM, size x size (default 512).
    Gemm,
    /// PolyBench ATAX, size x size (default 2048).
    Atax,
    /// PolyBench BICG, size x size (default 2048).
    Bicg,
    /// Histogram of `size` u32 values (default 4 M) into 256 bins with
    /// atomics on managed memory (bound access).
    Histogram,
    /// The four PolyBench kernels.
    Polybench,
    /// Every demo at its default size.
    All,
}

impl Demo {
    const EVERY: [Demo; 12] = [
        Demo::Vadd,
        Demo::Saxpy,
        Demo::List,
        Demo::Tree,
        Demo::Bfs,
        Demo::BfsTopdown,
        Demo::Spmv,
        Demo::Conv2d,
        Demo::Gemm,
        Demo::Atax,
        Demo::Bicg,
        Demo::Histogram,
    ];

    /// The demos with an explicit-copy variant (all but List and Tree).
    pub const WITH_EXPLICIT: [Demo; 10] = [
        Demo::Vadd,
        Demo::Saxpy,
        Demo::Bfs,
        Demo::BfsTopdown,
        Demo::Spmv,
        Demo::Conv2d,
        Demo::Gemm,
        Demo::Atax,
        Demo::Bicg,
        Demo::Histogram,
    ];

    /// The demos a group stands for (a single demo stands for itself).
    pub fn expand(self) -> Vec<Demo> {
        match self {
            Demo::All => Self::EVERY.to_vec(),
            Demo::Polybench => vec![Demo::Conv2d, Demo::Gemm, Demo::Atax, Demo::Bicg],
            d => vec![d],
        }
    }

    /// Name in the output. Panics on a group ([`Demo::expand`] it first).
    pub fn label(self) -> &'static str {
        match self {
            Demo::Vadd => "Vadd",
            Demo::Saxpy => "Saxpy",
            Demo::List => "List",
            Demo::Tree => "Tree",
            Demo::Bfs => "BFS",
            Demo::BfsTopdown => "BFS-TD",
            Demo::Spmv => "SpMV",
            Demo::Conv2d => "Conv2D",
            Demo::Gemm => "GEMM",
            Demo::Atax => "ATAX",
            Demo::Bicg => "BICG",
            Demo::Histogram => "Histogram",
            Demo::Polybench | Demo::All => unreachable!("expanded"),
        }
    }

    /// Run the demo (and, with `ctx.check`, its result checks: a failed
    /// check is an `Err`). Panics on a group ([`Demo::expand`] it first).
    pub fn run(self, ctx: &Ctx) -> Result<Outcome> {
        match self {
            Demo::Vadd => vadd::vadd(ctx),
            Demo::Saxpy => vadd::saxpy(ctx),
            Demo::List => list::run(ctx),
            Demo::Tree => tree::run(ctx),
            Demo::Bfs => bfs::run(ctx),
            Demo::BfsTopdown => bfs::run_topdown(ctx),
            Demo::Spmv => spmv::run(ctx),
            Demo::Conv2d => polybench::conv2d(ctx),
            Demo::Gemm => polybench::gemm(ctx),
            Demo::Atax => polybench::atax(ctx),
            Demo::Bicg => polybench::bicg(ctx),
            Demo::Histogram => histogram::run(ctx),
            Demo::Polybench | Demo::All => unreachable!("expanded"),
        }
    }
}

/// How the array demos' managed variant reaches managed memory.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AccessStyle {
    /// Plain WGSL kernels with their own bindings, bound to managed ranges
    /// (the GPU translates and bounds-checks); the explicit-copy twin runs
    /// the same source on plain buffers.
    #[default]
    Bound,
    /// The prelude's `svm_load_*` / `svm_store_*` through managed pointers
    /// passed as arguments, checked in software.
    Pointer,
}

impl AccessStyle {
    pub fn name(self) -> &'static str {
        match self {
            AccessStyle::Bound => "bound",
            AccessStyle::Pointer => "pointer",
        }
    }
}

/// What every demo gets.
pub struct Ctx {
    pub svm: Svm,
    /// Problem size; `None`: each demo's default.
    pub size: Option<usize>,
    /// BFS: log2 of the vertex count; `None`: 16.
    pub scale: Option<u32>,
    /// Check results against the CPU reference (and managed = explicit).
    pub check: bool,
    /// Bound or pointer kernels for the array demos (default bound). BFS-TD
    /// and the histogram are bound only; List, Tree and BFS pointer only.
    pub access: AccessStyle,
    explicit: OnceCell<Explicit>,
}

impl Ctx {
    pub fn new(svm: Svm, size: Option<usize>, scale: Option<u32>, check: bool) -> Self {
        Self { svm, size, scale, check, access: AccessStyle::Bound, explicit: OnceCell::new() }
    }

    /// The same context with `access` for the array demos.
    pub fn with_access(mut self, access: AccessStyle) -> Self {
        self.access = access;
        self
    }

    /// The explicit-copy device, created on first use.
    pub fn explicit(&self) -> Result<&Explicit> {
        if let Some(e) = self.explicit.get() {
            return Ok(e);
        }
        let e = Explicit::new()?;
        println!("explicit-copy baseline: own wgpu device on {}", e.info);
        Ok(self.explicit.get_or_init(|| e))
    }
}

/// What a demo reports for the summary.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Managed variant: launches + migration + reading results back.
    pub managed_ms: Option<f64>,
    /// Explicit-copy variant: uploads + kernels + downloads.
    pub explicit_ms: Option<f64>,
    /// The explicit variant's time split into its phases, where they are
    /// separate (not BFS, whose levels interleave them).
    pub explicit_split: Option<Timing>,
    /// One line for the summary (TEPS, sizes, …).
    pub note: String,
}
