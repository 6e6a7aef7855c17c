//! Migration statistics: counters per direction, kept with relaxed atomics
//! (they are reports, not synchronisation).

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One list of counters: the live atomics ([`Counters`]), the snapshot
/// ([`Stats`]), and the conversions between them, from a single definition.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        #[derive(Default, Debug)]
        pub(crate) struct Counters {
            $(pub $name: AtomicU64,)*
        }

        /// A snapshot of the migration statistics of one runtime.
        #[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl Stats {
            /// Counter differences `self - earlier`.
            pub fn since(&self, e: &Stats) -> Stats {
                Stats { $($name: self.$name - e.$name,)* }
            }
        }
    };
}

counters! {
    /// Pages migrated host → device.
    h2d_pages,
    /// Copy batches host → device.
    h2d_batches,
    /// Time spent migrating host → device, ns.
    h2d_ns,
    /// Of `h2d_pages`, those a launch copied with the update lock released
    /// (its pages claimed by its flight: CPU faults on other pages, `alloc`
    /// and `free` went on meanwhile).
    h2d_unlocked_pages,
    /// Pages migrated device → host.
    d2h_pages,
    /// Copy batches device → host (one per served CPU fault that moved data).
    d2h_batches,
    /// Time spent migrating device → host, ns.
    d2h_ns,
    /// CPU faults served.
    cpu_faults,
    /// Kernel launches.
    launches,
    /// Time from dispatch to completion, ns (the kernel and the queue's
    /// latency).
    kernel_ns,
    /// The kernels' own time from GPU timestamps, ns: counted only where the
    /// device has timestamp queries and a tracing subscriber records svm's
    /// debug spans (e.g. the demos' `--trace`); else 0.
    kernel_gpu_ns,
    /// Page-table bytes uploaded.
    pt_upload_bytes,
    /// Distinct pages faulted by kernels (replayable launches).
    gpu_faults,
    /// Kernel replays after GPU faults.
    replays,
    /// Device pages evicted to the host to make room (oversubscription).
    evicted_pages,
    /// Pages the runtime chose to serve from host memory in place (the
    /// coherent window) because a launch's working set did not fit the
    /// pool: counted when the range is imported.
    remote_pages,
    /// Kernel passes that checked accesses against the launch's extents
    /// (the fast path: no page-table load per access).
    extent_passes,
    /// Kernel passes that looked every access up in the page table
    /// (replayable launches, and launches mapping more than
    /// `svm_shaders::MAX_EXTENTS` extents).
    page_table_passes,
    /// Kernel passes whose managed data came only through bound ranges
    /// (no prelude: no software check at all).
    bound_passes,
    /// Pages moved together on the device so that a bound range occupies
    /// consecutive frames (software mode).
    bind_moves,
    /// `Svm::with_bindings` scopes (the application's own passes).
    app_scopes,
    /// Pages zeroed on the device instead of copied in
    /// (`Binding::write_discard`).
    discarded_pages,
    /// Submissions that carried kernel passes (one per pass, or one per
    /// batch of passes queued behind a running one).
    pass_submissions,
    /// Kernel passes that waited in a batch behind a running pass and were
    /// submitted with the batch (see `LaunchQueue`).
    batched_passes,
    /// Pages needed again by a launch after eviction wrote them back (the
    /// pool is thrashing; eviction then keeps the longest-resident pages).
    refaults,
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
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Relaxed);
    }
}
