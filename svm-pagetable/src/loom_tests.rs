//! Loom models of item 3: the seed's `range->valid` flag admits a stale
//! commit, sequence counts checked under the update lock do not. And of the
//! [`crate::outbox`] the runtime sends its sparse binds through: batches
//! reach the device in sealing order whoever sends, a returned send has its
//! batch on the device, nothing is sent after `close`.
//!
//! And of the runtime's own protocols: page leases between several devices
//! mirroring one arena (the real [`crate::Leases`], a model of the members),
//! and the runtime's flights — a launch claiming its page while a CPU
//! fault, eviction and free wait for it (a model of `runtime/flight.rs`).
//! Each has a twin that makes the natural mistake (acting after a wait
//! without looking again) and is caught.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p svm-pagetable --release --lib loom`.
//!
//! A *stale commit* is the device ending up mapping the old page after the
//! CPU side changed it, with no invalidation left to come that would zap it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as StdOrdering};
use std::sync::Arc;

use ::loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use ::loom::sync::Mutex;
use ::loom::thread;

use crate::*;

const OLD: u32 = 1;
const NEW: u32 = 2;

/// The seed's protocol (mm/hmm.c v4.20) for one page, reduced to its
/// synchronisation: `hmm->lock` guards the range list and `range->valid`;
/// `invalidate_range_start` clears `valid` of listed ranges and calls the
/// mirror (which zaps under the device lock); the CPU PTE changes;
/// `invalidate_range_end` clears `valid` again. The driver lists its range
/// with `valid = true` (`hmm_vma_get_pfns`), reads the PTE, takes its device
/// lock, unlists the range and reads `valid` (`hmm_vma_range_done`), and
/// commits if it was still true.
///
/// Returns whether this execution ended with a stale commit.
fn seed_valid_flag_protocol() -> bool {
    struct Range {
        listed: bool,
        valid: bool,
    }
    let hmm_lock = Arc::new(Mutex::new(Range { listed: false, valid: false }));
    let cpu_pte = Arc::new(AtomicU32::new(OLD));
    let device = Arc::new(Mutex::new(0u32));

    let invalidator = {
        let (hmm_lock, cpu_pte, device) = (hmm_lock.clone(), cpu_pte.clone(), device.clone());
        thread::spawn(move || {
            // hmm_invalidate_range_start -> hmm_invalidate_range(device = true)
            {
                let mut r = hmm_lock.lock().expect("lock");
                if r.listed {
                    r.valid = false;
                }
            }
            *device.lock().expect("lock") = 0; // sync_cpu_device_pagetables
            cpu_pte.store(NEW, Ordering::SeqCst); // the CPU page table changes
                                                  // hmm_invalidate_range_end -> hmm_invalidate_range(device = false)
            let mut r = hmm_lock.lock().expect("lock");
            if r.listed {
                r.valid = false;
            }
        })
    };

    // hmm_vma_get_pfns: list the range, valid = true, walk.
    {
        let mut r = hmm_lock.lock().expect("lock");
        r.listed = true;
        r.valid = true;
    }
    let snap = cpu_pte.load(Ordering::SeqCst);
    // device_page_table_lock(); if (hmm_vma_range_done(range)) commit;
    {
        let mut d = device.lock().expect("lock");
        let valid = {
            let mut r = hmm_lock.lock().expect("lock");
            r.listed = false;
            r.valid
        };
        if valid {
            *d = snap;
        }
    }
    invalidator.join().expect("join");
    let committed = *device.lock().expect("lock");
    committed == OLD && cpu_pte.load(Ordering::SeqCst) == NEW
}

