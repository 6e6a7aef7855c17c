//! svm demos: kernels on managed memory built by the CPU, checked against a
//! CPU reference, with migration statistics; the BFS, SpMV and PolyBench
//! groups also run an explicit-copy variant (plain wgpu buffers) for
//! comparison.
//!
//! `svm-demos all` runs every demo at its default size (the README's main
//! command); `svm-demos vadd --size 1000000 --fault mprotect` runs one.

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
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use svm::{FaultBackendKind, Svm, SvmDescriptor, SvmError};

use crate::explicit::{Explicit, NoAdapter};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Demo {
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

    fn expand(self) -> Vec<Demo> {
        match self {
            Demo::All => Self::EVERY.to_vec(),
            Demo::Polybench => vec![Demo::Conv2d, Demo::Gemm, Demo::Atax, Demo::Bicg],
            d => vec![d],
        }
    }

    fn label(self) -> &'static str {
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

    fn run(self, ctx: &Ctx) -> Result<Outcome> {
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

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    Uffd,
    Mprotect,
}

/// How managed memory reaches the device.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Page table in a storage buffer, frames of a pool, translated in WGSL.
    Software,
    /// The arena's device view is a sparse buffer (Vulkan sparse binding);
    /// the arena is 512 MiB so that it fits four storage bindings.
    Sparse,
    /// Host-coherent mapping: per range in the runtime (`Advice::AccessedBy`),
    /// not a whole-demo mode yet.
    Coherent,
}

#[derive(Parser, Debug)]
#[command(version, about = "Shared-virtual-memory demos on wgpu/Vulkan")]
struct Cli {
    /// Which demo.
    demo: Demo,
    /// Problem size (elements, nodes, keys, rows or matrix dimension); each
    /// demo has a default. With `all`, applies to every demo but BFS.
    #[arg(long)]
    size: Option<usize>,
    /// BFS: log2 of the Kronecker graph's vertex count (default 16).
    #[arg(long)]
    scale: Option<u32>,
    /// CPU fault backend (default: $SVM_FAULT_BACKEND, else uffd).
    #[arg(long, value_enum)]
    fault: Option<Fault>,
    /// Check results against the CPU reference (default on; `--check=false`
    /// to time only).
    #[arg(long, num_args = 0..=1, default_value_t = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    check: bool,
    /// Bytes migrated back per CPU fault (4096 .. 2097152).
    #[arg(long, default_value_t = 64 << 10)]
    chunk: usize,
    /// Managed-memory mode; only `software` is built so far.
    #[arg(long, value_enum, default_value_t = Mode::Software)]
    mode: Mode,
}

/// What every demo gets.
pub struct Ctx {
    pub svm: Svm,
    pub size: Option<usize>,
    pub scale: Option<u32>,
    pub check: bool,
    explicit: OnceCell<Explicit>,
}

impl Ctx {
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
    /// One line for the summary (TEPS, sizes, …).
    pub note: String,
}

/// Exit code when no adapter exists (the integration test turns it into a
/// skip).
const EXIT_NO_ADAPTER: u8 = 77;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            let no_adapter = e.chain().any(|c| {
                c.downcast_ref::<NoAdapter>().is_some()
                    || matches!(c.downcast_ref::<SvmError>(), Some(SvmError::NoAdapter(_)))
            });
            eprintln!("svm-demos: {e:#}");
            if no_adapter {
                eprintln!("svm-demos: no adapter");
                ExitCode::from(EXIT_NO_ADAPTER)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Run the demos; `Ok(false)` when a check failed.
fn run(cli: &Cli) -> Result<bool> {
    if cli.mode == Mode::Coherent {
        bail!(
            "--mode coherent is not a whole-demo mode yet: in-place host access is per range \
             (svm::Advice::AccessedBy, see the README); use --mode software or --mode sparse"
        );
    }
    let mut desc = SvmDescriptor::default().fault_chunk(cli.chunk);
    if cli.mode == Mode::Sparse {
        desc = desc.mapping(svm::MappingMode::Sparse).arena_size(512 << 20);
    }
    if let Some(f) = cli.fault {
        desc = desc.fault_backend(match f {
            Fault::Uffd => FaultBackendKind::Uffd,
            Fault::Mprotect => FaultBackendKind::Mprotect,
        });
    }
    let svm = Svm::with_descriptor(&desc).context("creating the svm runtime")?;
    println!(
        "svm: device {}, fault backend {}, mapping {:?}{}, arena {} MiB at {:#x}, pool {} MiB, fault chunk {} KiB",
        svm.device_info(),
        svm.fault_backend(),
        svm.mapping_mode(),
        if svm.pool_is_host_mapped() { " (host-mapped pool)" } else { "" },
        svm.arena_size() >> 20,
        svm.arena_base(),
        (svm.pool_pages() as usize * 4096) >> 20,
        svm.fault_chunk() >> 10
    );
    let ctx = Ctx { svm, size: cli.size, scale: cli.scale, check: cli.check, explicit: OnceCell::new() };
    let start = ctx.svm.stats();
    let t_all = Instant::now();
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for d in cli.demo.expand() {
        let name = d.label();
        println!();
        let before = ctx.svm.stats();
        let t = Instant::now();
        let r = d.run(&ctx);
        let s = ctx.svm.stats().since(&before);
        let secs = t.elapsed().as_secs_f64();
        let status = match &r {
            Ok(_) if !ctx.check => {
                println!("[{name}] result check: SKIPPED (--check=false) ({secs:.2} s)");
                "skipped"
            }
            Ok(_) => {
                println!("[{name}] result check: OK ({secs:.2} s)");
                "OK"
            }
            Err(e) => {
                // A missing adapter is not a failed check: stop everything.
                if e.chain().any(|c| c.downcast_ref::<NoAdapter>().is_some()) {
                    return Err(r.unwrap_err());
                }
                println!("[{name}] result check: FAILED: {e:#}");
                failed.push(name);
                "FAILED"
            }
        };
        println!("[{name}] migration statistics (managed variant):\n{s}");
        if s.h2d_pages > 0 && s.d2h_pages > 0 && s.cpu_faults > 0 {
            println!("[{name}] pages went to the device and came back by CPU fault");
        }
        let o = r.unwrap_or_default();
        rows.push((name, status, secs, o));
    }

    println!("\n=== summary ({:.1} s) ===", t_all.elapsed().as_secs_f64());
    println!("{:<8} {:<8} {:>9} {:>12} {:>12}  notes", "demo", "check", "wall", "managed", "explicit");
    let fmt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"));
    for (name, status, secs, o) in &rows {
        println!(
            "{name:<8} {status:<8} {:>9} {:>12} {:>12}  {}",
            format!("{secs:.2} s"),
            fmt(o.managed_ms),
            fmt(o.explicit_ms),
            o.note
        );
    }
    println!("svm statistics, all demos:\n{}", ctx.svm.stats().since(&start));
    if !failed.is_empty() {
        println!("FAILED: {}", failed.join(", "));
        return Ok(false);
    }
    Ok(true)
}
