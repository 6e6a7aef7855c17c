//! `svm-demos`: the command line over the `svm_demos` library (the demos
//! themselves live there).
//!
//! `svm-demos all` runs every demo at its default size (the README's main
//! command); `svm-demos vadd --size 1000000 --fault mprotect` runs one.
//! `RUST_LOG` filters the log output (stderr; default: warnings), and
//! `--trace FILE` (or `SVM_TRACE=FILE`) writes a Chrome/Perfetto trace of
//! the runtime's spans (see `svm_demos::trace`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use svm::{FaultBackendKind, Svm, SvmDescriptor, SvmError};
use svm_demos::{AccessStyle, Ctx, Demo, NoAdapter};

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
    /// the arena is 512 MiB so that it fits four storage bindings (devices
    /// without binding arrays).
    Sparse,
    /// The kernels use the CPU's pages in place (host memory imported with
    /// VK_EXT_external_memory_host): nothing migrates; the arena is 512 MiB
    /// so that it fits four storage bindings (devices without binding
    /// arrays).
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
    /// Managed-memory mode.
    #[arg(long, value_enum, default_value_t = Mode::Software)]
    mode: Mode,
    /// How the array demos (vadd, saxpy, SpMV, PolyBench) reach managed
    /// memory: `bound` (plain WGSL kernels with their own bindings, the same
    /// source as the explicit-copy twin) or `pointer` (the prelude's
    /// managed pointers). BFS-TD and the histogram are bound only; List,
    /// Tree and BFS pointer only.
    #[arg(long, value_enum, default_value_t = AccessStyle::Bound)]
    access: AccessStyle,
    /// Write a Chrome/Perfetto trace (JSON, Trace Event format) of the
    /// runtime's spans to FILE: launches, kernels, migrations each way, CPU
    /// faults, evictions (default: $SVM_TRACE, if set). Open it in
    /// ui.perfetto.dev. Log output is filtered by $RUST_LOG (default:
    /// warnings).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
}

/// Exit code when no adapter exists (the integration test turns it into a
/// skip).
const EXIT_NO_ADAPTER: u8 = 77;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let trace = match svm_demos::trace::init(svm_demos::trace::trace_path(cli.trace.as_deref()).as_deref()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("svm-demos: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let code = run_main(&cli);
    // The runtime is gone (its fault thread joined): the trace is complete.
    if let Some(path) = trace.finish() {
        eprintln!("svm-demos: trace written to {}", path.display());
    }
    code
}

fn run_main(cli: &Cli) -> ExitCode {
    match run(cli) {
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
    let mut desc = SvmDescriptor::default().fault_chunk(cli.chunk);
    match cli.mode {
        Mode::Software => {}
        Mode::Sparse => desc = desc.mapping(svm::MappingMode::Sparse).arena_size(512 << 20),
        Mode::Coherent => desc = desc.mapping(svm::MappingMode::Coherent).arena_size(512 << 20),
    }
    if let Some(f) = cli.fault {
        desc = desc.fault_backend(match f {
            Fault::Uffd => FaultBackendKind::Uffd,
            Fault::Mprotect => FaultBackendKind::Mprotect,
        });
    }
    let svm = Svm::with_descriptor(&desc).context("creating the svm runtime")?;
    println!(
        "svm: device {}, fault backend {}, mapping {:?}{}, arena {} MiB at {:#x}, pool {} MiB, fault chunk {} KiB, {} access",
        svm.device_info(),
        svm.fault_backend(),
        svm.mapping_mode(),
        if svm.pool_is_host_mapped() { " (host-mapped pool)" } else { "" },
        svm.arena_size() >> 20,
        svm.arena_base(),
        (svm.pool_pages() as usize * 4096) >> 20,
        svm.fault_chunk() >> 10,
        cli.access.name()
    );
    let ctx = Ctx::new(svm, cli.size, cli.scale, cli.check).with_access(cli.access);
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
    println!("{:<9} {:<8} {:>9} {:>12} {:>12}  notes", "demo", "check", "wall", "managed", "explicit");
    let fmt = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"));
    for (name, status, secs, o) in &rows {
        println!(
            "{name:<9} {status:<8} {:>9} {:>12} {:>12}  {}",
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
