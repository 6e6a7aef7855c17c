//! Migration statistics: counters per direction, kept with relaxed atomics
//! (they are reports, not synchronisation).

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub h2d_pages: AtomicU64,
    pub h2d_batches: AtomicU64,
    pub h2d_ns: AtomicU64,
    pub d2h_pages: AtomicU64,
    pub d2h_batches: AtomicU64,
    pub d2h_ns: AtomicU64,
    pub cpu_faults: AtomicU64,
    pub launches: AtomicU64,
    pub kernel_ns: AtomicU64,
    pub pt_upload_bytes: AtomicU64,
    pub gpu_faults: AtomicU64,
    pub replays: AtomicU64,
    pub evicted_pages: AtomicU64,
}

/// A snapshot of the migration statistics of one runtime.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Pages migrated host → device.
    pub h2d_pages: u64,
    /// Copy batches host → device.
    pub h2d_batches: u64,
    /// Time spent migrating host → device, ns.
    pub h2d_ns: u64,
    /// Pages migrated device → host.
    pub d2h_pages: u64,
    /// Copy batches device → host (one per served CPU fault that moved data).
    pub d2h_batches: u64,
    /// Time spent migrating device → host, ns.
    pub d2h_ns: u64,
    /// CPU faults served.
    pub cpu_faults: u64,
    /// Kernel launches.
    pub launches: u64,
    /// Time from dispatch to completion, ns.
    pub kernel_ns: u64,
    /// Page-table bytes uploaded.
    pub pt_upload_bytes: u64,
    /// Distinct pages faulted by kernels (replayable launches).
    pub gpu_faults: u64,
    /// Kernel replays after GPU faults.
    pub replays: u64,
    /// Device pages evicted to the host to make room (oversubscription).
    pub evicted_pages: u64,
}

impl Stats {
    /// Bytes host → device.
    pub fn h2d_bytes(&self) -> u64 {
        self.h2d_pages * svm_pagetable::PAGE_SIZE as u64
    }
    /// Bytes device → host.
    pub fn d2h_bytes(&self) -> u64 {
        self.d2h_pages * svm_pagetable::PAGE_SIZE as u64
    }
    /// Counter differences `self - earlier`.
    pub fn since(&self, e: &Stats) -> Stats {
        Stats {
            h2d_pages: self.h2d_pages - e.h2d_pages,
            h2d_batches: self.h2d_batches - e.h2d_batches,
            h2d_ns: self.h2d_ns - e.h2d_ns,
            d2h_pages: self.d2h_pages - e.d2h_pages,
            d2h_batches: self.d2h_batches - e.d2h_batches,
            d2h_ns: self.d2h_ns - e.d2h_ns,
            cpu_faults: self.cpu_faults - e.cpu_faults,
            launches: self.launches - e.launches,
            kernel_ns: self.kernel_ns - e.kernel_ns,
            pt_upload_bytes: self.pt_upload_bytes - e.pt_upload_bytes,
            gpu_faults: self.gpu_faults - e.gpu_faults,
            replays: self.replays - e.replays,
            evicted_pages: self.evicted_pages - e.evicted_pages,
        }
    }
}

fn gbps(bytes: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        bytes as f64 / ns as f64
    }
}

impl core::fmt::Display for Stats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(
            f,
            "  host->device: {} pages, {:.1} MiB in {} batches, {:.1} ms ({:.2} GB/s)",
            self.h2d_pages,
            self.h2d_bytes() as f64 / (1 << 20) as f64,
            self.h2d_batches,
            self.h2d_ns as f64 / 1e6,
            gbps(self.h2d_bytes(), self.h2d_ns)
        )?;
        writeln!(
            f,
            "  device->host: {} pages, {:.1} MiB in {} batches, {:.1} ms ({:.2} GB/s), {} CPU faults, {} pages evicted",
            self.d2h_pages,
            self.d2h_bytes() as f64 / (1 << 20) as f64,
            self.d2h_batches,
            self.d2h_ns as f64 / 1e6,
            gbps(self.d2h_bytes(), self.d2h_ns),
            self.cpu_faults,
            self.evicted_pages
        )?;
        write!(
            f,
            "  launches: {}, kernel time {:.1} ms, page-table upload {} KiB, GPU faults {} pages, replays {}",
            self.launches,
            self.kernel_ns as f64 / 1e6,
            self.pt_upload_bytes / 1024,
            self.gpu_faults,
            self.replays
        )
    }
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        Stats {
            h2d_pages: self.h2d_pages.load(Relaxed),
            h2d_batches: self.h2d_batches.load(Relaxed),
            h2d_ns: self.h2d_ns.load(Relaxed),
            d2h_pages: self.d2h_pages.load(Relaxed),
            d2h_batches: self.d2h_batches.load(Relaxed),
            d2h_ns: self.d2h_ns.load(Relaxed),
            cpu_faults: self.cpu_faults.load(Relaxed),
            launches: self.launches.load(Relaxed),
            kernel_ns: self.kernel_ns.load(Relaxed),
            pt_upload_bytes: self.pt_upload_bytes.load(Relaxed),
            gpu_faults: self.gpu_faults.load(Relaxed),
            replays: self.replays.load(Relaxed),
            evicted_pages: self.evicted_pages.load(Relaxed),
        }
    }
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Relaxed);
    }
}
