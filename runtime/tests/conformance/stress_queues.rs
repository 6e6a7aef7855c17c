//! Queue workers of the stress (`stress_core`): launches that do not wait.
//!
//! Each queue worker owns a few managed arrays and their model, like the
//! other workers, and repeats *batches*: it splits its arrays into targets
//! (written by kernels), sources (read by kernels) and the rest, submits
//! launches on the targets to [`LaunchQueue`]s shared by all queue workers
//! (a target gets one launch with safe borrows, or a chain of launches with
//! raw declarations, each on a random queue), and, *holding* the handles,
//! keeps working on the CPU: reads and writes the other arrays, reads the
//! sources (which the kernels only read), allocates and frees, launches on
//! other arrays synchronously or on a queue with a handle that it leaks
//! (`std::mem::forget`) and then reads or writes the leaked launch's data at
//! once, prefetches, finishes queues. Then it waits for the handles in a
//! random order (`wait`, `.await`, a drop, or a leak of a launch borrowed
//! safely: its data is then read like any other), CPU work in between, and
//! checks the targets against the model.
//!
//! Data a pending launch writes is touched by safe code only after its
//! handle was waited for (the borrow checker sees to it for safe borrows;
//! raw chains are touched only after all their handles are waited for),
//! or, for a leaked handle, after the forget — where the runtime must make
//! the access wait for the kernel, so the data reads back exactly. The
//! model of a launch is applied when its handle has been waited for (in
//! submission order), or at the forget for a leaked one. A leaked launch's
//! *input* may be written right after the forget: the kernel must still
//! compute from the input as it was at the launch.
//!
//! Three runtime bugs this test found are fixed, their reproductions in
//! `tests/gpu/queue.rs`; the test no longer works around them: a bound
//! launch refused with `PoolExhausted` in a pool with room, the data of a
//! refused `write_discard` target lost on the staged path, and a leaked
//! launch reading its input in place seeing later CPU writes to it. A
//! refusal is an error.

use std::sync::atomic::Ordering::Relaxed;

use svm::{Access, AccessMode, Arg, Binding, Kernel, LaunchDescriptor, LaunchQueue, Location, Pending, Svm};

use super::{wg, Buf, Kernels, Report, Rng, Shared};

/// What a launch does to its target.
#[derive(Copy, Clone, Debug)]
enum Op {
    /// Pointer kernel AFFINE: p[i] = p[i] * mul + add.
    Affine,
    /// Pointer kernel FILL: p[i] = i * mul + add.
    Fill,
    /// Pointer kernel ADD_SRC: dst[i] += src[i] * mul, i < both lengths;
    /// `src` indexes the batch's sources.
    AddSrc { src: usize },
    /// Bound kernel SCALE_BOUND: the affine map, on a bound range.
    ScaleBound,
    /// Bound kernel FILL_BOUND: the fill, bound `write_discard`.
    FillBound,
}

/// One launch of a batch.
#[derive(Copy, Clone, Debug)]
struct Spec {
    target: usize,
    op: Op,
    mul: u32,
    add: u32,
    queue: usize,
    /// Declared raw (a link of a chain on one target), not borrowed.
    raw: bool,
}

/// What became of a launch's handle.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Fate {
    /// Not submitted (its submit failed) or its result was an error.
    Failed,
    Submitted,
    Waited,
    Dropped,
    Leaked,
}

/// The model of one launch on `model`; `src` for `AddSrc`.
fn apply(model: &mut [u32], op: Op, mul: u32, add: u32, src: Option<&[u32]>) {
    match op {
        Op::Affine | Op::ScaleBound => model.iter_mut().for_each(|x| *x = x.wrapping_mul(mul).wrapping_add(add)),
        Op::Fill | Op::FillBound => {
            for (i, x) in model.iter_mut().enumerate() {
                *x = (i as u32).wrapping_mul(mul).wrapping_add(add);
            }
        }
        Op::AddSrc { .. } => {
            let src = src.expect("add_src has a source");
            for (d, s) in model.iter_mut().zip(src) {
                *d = d.wrapping_add(s.wrapping_mul(mul));
            }
        }
    }
}

/// A launch's target: borrowed (safe declarations) or raw.
enum Target<'b> {
    Owned(&'b mut Buf),
    Raw(*const u32, usize),
}

