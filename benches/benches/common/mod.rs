//! Helpers shared by the bench binaries: the plain-wgpu baseline device, the
//! page-touching kernel, a trivial fault handler over the raw mechanism,
//! medians, machine facts, the source description and the bar-chart axes.
//!
//! Every item is used by at least one of the binaries that include this
//! module; each binary uses only some of them.
#![allow(dead_code, reason = "shared between bench binaries, each using part of it")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use svm_migrate::{Arena, CpuFault, FaultBackendKind, FaultFatal, FaultHandler, FaultService};

/// Managed page size.
pub const PAGE: usize = 4096;

/// `--quick` on the command line or `SVM_BENCH_QUICK=1`: a smoke run.
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--quick") || std::env::var("SVM_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// Where a bench writes its results: `SVM_BENCH_OUT` or `results/`, and
/// `quick/` under it for a smoke run.
pub fn out_dir(quick: bool) -> std::path::PathBuf {
    let root = std::env::var_os("SVM_BENCH_OUT").map_or_else(
        || std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../results")),
        std::path::PathBuf::from,
    );
    if quick {
        root.join("quick")
    } else {
        root
    }
}

/// A migration path a bench runs on: a mapping mode and where the pool is.
#[derive(Clone, Copy)]
pub struct ModePath {
    pub name: &'static str,
    pub mode: svm::MappingMode,
    pub host_mapped_pool: bool,
}

/// The paths that migrate (the coherent mode moves nothing), side by side
/// in the benches that compare them.
pub const MIGRATING_PATHS: [ModePath; 4] = [
    ModePath { name: "host-mapped pool", mode: svm::MappingMode::Software, host_mapped_pool: true },
    ModePath { name: "staged pool", mode: svm::MappingMode::Software, host_mapped_pool: false },
    ModePath { name: "sparse, host-mapped", mode: svm::MappingMode::Sparse, host_mapped_pool: true },
    ModePath { name: "sparse, staged", mode: svm::MappingMode::Sparse, host_mapped_pool: false },
];

/// The migrating paths, and the coherent mode (nothing moves: kernels on
/// host memory in place).
pub fn paths_and_coherent() -> Vec<ModePath> {
    let mut v = MIGRATING_PATHS.to_vec();
    v.push(ModePath { name: "coherent (in place)", mode: svm::MappingMode::Coherent, host_mapped_pool: true });
    v
}

/// The command that makes bench `name`'s results (`--quick`: the smoke run).
pub fn bench_command(name: &str, quick: bool) -> String {
    let tail = if quick { " -- --quick" } else { "" };
    format!("cargo bench -p svm-benches --bench {name}{tail}")
}

/// Print `out` and write it to `file` in [`out_dir`].
pub fn write_result(quick: bool, file: &str, out: &str) {
    print!("{out}");
    let dir = out_dir(quick);
    std::fs::create_dir_all(&dir).expect("results dir");
    std::fs::write(dir.join(file), out).expect("write results");
}

/// Kernel that stores `i ^ tag` into the first word of page `i` of a managed
/// buffer, for `i < pages`. Args: ptr (words 0-1), pages (2), tag (3).
/// One store per page: the kernel itself costs little, yet every page it is
/// given is written on the device.
pub const TOUCH_PAGES: &str = r#"
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let p = svm_arg_ptr(0u);
    let n = svm_arg_u32(2u);
    let tag = svm_arg_u32(3u);
    let stride = nwg.x * 64u;
    for (var i = gid.x; i < n; i += stride) {
        svm_store_u32(svm_ptr_add(p, i * 4096u), i ^ tag);
    }
}
"#;

/// Workgroups for [`TOUCH_PAGES`] over `pages` pages.
pub fn touch_workgroups(pages: usize) -> [u32; 3] {
    [u32::try_from(pages.div_ceil(64).clamp(1, 1024)).expect("small"), 1, 1]
}

/// Median of `v` (sorted in place): the middle value, or the mean of the
/// middle two for an even count; 0 for an empty slice. The one median of
/// every bench.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Bytes per nanosecond = GB/s.
pub fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_nanos().max(1) as f64
}

/// Whether a GPU is required (`SVM_REQUIRE_GPU=1`): then a missing adapter
/// panics instead of skipping, so a GPU-less run cannot look green.
pub fn gpu_required() -> bool {
    std::env::var("SVM_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// A plain wgpu device picked the way the runtime picks its own
/// (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`), for the explicit-copy baselines.
pub struct PlainGpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: svm::DeviceInfo,
}

impl PlainGpu {
    pub fn new() -> Option<Self> {
        let (_adapter, device, queue, info) = svm::create_wgpu_device().ok()?;
        Some(Self { device, queue, info })
    }

    pub fn wait(&self) {
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device poll");
    }

    pub fn buffer(&self, label: &str, size: usize, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size as u64,
            usage,
            mapped_at_creation: false,
        })
    }

    /// `queue.write_buffer` of `src` + submit + wait: the explicit upload.
    pub fn upload(&self, dst: &wgpu::Buffer, src: &[u8]) -> Duration {
        let t = Instant::now();
        self.queue.write_buffer(dst, 0, src);
        self.queue.submit([]);
        self.wait();
        t.elapsed()
    }

    /// copy_buffer_to_buffer into a MAP_READ staging buffer + map_async +
    /// wait + memcpy into `dst` + unmap: the explicit readback.
    pub fn readback(&self, src: &wgpu::Buffer, staging: &wgpu::Buffer, dst: &mut [u8]) -> Duration {
        let len = dst.len() as u64;
        let t = Instant::now();
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        enc.copy_buffer_to_buffer(src, 0, staging, 0, len);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..len);
        slice.map_async(wgpu::MapMode::Read, |r| r.expect("map_async"));
        self.wait();
        dst.copy_from_slice(&slice.get_mapped_range().expect("mapped range"));
        staging.unmap();
        t.elapsed()
    }
}

