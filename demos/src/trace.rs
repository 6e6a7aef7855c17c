//! What the demos show of the runtime while they run: a `tracing`
//! subscriber for log output, and optionally a Chrome/Perfetto trace of the
//! runtime's spans.
//!
//! * Log output goes to stderr, filtered by `RUST_LOG` (tracing-subscriber's
//!   `EnvFilter` syntax, e.g. `RUST_LOG=svm=debug,wgpu_core=info`); without
//!   it, warnings and errors only. wgpu and naga log through the `log` crate:
//!   their records are bridged into `tracing` (`tracing_log::LogTracer`) and
//!   filtered the same way.
//! * With a trace file, a second layer writes every span of the svm crates
//!   at debug level and above (`svm_launch`, `svm_kernel`, `svm_h2d_batch`,
//!   `svm_d2h_batch`, `svm_cpu_fault`, `svm_evict`, `svm_prefetch`,
//!   `svm_bind_compact`), whatever `RUST_LOG` says: the layer has its own
//!   filter. The file is a JSON array of Trace Event format records (`B`/`E`
//!   pairs per thread, timestamps in µs, span fields under `args`); open it
//!   in Perfetto (ui.perfetto.dev) or `chrome://tracing`. It is complete
//!   once the [`TraceGuard`] is dropped.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Environment variable naming a trace file, when `--trace` is not given.
pub const TRACE_ENV: &str = "SVM_TRACE";

/// Keeps the trace writer running; dropping it finishes the file.
#[must_use = "the trace file is complete only when this is dropped"]
pub struct TraceGuard {
    chrome: Option<(tracing_chrome::FlushGuard, PathBuf)>,
}

impl TraceGuard {
    /// Finish the trace file (flush it and close the JSON array); returns
    /// its path, `None` when no trace was written.
    pub fn finish(mut self) -> Option<PathBuf> {
        self.chrome.take().map(|(guard, path)| {
            drop(guard);
            path
        })
    }
}

/// The trace file to write: `flag` if given, else `$SVM_TRACE` if set and
/// not empty.
pub fn trace_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| std::env::var_os(TRACE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// Install the process-wide subscriber (once per process): log output to
/// stderr by `RUST_LOG`, and with `trace`, the Chrome trace of the svm
/// crates' spans to that file (created or truncated now).
pub fn init(trace: Option<&Path>) -> Result<TraceGuard> {
    let env = EnvFilter::builder().with_default_directive(LevelFilter::WARN.into()).from_env_lossy();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(env);
    let (chrome, guard) = match trace {
        Some(path) => {
            let file = File::create(path).with_context(|| format!("creating the trace file {}", path.display()))?;
            let (layer, guard) = tracing_chrome::ChromeLayerBuilder::new()
                .writer(file)
                .include_args(true)
                .include_locations(false)
                .build();
            // "svm" is a prefix of every svm crate's targets: the runtime
            // (`svm::…`), the mechanism (`svm_migrate::…`), the demos.
            let only_svm = Targets::new().with_target("svm", LevelFilter::DEBUG);
            (Some(layer.with_filter(only_svm)), Some((guard, path.to_path_buf())))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(chrome)
        .try_init()
        .context("installing the tracing subscriber (and the `log` bridge)")?;
    Ok(TraceGuard { chrome: guard })
}