/// The same page and threads with our protocol, reduced the same way: the
/// invalidation holds the state lock throughout, bumps the notifier's count
/// to odd under the update lock (where it zaps), changes the PTE, bumps it
/// back to even; the driver reads the count (waiting out odd ones), reads
/// the PTE under the state lock, and commits under the update lock only if
/// the count did not move.
fn seq_protocol() -> bool {
    let state = Arc::new(Mutex::new(OLD)); // the CPU PTE, behind the state lock
    let seq = Arc::new(AtomicU64::new(0));
    let update = Arc::new(Mutex::new(0u32)); // the device PTE, behind the update lock

    let invalidator = {
        let (state, seq, update) = (state.clone(), seq.clone(), update.clone());
        thread::spawn(move || {
            let mut pte = state.lock().expect("lock");
            {
                let mut d = update.lock().expect("lock");
                seq.fetch_add(1, Ordering::AcqRel); // odd: in progress
                *d = 0; // zap
            }
            *pte = NEW;
            seq.fetch_add(1, Ordering::AcqRel); // even: done
        })
    };

    let s = loop {
        let s = seq.load(Ordering::Acquire);
        if s & 1 == 0 {
            break s;
        }
        drop(state.lock().expect("lock")); // wait for the invalidation to end
    };
    let snap = *state.lock().expect("lock");
    {
        let mut d = update.lock().expect("lock");
        if seq.load(Ordering::Acquire) == s {
            *d = snap;
        }
    }
    invalidator.join().expect("join");
    let committed = *update.lock().expect("lock");
    let cpu = *state.lock().expect("lock");
    committed == OLD && cpu == NEW
}

#[test]
fn loom_seed_valid_flag_admits_stale_commit() {
    static STALE: AtomicBool = AtomicBool::new(false);
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    ::loom::model(|| {
        RUNS.fetch_add(1, StdOrdering::Relaxed);
        if seed_valid_flag_protocol() {
            STALE.store(true, StdOrdering::Relaxed);
        }
    });
    eprintln!("seed model: {} executions explored", RUNS.load(StdOrdering::Relaxed));
    assert!(
        STALE.load(StdOrdering::Relaxed),
        "loom should find the interleaving where the seed commits a stale snapshot"
    );
}

#[test]
fn loom_seq_protocol_never_commits_stale() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    ::loom::model(|| {
        RUNS.fetch_add(1, StdOrdering::Relaxed);
        assert!(!seq_protocol(), "stale commit");
    });
    eprintln!("seq model: {} executions explored", RUNS.load(StdOrdering::Relaxed));
}

/// A one-page device table.
struct LoomOps;

impl MirrorOps for LoomOps {
    type Table = PageTable;
    fn invalidate(&self, table: &mut PageTable, update: &Update) -> Result<(), Again> {
        table.fill(update.range, Pte::EMPTY);
        Ok(())
    }
}

/// The real [`AddressSpace`] / [`Mirror`] / [`IntervalNotifier`] code under
/// loom: the device maps its own page with the driver loop while the CPU
/// changes it (`cpu` is the CPU-side action). In no execution may the device
/// keep a valid entry for a page the host no longer gives it.
fn real_protocol(cpu: fn(&Arc<AddressSpace>, PageRange)) -> usize {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    RUNS.store(0, StdOrdering::Relaxed);
    // No preemption bound: the exploration is exhaustive.
    let builder = ::loom::model::Builder::new();
    builder.check(move || {
        RUNS.fetch_add(1, StdOrdering::Relaxed);
        let space = AddressSpace::new(1);
        let page = PageRange::from_range(0..1).expect("ordered");
        let mirror = space.mirror_register(page, LoomOps, PageTable::new(1)).expect("register");
        space.alloc(page, AllocDescriptor { prot: Prot::ReadWrite, max_order: ChunkOrder::Page }).expect("alloc");
        space
            .migrate_begin(page, MigrateTarget::Device(mirror.id()), true)
            .expect("begin")
            .finalize(|_, _| MigrateOutcome::Device(FrameIndex::new(5).expect("fits")))
            .expect("finalize");
        let notifier = mirror.notifier_insert(page);

        let cpu = {
            let space = space.clone();
            thread::spawn(move || cpu(&space, page))
        };

        // The driver loop, bounded: a retry is a correct outcome too.
        let enc = Encoding::DEFAULT;
        for _ in 0..2 {
            let seq = notifier.read_begin();
            let mut pfns = [0u64; 1];
            let mut req = RangeRequest::new(mirror.id(), page, &mut pfns);
            space.range_snapshot(&mut req, true).expect("snapshot");
            let mut table = mirror.update_lock();
            if table.read_retry(&notifier, seq) {
                continue;
            }
            table.commit_snapshot(page, &pfns, &enc);
            break;
        }
        cpu.join().expect("join");
        let pte = mirror.update_lock().get(PageIndex(0));
        let (state, _) = space.page(PageIndex(0)).expect("page");
        assert!(
            !pte.is_valid() || matches!(state, PageState::Device { .. }),
            "stale commit: device maps {pte:?}, host has {state:?}"
        );
    });
    RUNS.load(StdOrdering::Relaxed)
}