/// Fault handler over the raw mechanism: it only maps back the `restore`
/// bytes around the faulting page (no copy, no lock, no device). What is left
/// is the fault delivery floor of a backend.
pub struct RawHandler {
    pub arena: Arena,
    pub restore: usize,
}

impl FaultHandler for RawHandler {
    fn arena(&self) -> &Arena {
        &self.arena
    }
    fn handle_fault(&self, fault: CpuFault) -> Result<(), FaultFatal> {
        let a = fault.offset / self.restore * self.restore;
        let len = self.restore.min(self.arena.len() - a);
        self.arena.restore(a, len).map_err(|e| FaultFatal(e.to_string()))
    }
}

/// A raw arena of `len` bytes whose pages all hold data, with its service.
pub struct RawArena {
    pub handler: Arc<RawHandler>,
    _service: FaultService,
}

impl RawArena {
    pub fn new(len: usize, kind: FaultBackendKind, restore: usize) -> Result<Self, svm_migrate::MigrateError> {
        let arena = Arena::new(len, kind)?;
        arena.allocate(0, arena.len())?;
        // Give every page a host copy, as managed data has.
        let ones = vec![1u8; 1 << 20];
        for off in (0..arena.len()).step_by(ones.len()) {
            // SAFETY: the arena was just created: no fault service, no other
            // thread, no device uses it yet; `ones` is a heap buffer.
            unsafe { arena.write_host(off, &ones[..ones.len().min(arena.len() - off)]) };
        }
        let handler = Arc::new(RawHandler { arena, restore });
        let service = FaultService::start(handler.clone())?;
        Ok(Self { handler, _service: service })
    }
    pub fn arena(&self) -> &Arena {
        &self.handler.arena
    }
    /// Read the first byte of the page at `offset` through the user view.
    pub fn touch(&self, offset: usize) -> u8 {
        assert!(offset < self.arena().len());
        let p = (self.arena().base() + offset) as *const u8;
        // SAFETY: `p` lies in the arena's user view, which stays mapped for the
        // life of `self`; the page is allocated, so a zapped page faults and
        // the service maps it back before the read completes.
        unsafe { core::ptr::read_volatile(p) }
    }
}

/// `nproc`, kernel release and CPU model, for the report.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0)))
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{nproc} CPUs ({cpu}), {:.0} GiB RAM, Linux {}, load average at start {}",
        mem as f64 / (1 << 20) as f64,
        kernel.trim(),
        load.join(" ")
    )
}

/// Set the CPU affinity of every thread of this process (the fault service,
/// the driver's threads, this one): `Some(cpu)` pins them all to one CPU,
/// `None` gives them every online CPU back. Threads created meanwhile
/// inherit the mask of their creator.
///
/// On a 2-vCPU VM a fault's latency is bimodal: the service thread either
/// runs on the faulting thread's vCPU or has to be woken on an idle one
/// (tens of µs). Pinning measures the mechanisms, not the scheduler.
pub fn pin_process(cpu: Option<usize>) {
    use rustix::thread::{sched_setaffinity, CpuSet, Pid};
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(CpuSet::MAX_CPU);
    let mut set = CpuSet::new();
    for c in cpu.map_or(0..n, |c| c..c + 1) {
        set.set(c);
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()).and_then(Pid::from_raw) else { continue };
        // A thread that exited meanwhile only makes the call fail (ESRCH).
        let _ = sched_setaffinity(Some(tid), &set);
    }
}

/// The commit measured, and whether the runtime or mechanism had local edits.
pub fn git_describe() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(rev) = run(&["rev-parse", "--short", "HEAD"]) else { return "unknown (no git)".into() };
    let dirty =
        run(&["status", "--porcelain", "--", "runtime", "migrate", "shaders", "svm-pagetable"]).unwrap_or_default();
    if dirty.is_empty() {
        format!("commit {rev}")
    } else {
        format!("commit {rev} + uncommitted edits in runtime/migrate/shaders/svm-pagetable")
    }
}

/// Coordinates of [`bar_axes`]: one segment per bar, f64 values.
pub type BarCoord = plotters::prelude::Cartesian2d<
    plotters::coord::ranged1d::SegmentedCoord<plotters::coord::types::RangedCoordu32>,
    plotters::coord::types::RangedCoordf64,
>;

/// The axes of a bar chart with one segment per label and y from 0 to
/// `ymax`, mesh drawn; the caller draws the bars and reference lines.
pub fn bar_axes<'a, DB: plotters::prelude::DrawingBackend + 'a>(
    area: &'a plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: (&str, u32),
    labels: &[String],
    y_desc: &str,
    ymax: f64,
) -> Result<plotters::prelude::ChartContext<'a, DB, BarCoord>, plotters::prelude::DrawingAreaErrorKind<DB::ErrorType>> {
    use plotters::prelude::*;
    let n = labels.len() as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(caption.0, ("sans-serif", caption.1))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((0u32..n - 1).into_segmented(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .x_labels(labels.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(k) => labels.get(*k as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .draw()?;
    Ok(chart)
}
