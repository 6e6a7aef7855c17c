//! svm demos: kernels on managed memory built by the CPU, checked against a
//! CPU reference, with migration statistics; the BFS, SpMV and PolyBench
//! groups also run an explicit-copy variant (plain wgpu buffers) for
//! comparison.
//!
//! The `svm-demos` binary is the command line over this library; the
//! `demos` benchmark of `svm-benches` runs the same [`Demo`]s through
//! [`Demo::run`].

mod bfs;
mod explicit;
mod kronecker;
mod list;
mod polybench;
mod spmv;
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
    /// Graph500-style BFS on a Kronecker graph of 2^scale vertices (default 16).
    Bfs,
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
    /// The four PolyBench kernels.
    Polybench,
    /// Every demo at its default size.
    All,
}

impl Demo {
    const EVERY: [Demo; 10] = [
        Demo::Vadd,
        Demo::Saxpy,
        Demo::List,
        Demo::Tree,
        Demo::Bfs,
        Demo::Spmv,
        Demo::Conv2d,
        Demo::Gemm,
        Demo::Atax,
        Demo::Bicg,
    ];

    /// The demos with an explicit-copy variant (BFS, SpMV, PolyBench).
    pub const WITH_EXPLICIT: [Demo; 6] = [Demo::Bfs, Demo::Spmv, Demo::Conv2d, Demo::Gemm, Demo::Atax, Demo::Bicg];

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
            Demo::Spmv => "SpMV",
            Demo::Conv2d => "Conv2D",
            Demo::Gemm => "GEMM",
            Demo::Atax => "ATAX",
            Demo::Bicg => "BICG",
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
            Demo::Spmv => spmv::run(ctx),
            Demo::Conv2d => polybench::conv2d(ctx),
            Demo::Gemm => polybench::gemm(ctx),
            Demo::Atax => polybench::atax(ctx),
            Demo::Bicg => polybench::bicg(ctx),
            Demo::Polybench | Demo::All => unreachable!("expanded"),
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
    explicit: OnceCell<Explicit>,
}

impl Ctx {
    pub fn new(svm: Svm, size: Option<usize>, scale: Option<u32>, check: bool) -> Self {
        Self { svm, size, scale, check, explicit: OnceCell::new() }
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