/// A launch's descriptor parts, alive as long as its handle.
struct Prepared<'b> {
    kernel: &'b Kernel,
    args: Vec<Arg>,
    access: Vec<Access<'b>>,
    bindings: Vec<Binding<'b>>,
    workgroups: [u32; 3],
}

impl Prepared<'_> {
    fn desc(&self) -> LaunchDescriptor<'_> {
        LaunchDescriptor {
            args: &self.args,
            access: &self.access,
            bindings: &self.bindings,
            workgroups: self.workgroups,
        }
    }
}

fn prepare<'b>(
    k: &'b Kernels,
    op: Op,
    mul: u32,
    add: u32,
    t: Target<'b>,
    src: Option<&'b Buf>,
    u: &'b [u32; 4],
) -> Prepared<'b> {
    let (ptr, len) = match &t {
        Target::Owned(b) => (b.v.as_ptr(), b.v.len()),
        Target::Raw(p, n) => (*p, *n),
    };
    // The target's declaration: borrowed, or raw (the chain's contract).
    let access_rw = |t: Target<'b>| -> Access<'b> {
        match t {
            Target::Owned(b) => Access::read_write(&mut b.v),
            // SAFETY: a raw target is a link of a chain on one array, which
            // no Rust reference touches until every handle of the chain has
            // been waited for (see `QueueWorker::batch`).
            Target::Raw(p, n) => unsafe { Access::raw(p.cast(), n * 4, AccessMode::ReadWrite) },
        }
    };
    let bind_rw = |t: Target<'b>, discard: bool| -> Binding<'b> {
        match t {
            Target::Owned(b) if discard => Binding::write_discard(&mut b.v),
            Target::Owned(b) => Binding::read_write(&mut b.v),
            // SAFETY: as for `access_rw`.
            Target::Raw(p, n) => unsafe { Binding::raw(p.cast(), n * 4, AccessMode::ReadWrite) },
        }
    };
    match op {
        Op::Affine | Op::Fill => Prepared {
            kernel: if matches!(op, Op::Affine) { &k.affine } else { &k.fill },
            args: vec![Arg::ptr(ptr), Arg::U32(len as u32), Arg::U32(mul), Arg::U32(add)],
            access: vec![access_rw(t)],
            bindings: vec![],
            workgroups: wg(len),
        },
        Op::AddSrc { .. } => {
            let src = src.expect("add_src has a source");
            let n = len.min(src.v.len());
            Prepared {
                kernel: &k.add_src,
                args: vec![Arg::ptr(src.v.as_ptr()), Arg::ptr(ptr), Arg::U32(n as u32), Arg::U32(mul)],
                access: vec![Access::read(&src.v), access_rw(t)],
                bindings: vec![],
                workgroups: wg(n),
            }
        }
        Op::ScaleBound | Op::FillBound => Prepared {
            kernel: if matches!(op, Op::ScaleBound) { &k.scale_bound } else { &k.fill_bound },
            args: vec![],
            access: vec![],
            bindings: vec![bind_rw(t, matches!(op, Op::FillBound)), Binding::uniform(u)],
            workgroups: wg(len),
        },
    }
}

pub(super) struct QueueWorker<'a> {
    pub(super) id: usize,
    pub(super) svm: &'a Svm,
    pub(super) k: &'a Kernels,
    pub(super) queues: &'a [LaunchQueue],
    pub(super) shared: &'a Shared,
    pub(super) rng: Rng,
    pub(super) bufs: Vec<Buf>,
    pub(super) max_words: usize,
    pub(super) local: Report,
    pub(super) recent: Vec<String>,
}

