//! The stress's report: what happened, added up over its workers.

use std::time::Duration;

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub ops: u64,
    pub cpu_reads: u64,
    pub cpu_writes: u64,
    pub launches: u64,
    /// Of `launches`, the application's own passes (`with_bindings`).
    pub app_passes: u64,
    pub replayable_launches: u64,
    pub prefetches: u64,
    pub advises: u64,
    pub allocs: u64,
    pub frees: u64,
    /// Launches submitted on launch queues (held, chained or leaked).
    pub queue_launches: u64,
    /// Queue batches (launches submitted, CPU work on other data, waits).
    pub batches: u64,
    /// Handles held while their thread worked on other data.
    pub held_launches: u64,
    /// Chains of launches on one array (raw declarations, several queues).
    pub queue_chains: u64,
    /// Batches whose handles were not waited for in submission order.
    pub out_of_order_waits: u64,
    /// Handles leaked (`std::mem::forget`); their data is read after.
    pub leaked: u64,
    /// Of those, handles whose kernel had not finished at the forget.
    pub leaked_running: u64,
    /// Inputs of a leaked launch written right after the forget.
    pub leaked_input_writes: u64,
    /// CPU operations that ended while a held kernel was still running.
    pub overlapped_cpu_ops: u64,
    /// `LaunchQueue::finish` calls.
    pub finishes: u64,
    /// Bytes compared against the model.
    pub checked_bytes: u64,
    pub mismatches: u64,
    /// Replayable launches refused with PoolExhausted (a known runtime bug,
    /// worked around; see `run`).
    pub known_replay_pool_exhausted: u64,
    /// Prefetches refused with PoolExhausted (a known runtime bug).
    pub known_prefetch_pool_exhausted: u64,
    /// Unexpected errors (any error from a call that must succeed).
    pub errors: Vec<String>,
    pub stats: Option<svm::Stats>,
    pub elapsed: Duration,
}

impl core::fmt::Display for Report {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        writeln!(
            f,
            "{} ops in {:.1} s: {} CPU reads, {} CPU writes, {} launches ({} replayable, {} application passes), {} prefetches, {} advises, {} allocs, {} frees; {:.1} MiB checked, {} mismatches, {} errors, known bugs: {} replayable launches and {} prefetches refused for pool space",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.cpu_reads,
            self.cpu_writes,
            self.launches,
            self.replayable_launches,
            self.app_passes,
            self.prefetches,
            self.advises,
            self.allocs,
            self.frees,
            self.checked_bytes as f64 / (1 << 20) as f64,
            self.mismatches,
            self.errors.len(),
            self.known_replay_pool_exhausted,
            self.known_prefetch_pool_exhausted
        )?;
        writeln!(
            f,
            "  queues: {} launches in {} batches, {} handles held while the CPU worked on other data ({} CPU ops overlapped a running kernel), {} chains, {} batches waited out of order, {} handles leaked ({} with the kernel running, {} inputs written after the forget), {} finishes",
            self.queue_launches,
            self.batches,
            self.held_launches,
            self.overlapped_cpu_ops,
            self.queue_chains,
            self.out_of_order_waits,
            self.leaked,
            self.leaked_running,
            self.leaked_input_writes,
            self.finishes
        )?;
        if let Some(s) = &self.stats {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Add a worker's counts to the run's.
pub(super) fn merge(into: &std::sync::Mutex<Report>, l: &Report) {
    let mut r = into.lock().expect("report");
    r.ops += l.ops;
    r.cpu_reads += l.cpu_reads;
    r.cpu_writes += l.cpu_writes;
    r.launches += l.launches;
    r.app_passes += l.app_passes;
    r.replayable_launches += l.replayable_launches;
    r.prefetches += l.prefetches;
    r.advises += l.advises;
    r.allocs += l.allocs;
    r.frees += l.frees;
    r.checked_bytes += l.checked_bytes;
    r.mismatches += l.mismatches;
    r.known_replay_pool_exhausted += l.known_replay_pool_exhausted;
    r.known_prefetch_pool_exhausted += l.known_prefetch_pool_exhausted;
    r.queue_launches += l.queue_launches;
    r.batches += l.batches;
    r.held_launches += l.held_launches;
    r.queue_chains += l.queue_chains;
    r.out_of_order_waits += l.out_of_order_waits;
    r.leaked += l.leaked;
    r.leaked_running += l.leaked_running;
    r.leaked_input_writes += l.leaked_input_writes;
    r.overlapped_cpu_ops += l.overlapped_cpu_ops;
    r.finishes += l.finishes;
    r.errors.extend(l.errors.iter().cloned());
}