#[test]
fn loom_real_protocol_free_never_commits_stale() {
    let runs = real_protocol(|space, page| space.free(page, true).expect("free"));
    eprintln!("real code, CPU frees: {runs} executions explored");
}

#[test]
fn loom_real_protocol_cpu_take_back_never_commits_stale() {
    let runs = real_protocol(|space, page| space.cpu_fault(page, true, true).expect("cpu fault"));
    eprintln!("real code, CPU takes the page back: {runs} executions explored");
}

/// One release racing with callers deciding whether to park: `gate` is the
/// [`AgainGate`] (check and register in one critical section) or, with
/// `split`, the same flag set in a second critical section after the check
/// (the natural mistake). Returns whether a caller parked and no wake-up
/// came after it.
fn again_handshake(split: bool, callers: usize) -> bool {
    let gate = Arc::new(AgainGate::new());
    let flag = Arc::new(Mutex::new(false));
    let done = Arc::new(AtomicU32::new(0));
    let woken = Arc::new(AtomicU32::new(0));
    let releaser = {
        let (gate, flag, done, woken) = (gate.clone(), flag.clone(), done.clone(), woken.clone());
        thread::spawn(move || {
            done.store(1, Ordering::Release); // the launch settles
            let wake = if split { std::mem::take(&mut *flag.lock().expect("lock")) } else { gate.released() };
            if wake {
                woken.store(1, Ordering::Release);
            }
        })
    };
    let parked: Vec<_> = (0..callers)
        .map(|_| {
            let (gate, flag, done) = (gate.clone(), flag.clone(), done.clone());
            thread::spawn(move || {
                let ready = || done.load(Ordering::Acquire) == 1;
                if split {
                    let r = {
                        let _g = flag.lock().expect("lock");
                        ready()
                    };
                    if !r {
                        *flag.lock().expect("lock") = true;
                    }
                    !r
                } else {
                    !gate.ready_or_register(ready)
                }
            })
        })
        .collect();
    // (Every caller joined before the check: no short-circuit.)
    let parked = parked.into_iter().map(|t| t.join().expect("caller")).collect::<Vec<bool>>().contains(&true);
    releaser.join().expect("releaser");
    parked && woken.load(Ordering::Acquire) == 0
}

#[test]
fn loom_again_gate_never_loses_a_wakeup() {
    for callers in [1, 2] {
        ::loom::model(move || assert!(!again_handshake(false, callers), "a parked caller was never woken"));
    }
}

#[test]
fn loom_split_check_and_register_loses_a_wakeup() {
    static LOST: AtomicBool = AtomicBool::new(false);
    ::loom::model(|| {
        if again_handshake(true, 1) {
            LOST.store(true, StdOrdering::Relaxed);
        }
    });
    assert!(LOST.load(StdOrdering::Relaxed), "loom should find the release between the check and the register");
}

