//! Small helpers shared by the demos: a deterministic RNG, progress bars,
//! timing, result comparison.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use svm::{Arg, Binding, Kernel, KernelDescriptor, LaunchDescriptor, ManagedVec, Svm};

/// SplitMix64: small, fast and deterministic (the demos must be reproducible).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    /// Uniform in `[0, n)` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("  {msg:<28} [{bar:30}] {percent:>3}% {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Run `f` over `0..n` in chunks, ticking a progress bar.
pub fn with_progress(n: usize, msg: &str, mut f: impl FnMut(usize)) {
    let pb = progress(n as u64, msg);
    let step = (n / 100).max(1);
    for i in 0..n {
        f(i);
        if i % step == step - 1 {
            pb.inc(step as u64);
        }
    }
    pb.finish_and_clear();
}

/// A progress bar over the runtime's migrations (pages moved either way,
/// from [`Svm::stats`]) while a long launch or read-back runs: `expected`
/// bytes make 100 %. Drawn by a thread polling the counters every 50 ms,
/// only when stderr is a terminal (nothing is spawned otherwise, so timed
/// runs and pipes pay nothing); cleared when dropped.
pub struct MigrationProgress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn migration_progress(svm: &Svm, msg: &str, expected: u64) -> MigrationProgress {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return MigrationProgress { stop: None, thread: None };
    }
    let moved = |s: &svm::Stats| s.h2d_bytes() + s.d2h_bytes();
    let base = moved(&svm.stats());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let svm = svm.clone();
    let pb = progress(expected.max(1), msg);
    let thread = std::thread::spawn(move || {
        while rx.recv_timeout(Duration::from_millis(50)) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            pb.set_position((moved(&svm.stats()) - base).min(expected));
        }
        pb.finish_and_clear();
    });
    MigrationProgress { stop: Some(tx), thread: Some(thread) }
}

impl Drop for MigrationProgress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn kernel(svm: &Svm, label: &str, source: &str, entry_point: &str) -> Result<Kernel> {
    Ok(svm.create_kernel(&KernelDescriptor { label, source, entry_point })?)
}

/// Workgroups for a 1-D grid-stride loop over `n` items.
pub fn grid(n: usize, wg_size: u32) -> u32 {
    u32::try_from(n.div_ceil(wg_size as usize).clamp(1, 65535)).expect("clamped")
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Launch a kernel once on no data (`args` chosen so that it touches
/// nothing), so that the driver's compilation at first dispatch (seconds on
/// lavapipe for the prelude's translation code) stays out of the timings.
pub fn warm_up(svm: &Svm, k: &Kernel, args: &[Arg]) -> Result<Duration> {
    let t = Instant::now();
    svm.launch(k, &LaunchDescriptor { args, access: &[], bindings: &[], workgroups: [1, 1, 1] })?;
    Ok(t.elapsed())
}

/// [`warm_up`] for a bound kernel: one launch with the uniform `params` at
/// its first binding (group 0, binding 0, as every bound demo kernel has
/// it; chosen so that the kernel touches nothing) and a small managed
/// dummy at each of the others.
pub fn warm_up_bound<P: bytemuck::Pod>(svm: &Svm, k: &Kernel, params: &P) -> Result<Duration> {
    let t = Instant::now();
    let mut dummies =
        (1..k.bindings().count()).map(|_| svm.alloc_vec::<u32>(64)).collect::<Result<Vec<ManagedVec<u32>>, _>>()?;
    let mut bindings = vec![Binding::uniform(params)];
    bindings.extend(dummies.iter_mut().map(Binding::read_write));
    svm.launch(k, &LaunchDescriptor { bindings: &bindings, ..Default::default() })?;
    Ok(t.elapsed())
}

/// A null pointer argument (for [`warm_up`]).
pub const NULL: Arg = Arg::Ptr(0);

/// Bitwise comparison of two u32-sized arrays; the error names the first
/// differences.
pub fn same_bits<T: bytemuck::Pod + core::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Result<()> {
    if got.len() != want.len() {
        bail!("{what}: length {} != {}", got.len(), want.len());
    }
    let bytes = |x: &T| bytemuck::bytes_of(x).to_vec();
    let bad: Vec<usize> = (0..got.len()).filter(|&i| bytes(&got[i]) != bytes(&want[i])).collect();
    if !bad.is_empty() {
        let show: Vec<String> = bad.iter().take(5).map(|&i| format!("[{i}] {:?} != {:?}", got[i], want[i])).collect();
        bail!("{what}: {} of {} elements differ, e.g. {}", bad.len(), got.len(), show.join(", "));
    }
    Ok(())
}

/// Human-readable rate.
pub fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} k", x / 1e3)
    } else {
        format!("{x:.2} ")
    }
}