impl QueueWorker<'_> {
    pub(super) fn note(&mut self, what: String) {
        *self.shared.current[self.id].lock().expect("current") = what.clone();
        if self.recent.len() == 24 {
            self.recent.remove(0);
        }
        self.recent.push(what);
    }

    fn error(&mut self, what: String) {
        eprintln!("stress queue worker {}: ERROR {what}", self.id);
        self.local.errors.push(what);
    }

    pub(super) fn new_buf(&mut self) -> Option<Buf> {
        let words = if self.rng.below(12) == 0 {
            (2 << 20) / 4 + self.rng.below(4096)
        } else {
            1 + self.rng.below(self.max_words)
        };
        let seed = self.rng.u32();
        let model: Vec<u32> = (0..words as u32).map(|i| i.wrapping_mul(0x9e37_79b1) ^ seed).collect();
        match self.svm.alloc_from_slice(&model) {
            Ok(v) => {
                self.local.allocs += 1;
                Some(Buf { v, model })
            }
            Err(e) => {
                self.error(format!("alloc of {words} words: {e}"));
                None
            }
        }
    }

    /// Compare `[lo, hi)` of `buf` with its model; the indices that differ.
    fn compare(&mut self, buf: &Buf, lo: usize, hi: usize, what: &str) -> Vec<usize> {
        self.local.checked_bytes += ((hi - lo) * 4) as u64;
        if buf.v[lo..hi] == buf.model[lo..hi] {
            return Vec::new();
        }
        let bad: Vec<usize> = (lo..hi).filter(|&i| buf.v[i] != buf.model[i]).collect();
        let first = bad[0];
        eprintln!(
            "MISMATCH queue worker {} ({what}) buf {:#x} ({} words): {} words differ in [{lo}, {hi}); first [{first}] = {:#x}, model {:#x}; recent ops: {:#?}",
            self.id,
            buf.v.as_ptr() as usize,
            buf.v.len(),
            bad.len(),
            buf.v[first],
            buf.model[first],
            self.recent
        );
        self.local.mismatches += bad.len() as u64;
        bad
    }

    /// Check and resynchronise (one corruption is reported once).
    fn check(&mut self, buf: &mut Buf, lo: usize, hi: usize, what: &str) {
        for i in self.compare(buf, lo, hi, what) {
            buf.model[i] = buf.v[i];
        }
    }

    fn range(&mut self, len: usize) -> (usize, usize) {
        let a = self.rng.below(len);
        let n = 1 + self.rng.below(4096.min(len - a));
        (a, a + n)
    }

    fn random_op(&mut self) -> Op {
        match self.rng.below(4) {
            0 => Op::Affine,
            1 => Op::Fill,
            2 => Op::ScaleBound,
            _ => Op::FillBound,
        }
    }

    pub(super) fn step(&mut self) {
        while self.bufs.len() < 4 {
            match self.new_buf() {
                Some(b) => self.bufs.push(b),
                None => return,
            }
        }
        if self.rng.below(10) < 8 {
            self.batch();
        } else {
            // Between batches: the same CPU work, nothing held.
            let mut bufs = std::mem::take(&mut self.bufs);
            self.hold_op(&mut bufs, &[], &[]);
            self.bufs = bufs;
        }
    }

    /// One batch: submit, work while holding, wait in random order, check.
    fn batch(&mut self) {
        let mut bufs = std::mem::take(&mut self.bufs);
        // Targets, sources and the rest: a random partition.
        for i in (1..bufs.len()).rev() {
            let j = self.rng.below(i + 1);
            bufs.swap(i, j);
        }
        let n = bufs.len();
        let nw = 1 + self.rng.below(3.min(n - 2));
        let nr = self.rng.below(3.min(n - nw - 1) + 1).min(n - nw - 1);
        let mut others: Vec<Buf> = bufs.split_off(nw + nr);
        // The launches: one safe launch a target, or a raw chain.
        let mut specs = Vec::new();
        for t in 0..nw {
            let q = self.queues.len();
            if self.rng.below(4) == 0 {
                let links = 2 + self.rng.below(3);
                for _ in 0..links {
                    let op = self.random_op();
                    let (mul, add) = (self.rng.u32() | 1, self.rng.u32());
                    specs.push(Spec { target: t, op, mul, add, queue: self.rng.below(q), raw: true });
                }
                self.local.queue_chains += 1;
            } else {
                let op = if nr > 0 && self.rng.below(4) == 0 {
                    Op::AddSrc { src: self.rng.below(nr) }
                } else {
                    self.random_op()
                };
                let (mul, add) = (self.rng.u32() | 1, self.rng.u32());
                specs.push(Spec { target: t, op, mul, add, queue: self.rng.below(q), raw: false });
            }
        }
        // Submission order is not by target: shuffle, keeping each chain's order.
        let mut order: Vec<usize> = (0..specs.len()).collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i + 1);
            order.swap(i, j);
        }
        let mut by_target: Vec<Vec<Spec>> = vec![Vec::new(); nw];
        for s in &specs {
            by_target[s.target].push(*s);
        }
        let mut next = vec![0usize; nw];
        let specs: Vec<Spec> = order
            .iter()
            .map(|&i| {
                let t = specs[i].target;
                next[t] += 1;
                by_target[t][next[t] - 1]
            })
            .collect();
        let summary: Vec<String> = specs
            .iter()
            .map(|s| format!("{:?} t{} q{}{}", s.op, s.target, s.queue, if s.raw { " raw" } else { "" }))
            .collect();
        self.note(format!(
            "batch: {nw} targets, {nr} sources, {} others; launches {summary:?}; sizes {:?}",
            others.len(),
            bufs.iter().map(|b| b.v.len()).collect::<Vec<_>>()
        ));
        let mut fate = vec![Fate::Failed; specs.len()];
        let mut leaked_target = vec![false; nw];
        {
            let (w, r) = bufs.split_at_mut(nw);
            let r: &[Buf] = r;
            let raw_targets: Vec<(*const u32, usize)> = w.iter().map(|b| (b.v.as_ptr(), b.v.len())).collect();
            let uniforms: Vec<[u32; 4]> = specs.iter().map(|s| [s.mul, s.add, 0, 0]).collect();
            let kernels = self.k;
            let mut slots: Vec<Option<&mut Buf>> = w.iter_mut().map(Some).collect();
            let prepared: Vec<Prepared<'_>> = specs
                .iter()
                .zip(&uniforms)
                .map(|(s, u)| {
                    let t = if s.raw {
                        let (p, n) = raw_targets[s.target];
                        Target::Raw(p, n)
                    } else {
                        Target::Owned(slots[s.target].take().expect("one safe launch a target"))
                    };
                    let src = match s.op {
                        Op::AddSrc { src } => Some(&r[src]),
                        _ => None,
                    };
                    prepare(kernels, s.op, s.mul, s.add, t, src, u)
                })
                .collect();
            // (What is left are the raw chains' targets, never used.)
            drop(slots);
            let mut pend: Vec<Option<Pending<'_>>> = Vec::new();
            for (i, p) in prepared.iter().enumerate() {
                match self.queues[specs[i].queue].launch(p.kernel, &p.desc()) {
                    Ok(h) => {
                        fate[i] = Fate::Submitted;
                        pend.push(Some(h));
                    }
                    Err(e) => {
                        self.error(format!("queue launch {:?}: {e}", specs[i]));
                        pend.push(None);
                    }
                }
                self.local.queue_launches += 1;
                if self.rng.below(4) == 0 {
                    self.hold_op(&mut others, r, &pend);
                }
            }
            // Held: CPU work on other data while the kernels run.
            let ops = 1 + self.rng.below(6);
            for _ in 0..ops {
                self.hold_op(&mut others, r, &pend);
            }
            self.local.held_launches += pend.iter().flatten().count() as u64;
            // Wait in a random order.
            let mut order: Vec<usize> = (0..pend.len()).collect();
            for i in (1..order.len()).rev() {
                let j = self.rng.below(i + 1);
                order.swap(i, j);
            }
            if order.windows(2).any(|w| w[0] > w[1]) {
                self.local.out_of_order_waits += 1;
            }
            for &i in &order {
                let Some(h) = pend[i].take() else { continue };
                let s = specs[i];
                let how = self.rng.below(100);
                if how < 75 {
                    self.note(format!("wait {s:?}"));
                    match h.wait() {
                        Ok(_) => fate[i] = Fate::Waited,
                        Err(e) => {
                            fate[i] = Fate::Failed;
                            self.error(format!("queued launch {s:?}: {e}"));
                        }
                    }
                } else if how < 85 {
                    self.note(format!("await {s:?}"));
                    match pollster::block_on(h) {
                        Ok(_) => fate[i] = Fate::Waited,
                        Err(e) => {
                            fate[i] = Fate::Failed;
                            self.error(format!("queued launch {s:?} (awaited): {e}"));
                        }
                    }
                } else if how < 92 || s.raw {
                    // A drop waits (an error is only logged: the model
                    // would show it).
                    self.note(format!("drop {s:?}"));
                    drop(h);
                    fate[i] = Fate::Dropped;
                } else {
                    self.note(format!("forget {s:?}"));
                    self.local.leaked_running += u64::from(!h.is_complete());
                    std::mem::forget(h);
                    fate[i] = Fate::Leaked;
                    leaked_target[s.target] = true;
                    self.local.leaked += 1;
                }
                if self.rng.below(3) == 0 {
                    self.hold_op(&mut others, r, &pend);
                }
            }
            drop(pend);
            drop(prepared);
        }
        // The model, in submission order (a chain's links in order).
        let mut resync = vec![false; nw];
        let (w, r) = bufs.split_at_mut(nw);
        for (s, f) in specs.iter().zip(&fate) {
            if *f == Fate::Failed {
                resync[s.target] = true;
                continue;
            }
            let src = match s.op {
                Op::AddSrc { src } => Some(&r[src].model[..]),
                _ => None,
            };
            apply(&mut w[s.target].model, s.op, s.mul, s.add, src);
        }
        // Check the targets (a leaked launch's in full: reading it must
        // wait for its kernel), then some sources.
        for t in 0..nw {
            let len = bufs[t].v.len();
            if resync[t] {
                let b = &mut bufs[t];
                b.model.copy_from_slice(&b.v);
            } else if leaked_target[t] || self.rng.below(2) == 0 {
                self.note(format!("check target {t} in full{}", if leaked_target[t] { " (leaked)" } else { "" }));
                self.check(&mut bufs[t], 0, len, "batch target");
            } else {
                let (lo, hi) = self.range(len);
                self.note(format!("check target {t} [{lo}, {hi})"));
                self.check(&mut bufs[t], lo, hi, "batch target");
            }
        }
        for b in &mut bufs[nw..nw + nr] {
            if self.rng.below(2) == 0 {
                let (lo, hi) = self.range(b.v.len());
                self.check(b, lo, hi, "batch source");
            }
        }
        self.local.cpu_reads += 1;
        bufs.append(&mut others);
        self.bufs = bufs;
        self.local.batches += 1;
    }

    /// One CPU-side operation while `pend` may be running: on `others`
    /// (this thread's arrays no launch of the batch uses), or a read of the
    /// sources `r` (which the batch's kernels only read).
    fn hold_op(&mut self, others: &mut Vec<Buf>, r: &[Buf], pend: &[Option<Pending<'_>>]) {
        if others.is_empty() {
            match self.new_buf() {
                Some(b) => others.push(b),
                None => return,
            }
        }
        let k = self.rng.below(others.len());
        let len = others[k].v.len();
        let dice = self.rng.below(100);
        if dice < 18 {
            let (lo, hi) = self.range(len);
            let x = self.rng.u32();
            self.note(format!("held: cpu write other {k} [{lo}, {hi})"));
            let b = &mut others[k];
            for i in lo..hi {
                let val = x.wrapping_add(i as u32);
                b.v[i] = val;
                b.model[i] = val;
            }
            self.local.cpu_writes += 1;
        } else if dice < 36 {
            let (lo, hi) = if self.rng.below(6) == 0 { (0, len) } else { self.range(len) };
            self.note(format!("held: cpu read other {k} [{lo}, {hi})"));
            self.check(&mut others[k], lo, hi, "other data");
            self.local.cpu_reads += 1;
        } else if dice < 44 {
            self.note(format!("held: cpu rmw other {k}"));
            for _ in 0..1 + self.rng.below(64) {
                let i = self.rng.below(len);
                let b = &mut others[k];
                let got = b.v[i];
                if got != b.model[i] {
                    self.local.mismatches += 1;
                    let (p, m) = (b.v.as_ptr() as usize, b.model[i]);
                    eprintln!(
                        "MISMATCH queue worker {} rmw buf {p:#x}[{i}] = {got:#x}, model {m:#x}; recent {:#?}",
                        self.id, self.recent
                    );
                }
                let b = &mut others[k];
                b.v[i] = got.wrapping_add(1);
                b.model[i] = got.wrapping_add(1);
            }
            self.local.cpu_writes += 1;
            self.local.cpu_reads += 1;
        } else if dice < 52 && !r.is_empty() {
            // A source the batch's kernels read: the CPU reads it too.
            let s = self.rng.below(r.len());
            let (lo, hi) = self.range(r[s].v.len());
            self.note(format!("held: cpu read source {s} [{lo}, {hi})"));
            // No resync: a source is shared-borrowed.
            self.compare(&r[s], lo, hi, "source read while kernels read it");
            self.local.cpu_reads += 1;
        } else if dice < 68 {
            if others.len() >= 2 && self.rng.below(3) == 0 {
                self.leak_add_src(others, k);
            } else {
                self.leak_launch(&mut others[k], k);
            }
        } else if dice < 75 {
            let (mul, add) = (self.rng.u32() | 1, self.rng.u32());
            self.note(format!("held: sync launch affine other {k} ({len} words)"));
            let b = &mut others[k];
            let args = [Arg::ptr(b.v.as_ptr()), Arg::U32(len as u32), Arg::U32(mul), Arg::U32(add)];
            let res = self.svm.launch(
                &self.k.affine,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read_write(&mut b.v)],
                    bindings: &[],
                    workgroups: wg(len),
                },
            );
            match res {
                Ok(()) => apply(&mut b.model, Op::Affine, mul, add, None),
                Err(e) => {
                    b.model.copy_from_slice(&b.v);
                    self.error(format!("sync launch while queued ones run: {e}"));
                }
            }
            self.local.launches += 1;
        } else if dice < 82 {
            // Free one (checked first), allocate another.
            self.note(format!("held: free other {k}, alloc"));
            let mut b = others.swap_remove(k);
            self.check(&mut b, 0, len, "other data before free");
            drop(b);
            self.local.frees += 1;
            if let Some(nb) = self.new_buf() {
                others.push(nb);
            }
        } else if dice < 89 {
            let to = if self.rng.below(2) == 0 { Location::Device } else { Location::Host };
            let q = self.rng.below(self.queues.len());
            self.note(format!("held: queue {q} prefetch other {k} to {to:?}"));
            match self.queues[q].prefetch(others[k].v.as_ptr().cast(), len * 4, to) {
                Ok(_) => {}
                Err(svm::LaunchError::PoolExhausted { .. }) => self.local.known_prefetch_pool_exhausted += 1,
                Err(e) => self.error(format!("queue prefetch: {e}")),
            }
            self.local.prefetches += 1;
        } else if dice < 93 {
            let q = self.rng.below(self.queues.len());
            self.note(format!("held: finish queue {q}"));
            self.queues[q].finish();
            self.local.finishes += 1;
        } else {
            self.note("held: poll".into());
            let done = pend.iter().flatten().filter(|h| h.is_complete()).count();
            let _ = done;
            std::thread::yield_now();
        }
        if pend.iter().flatten().any(|h| !h.is_complete()) {
            self.local.overlapped_cpu_ops += 1;
        }
    }

    /// Launch on `b` with a handle that is leaked at once, then (often)
    /// touch `b` straight away: the access waits for the kernel.
    fn leak_launch(&mut self, b: &mut Buf, k: usize) {
        let op = self.random_op();
        let (mul, add) = (self.rng.u32() | 1, self.rng.u32());
        let q = self.rng.below(self.queues.len());
        self.note(format!("held: leaked {op:?} on other {k} ({} words), queue {q}", b.v.len()));
        let u = [mul, add, 0, 0];
        let res = {
            let p = prepare(self.k, op, mul, add, Target::Owned(b), None, &u);
            let res = self.queues[q].launch(p.kernel, &p.desc());
            res.map(|h| {
                let running = !h.is_complete();
                std::mem::forget(h);
                running
            })
        };
        self.local.queue_launches += 1;
        match res {
            Ok(running) => self.local.leaked_running += u64::from(running),
            Err(e) => {
                self.error(format!("leaked launch {op:?}: {e}"));
                b.model.copy_from_slice(&b.v);
                return;
            }
        }
        self.local.leaked += 1;
        apply(&mut b.model, op, mul, add, None);
        let len = b.v.len();
        match self.rng.below(4) {
            0 | 1 => {
                self.note(format!("held: read other {k} in full after its leaked launch"));
                self.check(b, 0, len, "leaked launch's data");
                self.local.cpu_reads += 1;
            }
            2 => {
                // A write that must land after the kernel's.
                let (lo, hi) = self.range(len);
                self.note(format!("held: write other {k} [{lo}, {hi}) after its leaked launch"));
                let x = self.rng.u32();
                for i in lo..hi {
                    b.v[i] = x ^ i as u32;
                    b.model[i] = x ^ i as u32;
                }
                self.local.cpu_writes += 1;
            }
            _ => {}
        }
    }
}