// ---------------------------------------------------------------------------
// The outbox: device updates sealed under the update lock, sent outside it
// (`crate::outbox`; the runtime's sparse binds go through it).

/// What one sender of [`two_sealing_senders`] saw: its batch, its send's
/// result, and whether its batch was on the device when the send returned.
type Sent = (u32, Result<Option<u32>, SendError<&'static str>>, bool);

/// Two threads each seal a batch under the update lock (numbered in sealing
/// order) and send with the lock released; the device is a log, and batch
/// `refused` is refused. Returns what each sender saw, the log, the outbox.
fn two_sealing_senders(refused: Option<u32>) -> (Vec<Sent>, Vec<u32>, Arc<Outbox<u32, u32>>) {
    let update = Arc::new(Mutex::new(0u32));
    let outbox = Arc::new(Outbox::<u32, u32>::new());
    let device = Arc::new(Mutex::new(Vec::<u32>::new()));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (update, outbox, device) = (update.clone(), outbox.clone(), device.clone());
            thread::spawn(move || {
                let mine = {
                    let mut n = update.lock().expect("lock");
                    let mine = *n;
                    *n += 1;
                    outbox.push(mine);
                    mine
                };
                let sent = outbox.send(|b| {
                    if Some(b) == refused {
                        return Err("refused");
                    }
                    device.lock().expect("lock").push(b);
                    Ok(b)
                });
                let on_device = device.lock().expect("lock").contains(&mine);
                (mine, sent, on_device)
            })
        })
        .collect();
    let seen = threads.into_iter().map(|t| t.join().expect("sender")).collect();
    let log = device.lock().expect("lock").clone();
    (seen, log, outbox)
}

/// Checks: the log is in sealing order, every batch is sent once, and a
/// send that returns has its own batch on the device already.
#[test]
fn loom_outbox_sends_in_sealing_order_whoever_sends() {
    ::loom::model(|| {
        let (seen, log, outbox) = two_sealing_senders(None);
        for (mine, sent, on_device) in seen {
            assert!(sent.expect("nothing refuses").is_some());
            assert!(on_device, "send returned before batch {mine} was sent");
        }
        assert_eq!(log, [0, 1], "sent out of sealing order, or not exactly once");
        assert!(!outbox.has_batches());
    });
}

/// Negative control: senders that pop under the queue's lock but send
/// without one sender lock around pop and send — loom finds the batches
/// reaching the device out of order.
#[test]
fn loom_popping_without_the_sender_lock_reorders() {
    static REORDERED: AtomicBool = AtomicBool::new(false);
    ::loom::model(|| {
        let queue = Arc::new(Mutex::new(std::collections::VecDeque::from([0u32, 1])));
        let device = Arc::new(Mutex::new(Vec::<u32>::new()));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (queue, device) = (queue.clone(), device.clone());
                thread::spawn(move || {
                    let b = queue.lock().expect("lock").pop_front();
                    if let Some(b) = b {
                        device.lock().expect("lock").push(b);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("sender");
        }
        if *device.lock().expect("lock") != [0, 1] {
            REORDERED.store(true, StdOrdering::Relaxed);
        }
    });
    assert!(REORDERED.load(StdOrdering::Relaxed), "loom should find the second batch sent first");
}

/// Closing races a send: once `close` has returned the send function
/// never runs (the arena's buffer and memory go away then), and a batch is
/// sent at most once.
#[test]
fn loom_outbox_close_stops_every_later_send() {
    ::loom::model(|| {
        let outbox = Arc::new(Outbox::<u32, u32>::new());
        let closed = Arc::new(AtomicU32::new(0));
        let device = Arc::new(Mutex::new(Vec::<u32>::new()));
        let sender = {
            let (outbox, closed, device) = (outbox.clone(), closed.clone(), device.clone());
            thread::spawn(move || {
                outbox.push(7);
                outbox.send(|b| {
                    assert_eq!(closed.load(Ordering::SeqCst), 0, "sent after close returned");
                    device.lock().expect("lock").push(b);
                    Ok::<_, ()>(b)
                })
            })
        };
        let last = outbox.close();
        closed.store(1, Ordering::SeqCst);
        let sent = sender.join().expect("sender");
        let device = device.lock().expect("lock");
        assert!(device.len() <= 1);
        match sent {
            Ok(Some(7)) => assert_eq!(*device, [7]),
            // Closed first (the batch pushed after or dropped by close), or
            // nothing left to send once close had dropped it.
            Err(SendError::Closed) | Ok(None) => assert!(device.is_empty()),
            other => panic!("unexpected send result {other:?}"),
        }
        assert_eq!(last.is_some(), !device.is_empty(), "close returns the last point sent");
    });
}

/// A refused batch breaks the outbox: the send that met the refusal gets
/// it, the other thread's send fails too (its batch, sealed after, can never
/// reach the device in order), and nothing is sent — whichever thread
/// meets the refusal and whenever the other one sends.
#[test]
fn loom_outbox_a_refused_batch_fails_every_send_after_it() {
    ::loom::model(|| {
        let (seen, log, outbox) = two_sealing_senders(Some(0));
        let results: Vec<_> = seen.into_iter().map(|(_, r, _)| r).collect();
        assert_eq!(results.iter().filter(|r| matches!(r, Err(SendError::Refused("refused")))).count(), 1);
        assert_eq!(results.iter().filter(|r| matches!(r, Err(SendError::Broken))).count(), 1, "{results:?}");
        assert!(log.is_empty(), "a batch sent after the refused one");
        assert!(outbox.send(Ok::<_, &str>) == Err(SendError::Broken));
    });
}

// ---------------------------------------------------------------------------
// Page leases: several members (devices) mirroring one arena
// (`crate::lease`; the runtime's `mirror.rs` runs this protocol).

/// One member of the model: its update lock over "the page is off the host
/// here" (a device frame), and the same flag readable without the lock for
/// the check.
struct LeaseMember {
    lock: Mutex<bool>,
    off: AtomicU32,
}

/// Two members and one page, member 0's at first. Members 0 and 1 each
/// take the page to their device (the runtime's launch: look under its
/// lock, and if another holds the lease release the lock, ask the holder
/// to give it up, decide again — or, with `recheck` false, go ahead after
/// the ask without looking again); a CPU access goes to the holder, which
/// brings the page home. Returns whether two members ever had the page off
/// the host at once (or the holder's peer had it while the holder served
/// the access).
fn leases_model(recheck: bool) -> bool {
    let leases = Arc::new(Leases::new(1));
    let members: Arc<[LeaseMember; 2]> =
        Arc::new(std::array::from_fn(|_| LeaseMember { lock: Mutex::new(false), off: AtomicU32::new(0) }));
    let broken = Arc::new(AtomicU32::new(0));
    // Under `m`'s lock: the page leaves the host for `m`'s device.
    fn take_off(members: &[LeaseMember; 2], broken: &AtomicU32, m: usize, here: &mut bool) {
        if members[1 - m].off.load(Ordering::SeqCst) != 0 {
            broken.store(1, Ordering::SeqCst);
        }
        *here = true;
        members[m].off.store(1, Ordering::SeqCst);
    }
    // Under `m`'s lock: the page comes home from `m`'s device.
    fn bring_home(members: &[LeaseMember; 2], m: usize, here: &mut bool) {
        *here = false;
        members[m].off.store(0, Ordering::SeqCst);
    }
    fn give_up(leases: &Leases, members: &[LeaseMember; 2], h: Member, to: Member) {
        let mut here = members[h as usize].lock.lock().expect("lock");
        if leases.holds(0, h) {
            bring_home(members, h as usize, &mut here);
            leases.hand_over(0, 1, h, to, |_| false);
        }
    }
    let taker = |me: Member| {
        let (leases, members, broken) = (leases.clone(), members.clone(), broken.clone());
        thread::spawn(move || {
            for _ in 0..2 {
                let foreign = {
                    let mut here = members[me as usize].lock.lock().expect("lock");
                    let foreign = leases.foreign_runs([(0, 1)], me);
                    if foreign.is_empty() {
                        take_off(&members, &broken, me as usize, &mut here);
                        return;
                    }
                    foreign
                };
                for (_, _, h) in foreign {
                    give_up(&leases, &members, h, me);
                }
                if !recheck {
                    let mut here = members[me as usize].lock.lock().expect("lock");
                    take_off(&members, &broken, me as usize, &mut here);
                    return;
                }
            }
        })
    };
    let t1 = taker(1);
    let t0 = taker(0);
    // A CPU access: served by the holder, which brings the page home.
    for _ in 0..2 {
        let h = leases.holder(0);
        let mut here = members[h as usize].lock.lock().expect("lock");
        if leases.holds(0, h) {
            if members[1 - h as usize].off.load(Ordering::SeqCst) != 0 {
                broken.store(1, Ordering::SeqCst);
            }
            bring_home(&members, h as usize, &mut here);
            break;
        }
    }
    t1.join().expect("member 1");
    t0.join().expect("member 0");
    broken.load(Ordering::SeqCst) != 0
}

#[test]
fn loom_leases_never_put_a_page_on_two_devices() {
    ::loom::model(|| assert!(!leases_model(true), "a page on two devices"));
}

#[test]
fn loom_deciding_without_looking_again_puts_a_page_on_two_devices() {
    static BROKE: AtomicBool = AtomicBool::new(false);
    ::loom::model(|| {
        if leases_model(false) {
            BROKE.store(true, StdOrdering::Relaxed);
        }
    });
    assert!(BROKE.load(StdOrdering::Relaxed), "loom should find a page taken by both members");
}

// ---------------------------------------------------------------------------
// The runtime's flights (runtime/src/runtime/flight.rs): a launch claims its
// page under the update lock and copies it in and runs its kernel with the
// lock released; a CPU fault, eviction and free on the page wait for the
// flight (the lock released: a condition variable) and decide again after.
// A model of that protocol for one page, not the runtime's code (its state
// is not on loom types): the launch marks its unlocked copy and kernel
// (`copying`), and every other access to the page's copies asserts it is
// not inside one.

struct FlightModel {
    st: Mutex<PageModel>,
    settled: ::loom::sync::Condvar,
    host: AtomicU32,
    device: AtomicU32,
    /// A launch has claimed the page (copying it in, running its kernel:
    /// unlocked), until its retire.
    copying: AtomicU32,
}

#[derive(Default)]
struct PageModel {
    allocated: bool,
    on_device: bool,
    /// A launch's flight uses the page (its copy and kernel run unlocked).
    busy: bool,
}

impl FlightModel {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            st: Mutex::new(PageModel { allocated: true, ..PageModel::default() }),
            settled: ::loom::sync::Condvar::new(),
            host: AtomicU32::new(0),
            device: AtomicU32::new(0),
            copying: AtomicU32::new(0),
        })
    }

    /// Wait until no flight uses the page (the lock released meanwhile).
    fn settled<'a>(&self, mut g: ::loom::sync::MutexGuard<'a, PageModel>) -> ::loom::sync::MutexGuard<'a, PageModel> {
        while g.busy {
            g = self.settled.wait(g).expect("wait");
        }
        g
    }

    /// A launch whose kernel adds one to the page.
    fn launch(&self) {
        let mut g = self.settled(self.st.lock().expect("lock"));
        if !g.allocated {
            return;
        }
        g.busy = true;
        let from_host = !g.on_device;
        g.on_device = true;
        // Claimed (from here to the retire): copy in and run with the lock
        // released.
        self.copying.store(1, Ordering::SeqCst);
        drop(g);
        if from_host {
            self.device.store(self.host.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        let v = self.device.load(Ordering::SeqCst);
        self.device.store(v + 1, Ordering::SeqCst);
        self.copying.store(0, Ordering::SeqCst);
        let mut g = self.st.lock().expect("lock");
        g.busy = false;
        drop(g);
        self.settled.notify_all();
    }

    /// Every access to the page's copies but the launch's own.
    fn touch(&self) {
        assert_eq!(self.copying.load(Ordering::SeqCst), 0, "the page's copies touched inside a launch's claim");
    }

    /// Bring the page home under the lock (fault service, eviction).
    fn home(&self, g: &mut PageModel) {
        if g.on_device {
            self.touch();
            self.host.store(self.device.load(Ordering::SeqCst), Ordering::SeqCst);
            g.on_device = false;
        }
    }

    /// A CPU read: the fault brings the page home; the access happens with
    /// the page mapped (under the lock in the model: mapping changes are).
    /// `recheck` false: waits in one critical section and serves in
    /// another, without looking again (a flight may have started between).
    fn cpu_read(&self, recheck: bool) -> u32 {
        let mut g = if recheck {
            self.settled(self.st.lock().expect("lock"))
        } else {
            drop(self.settled(self.st.lock().expect("lock")));
            self.st.lock().expect("lock")
        };
        self.home(&mut g);
        self.touch();
        self.host.load(Ordering::SeqCst)
    }

    /// Eviction: never picks a busy page.
    fn evict(&self) {
        let mut g = self.st.lock().expect("lock");
        if !g.busy {
            self.home(&mut g);
        }
    }

    /// `free`: waits for the flights using the page, then drops it.
    fn free(&self) {
        let mut g = self.settled(self.st.lock().expect("lock"));
        g.allocated = false;
        g.on_device = false;
        self.touch();
        self.host.store(0, Ordering::SeqCst);
    }

    /// The page's value, everything joined.
    fn value(&self) -> u32 {
        let g = self.st.lock().expect("lock");
        if g.on_device {
            self.device.load(Ordering::SeqCst)
        } else {
            self.host.load(Ordering::SeqCst)
        }
    }
}

/// A launch and a CPU fault on one page while this thread runs `third` on
/// it: no access inside the launch's claim, no lost wake-up, the fault reads
/// the page before or after the kernel, and the page ends as `want`.
fn flight_model(recheck: bool, third: fn(&FlightModel), want: u32) {
    let m = FlightModel::new();
    let launch = {
        let m = m.clone();
        thread::spawn(move || m.launch())
    };
    let fault = {
        let m = m.clone();
        thread::spawn(move || m.cpu_read(recheck))
    };
    third(&m);
    launch.join().expect("launch");
    let read = fault.join().expect("fault");
    assert!(read <= 1, "the fault read {read}");
    assert_eq!(m.value(), want, "the page's value at the end");
}

/// Eviction beside them: the kernel's write is never lost.
#[test]
fn loom_flights_fault_and_eviction_wait_for_a_launch() {
    ::loom::model(|| flight_model(true, FlightModel::evict, 1));
}

/// `free` beside them: zero at the end, whoever came first.
#[test]
fn loom_flights_free_waits_for_a_launch() {
    ::loom::model(|| flight_model(true, FlightModel::free, 0));
}

/// The natural mistake (the review of the mirrors found it twice): wait for
/// the flight in one critical section, act in another without looking
/// again. loom finds the launch claiming the page in between: the fault's
/// copy back runs inside the launch's claim.
#[test]
#[should_panic(expected = "inside a launch's claim")]
fn loom_flights_acting_without_looking_again_races_the_kernel() {
    ::loom::model(|| flight_model(false, FlightModel::evict, 1));
}