impl QueueWorker<'_> {
    /// Launch ADD_SRC from `others[j]` into `others[k]` with a handle that is
    /// leaked at once; then (often) write the *input* straight away — the
    /// kernel must still compute from the input as it was at the launch —
    /// and read the output.
    ///
    /// Known runtime bug (`gpu::queue::leaked_handle_inputs_written_after_the_forget`,
    /// ignored): where the kernel reads its input in place (the coherent
    /// mode; `AccessedBy` ranges, which the stress does not advise), it sees
    /// the CPU's write. In that mode the input is not written, and the
    /// output is read at once (which waits for the kernel), before any
    /// later operation may write the input.
    fn leak_add_src(&mut self, others: &mut [Buf], k: usize) {
        let n = others.len();
        let j = (k + 1 + self.rng.below(n - 1)) % n;
        let mul = self.rng.u32();
        let q = self.rng.below(self.queues.len());
        let (dst, src) = if j < k {
            let (x, y) = others.split_at_mut(k);
            (&mut y[0], &mut x[j])
        } else {
            let (x, y) = others.split_at_mut(j);
            (&mut x[k], &mut y[0])
        };
        self.note(format!(
            "held: leaked add_src other {j} ({} words) -> other {k} ({} words), queue {q}",
            src.v.len(),
            dst.v.len()
        ));
        let u = [mul, 0, 0, 0];
        let res = {
            let p = prepare(self.k, Op::AddSrc { src: 0 }, mul, 0, Target::Owned(dst), Some(src), &u);
            let res = self.queues[q].launch(p.kernel, &p.desc());
            res.map(|h| {
                let running = !h.is_complete();
                std::mem::forget(h);
                running
            })
        };
        self.local.queue_launches += 1;
        match res {
            Ok(running) => self.local.leaked_running += u64::from(running),
            Err(e) => {
                self.error(format!("leaked add_src: {e}"));
                dst.model.copy_from_slice(&dst.v);
                return;
            }
        }
        self.local.leaked += 1;
        apply(&mut dst.model, Op::AddSrc { src: 0 }, mul, 0, Some(&src.model));
        // Fixed (a queued launch write-protects the inputs it reads in
        // place until it retires): the input is written in every mode.
        let in_place = false;
        if self.rng.below(2) == 0 && !in_place {
            let (lo, hi) = if self.rng.below(2) == 0 { (0, src.v.len()) } else { self.range(src.v.len()) };
            self.note(format!("held: write the input other {j} [{lo}, {hi}) of a leaked launch"));
            let x = self.rng.u32();
            for i in lo..hi {
                src.v[i] = x ^ (i as u32);
                src.model[i] = x ^ (i as u32);
            }
            self.local.cpu_writes += 1;
            self.local.leaked_input_writes += 1;
        }
        if self.rng.below(2) == 0 || in_place {
            let len = dst.v.len();
            self.note(format!("held: read other {k} in full after its leaked add_src"));
            self.check(dst, 0, len, "leaked add_src's output");
            self.local.cpu_reads += 1;
        }
    }
}

/// The queue workers' part of `stress_core::run`.
pub(super) fn run_queue_worker(w: &mut QueueWorker<'_>) {
    for _ in 0..5 {
        if let Some(b) = w.new_buf() {
            w.bufs.push(b);
        }
    }
    while !w.shared.stop.load(Relaxed) {
        w.step();
        w.local.ops += 1;
        w.shared.ops.fetch_add(1, Relaxed);
    }
    w.note("final check".into());
    let mut bufs = std::mem::take(&mut w.bufs);
    for b in &mut bufs {
        let len = b.v.len();
        w.check(b, 0, len, "final");
    }
    w.local.frees += bufs.len() as u64;
    drop(bufs);
}
