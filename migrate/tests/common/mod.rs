//! Shared body of the per-backend fault tests (each backend's tests are a
//! binary of their own: fault handlers are process-wide).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub mod process;
pub mod sound;
use svm_migrate::{
    Arena, CpuFault, FaultBackendKind, FaultFatal, FaultHandler, FaultService, Kick, MigrateError, Served,
};

/// A toy "device": pages it owns have their true contents here; the host
/// copy is stale until a fault brings them back.
pub struct Toy {
    pub arena: Arena,
    pub device: Mutex<std::collections::BTreeMap<usize, Vec<u8>>>,
    pub faults: AtomicUsize,
    pub chunk: usize,
    /// Pages whose faults the handler does not serve, and how it fails.
    pub fail: Mutex<BTreeMap<usize, Fail>>,
    /// Pages (offsets) held by other work: their faults are answered
    /// `Again` (parked) until released and kicked.
    pub held: Mutex<std::collections::BTreeSet<usize>>,
    /// The service's kick.
    pub kick: std::sync::OnceLock<Kick>,
}

/// How [`Toy`] fails a fault.
#[derive(Clone, Copy, Debug)]
pub enum Fail {
    /// Returns [`FaultFatal`].
    Fatal,
    /// Panics (caught by the service).
    Panic,
    /// Panics with a payload whose drop panics too: the second panic
    /// escapes the service's `catch_unwind` and ends its thread.
    PanicEscapes,
}

/// A panic payload that panics when dropped.
struct Bomb;
impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("the panic payload of the test handler panics on drop");
    }
}

impl FaultHandler for Toy {
    fn arena(&self) -> &Arena {
        &self.arena
    }
    fn handle_fault(&self, fault: CpuFault) -> Result<(), FaultFatal> {
        self.faults.fetch_add(1, Ordering::Relaxed);
        let fail = self.fail.lock().get(&fault.offset).copied();
        match fail {
            Some(Fail::Fatal) => return Err(FaultFatal("test asked this page to fail".into())),
            Some(Fail::Panic) => panic!("test handler panics on this page"),
            Some(Fail::PanicEscapes) => std::panic::panic_any(Bomb),
            None => {}
        }
        let start = fault.offset / self.chunk * self.chunk;
        let mut dev = self.device.lock();
        for off in (start..start + self.chunk).step_by(4096) {
            if let Some(bytes) = dev.remove(&off) {
                // SAFETY: the toy device owned this page, so it is zapped from
                // the user view (no program thread can touch it until the
                // restore below), nothing imports the arena, and the service
                // thread is its only writer; `bytes` is a heap buffer.
                unsafe { self.arena.write_host(off, &bytes) };
            }
        }
        self.arena.restore(start, self.chunk).map_err(|e| FaultFatal(e.to_string()))
    }
    fn try_fault(&self, fault: CpuFault) -> Result<Served, FaultFatal> {
        if self.held.lock().contains(&fault.offset) {
            return Ok(Served::Again);
        }
        self.handle_fault(fault).map(|()| Served::Done)
    }
    fn set_kick(&self, kick: Kick) {
        let _ = self.kick.set(kick);
    }
}

/// Build a toy or return `None` (printing SKIP) when the backend is not
/// permitted here; CI sets `SVM_REQUIRE_FAULTS=1` to turn that into a failure.
pub fn toy(kind: FaultBackendKind, chunk: usize) -> Option<Arc<Toy>> {
    match Arena::new(8 << 20, kind) {
        Ok(arena) => {
            arena.allocate(0, arena.len()).expect("allocate");
            Some(Toy::new(arena, chunk))
        }
        Err(e @ MigrateError::Unsupported { .. }) if std::env::var("SVM_REQUIRE_FAULTS").as_deref() != Ok("1") => {
            eprintln!("SKIP: {kind} fault backend unavailable here: {e}");
            None
        }
        Err(e) => panic!("arena with {kind}: {e}"),
    }
}

impl Toy {
    /// A toy over an allocated arena.
    pub fn new(arena: Arena, chunk: usize) -> Arc<Self> {
        Arc::new(Toy {
            arena,
            device: Mutex::new(Default::default()),
            faults: AtomicUsize::new(0),
            chunk,
            fail: Mutex::new(BTreeMap::new()),
            held: Mutex::new(Default::default()),
            kick: std::sync::OnceLock::new(),
        })
    }

    /// Give page `p` to the "device" with every byte `value`, zapping it.
    pub fn give_to_device(&self, p: usize, value: u8) {
        self.device.lock().insert(p * 4096, vec![value; 4096]);
        self.arena.zap(p * 4096, 4096).expect("zap");
    }

    /// Read byte `i` of the arena through the user view.
    pub fn read(&self, i: usize) -> u8 {
        assert!(i < self.arena.len());
        // SAFETY: inside the arena's user view, which stays mapped (an
        // inaccessible page faults to the service or crashes the process).
        unsafe { core::ptr::read_volatile((self.arena.base() + i) as *const u8) }
    }
}

/// Pages the "device" owns come back with the device's data on a CPU read
/// and on a CPU write, through the real fault path, one fault per chunk.
pub fn round_trip(kind: FaultBackendKind, chunk: usize) {
    let Some(t) = toy(kind, chunk) else { return };
    let svc = FaultService::start(t.clone()).expect("service");
    let base = t.arena.base();
    let pages = 64usize;
    // Host copy: zeros. Device: a pattern. Then zap the user view.
    for p in 0..pages {
        // SAFETY: the service is idle (nothing is zapped yet, so no fault
        // reaches it); this thread is the arena's only user.
        unsafe { t.arena.write_host(p * 4096, &[0u8; 4096]) };
        t.device.lock().insert(p * 4096, vec![(p as u8).wrapping_mul(3).wrapping_add(1); 4096]);
    }
    t.arena.zap(0, pages * 4096).expect("zap");
    // Read through the user view: each byte must be the device's.
    for p in 0..pages {
        for i in [0usize, 17, 4095] {
            // SAFETY: inside the arena's user view, which stays mapped.
            let v = unsafe { core::ptr::read_volatile((base + p * 4096 + i) as *const u8) };
            assert_eq!(v, (p as u8).wrapping_mul(3).wrapping_add(1), "page {p} byte {i}");
        }
    }
    let expected_faults = pages * 4096 / chunk;
    assert_eq!(t.faults.load(Ordering::Relaxed), expected_faults, "one fault per chunk");
    assert!(t.device.lock().is_empty(), "every page came back");

    // A write to a zapped page faults first, then lands in the host copy.
    t.device.lock().insert(0, vec![9u8; 4096]);
    t.arena.zap(0, chunk).expect("zap");
    // SAFETY: inside the user view.
    unsafe { core::ptr::write_volatile((base + 8) as *mut u8, 42) };
    let mut b = [0u8; 16];
    // SAFETY: the write above completed; the service thread is idle (no
    // page is zapped) and nothing else writes the arena.
    unsafe { t.arena.read_host(0, &mut b) };
    assert_eq!(b[7], 9, "the fault brought the device data back before the write");
    assert_eq!(b[8], 42, "the write went to the host copy");
    drop(svc);
}

/// A fault parked (`Again`) while its page is held stays blocked while
/// faults on other pages are served, and is served once the page is
/// released and the service kicked, while those faults keep coming. (Not
/// forced here: a stream dense enough that the uffd service never leaves
/// its busy-poll window for `poll`; it looks for the kick between batches
/// for that case, which these three threads, zapping between faults, do not
/// produce reliably on two CPUs.)
pub fn parked_fault_served_after_kick_while_faults_stream(kind: FaultBackendKind) {
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};
    let Some(t) = toy(kind, 4096) else { return };
    let _svc = FaultService::start(t.clone()).expect("service");
    let pages = t.arena.len() / 4096;
    t.held.lock().insert(0);
    t.give_to_device(0, 7);
    let (stop, streamed) = (AtomicBool::new(false), AtomicUsize::new(0));
    std::thread::scope(|s| {
        let parked = s.spawn(|| {
            let v = t.read(0);
            (v, Instant::now())
        });
        // Three threads: zap a page, read it (one fault), next page, so that
        // a fault is nearly always pending, until told to stop (at most
        // 10 s); each on its own pages.
        let streamers: Vec<_> = (0..3usize)
            .map(|k| {
                let (t, stop, streamed) = (&t, &stop, &streamed);
                s.spawn(move || {
                    let t0 = Instant::now();
                    for p in (1..pages).filter(|p| p % 3 == k).cycle() {
                        if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(10) {
                            break;
                        }
                        t.give_to_device(p, p as u8);
                        assert_eq!(t.read(p * 4096 + 1), p as u8, "streamed page {p}");
                        streamed.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!parked.is_finished(), "the fault on the held page was parked");
        let before = streamed.load(Ordering::Relaxed);
        assert!(before > 0, "faults on other pages were served while one was parked");
        t.held.lock().remove(&0);
        let kicked = Instant::now();
        t.kick.get().expect("the service gave its kick").kick();
        let deadline = kicked + Duration::from_secs(2);
        while !parked.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let served_while_streaming = parked.is_finished() && streamers.iter().all(|h| !h.is_finished());
        stop.store(true, Ordering::Relaxed);
        let (v, at) = parked.join().expect("parked reader");
        for h in streamers {
            h.join().expect("streamer");
        }
        assert_eq!(v, 7, "the parked fault saw the device's data");
        assert!(
            served_while_streaming,
            "the parked fault waited {:?} after its kick, behind {} streamed faults",
            at.saturating_duration_since(kicked),
            streamed.load(Ordering::Relaxed) - before
        );
    });
}

/// Several threads fault on the same and on neighbouring pages at once.
pub fn concurrent(kind: FaultBackendKind) {
    let Some(t) = toy(kind, 4096) else { return };
    let _svc = FaultService::start(t.clone()).expect("service");
    let pages = 256usize;
    for p in 0..pages {
        t.device.lock().insert(p * 4096, vec![p as u8; 4096]);
    }
    t.arena.zap(0, pages * 4096).expect("zap");
    let base = t.arena.base();
    std::thread::scope(|s| {
        for th in 0..4usize {
            s.spawn(move || {
                for k in 0..pages {
                    let p = (k * 7 + th * 13) % pages;
                    // SAFETY: inside the user view.
                    let v = unsafe { core::ptr::read_volatile((base + p * 4096 + th) as *const u8) };
                    assert_eq!(v, p as u8);
                }
            });
        }
    });
    assert!(t.device.lock().is_empty());
    let f = t.faults.load(Ordering::Relaxed);
    assert!((pages..=4 * pages).contains(&f), "{f} faults for {pages} pages");
}

/// A handler for write-protect tests: counts write faults and unprotects.
pub struct WpToy {
    pub arena: Arena,
    pub writes: AtomicUsize,
    pub reads: AtomicUsize,
}

impl FaultHandler for WpToy {
    fn arena(&self) -> &Arena {
        &self.arena
    }
    fn handle_fault(&self, fault: CpuFault) -> Result<(), FaultFatal> {
        if fault.write == Some(true) {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.arena.write_unprotect(fault.offset, 4096).map_err(|e| FaultFatal(e.to_string()))
        } else {
            // A read of a protected page with no PTE: map it, still protected.
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.arena.restore_readonly(fault.offset, 4096).map_err(|e| FaultFatal(e.to_string()))
        }
    }
}

/// Write-protected pages: reads proceed (populated or not), each first write
/// faults once, and the written values land.
pub fn write_protect(kind: FaultBackendKind) {
    let arena = match Arena::new(4 << 20, kind) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    if !arena.has_write_protect() {
        eprintln!("SKIP: no write-protect for {kind} on this kernel");
        return;
    }
    arena.allocate(0, 64 * 4096).expect("allocate");
    let t = Arc::new(WpToy { arena, writes: AtomicUsize::new(0), reads: AtomicUsize::new(0) });
    let _svc = FaultService::start(t.clone()).expect("service");
    let base = t.arena.base();
    // Pages 0..32 populated in the user view, 32..64 only in the host copy.
    for p in 0..32 {
        // SAFETY: inside the allocated user view.
        unsafe { core::ptr::write_volatile((base + p * 4096) as *mut u8, p as u8) };
    }
    for p in 32..64 {
        // SAFETY: these pages are not touched through the user view by
        // anyone yet; this thread is the only one using the arena.
        unsafe { t.arena.write_host(p * 4096, &[p as u8]) };
    }
    t.arena.write_protect(0, 64 * 4096).expect("wp");
    for p in 0..64 {
        // SAFETY: inside the user view.
        let v = unsafe { core::ptr::read_volatile((base + p * 4096) as *const u8) };
        assert_eq!(v, p as u8, "read of protected page {p}");
    }
    assert_eq!(t.writes.load(Ordering::Relaxed), 0, "reads do not raise write faults");
    for p in 0..64 {
        // SAFETY: inside the user view (two bytes of the page).
        unsafe {
            core::ptr::write_volatile((base + p * 4096 + 1) as *mut u8, 0xee);
            core::ptr::write_volatile((base + p * 4096 + 2) as *mut u8, 0xef);
        }
    }
    assert_eq!(t.writes.load(Ordering::Relaxed), 64, "one write fault per page");
    let mut b = [0u8; 3];
    for p in 0..64 {
        // SAFETY: every write above completed (the write faults were
        // served); no thread writes the arena now.
        unsafe { t.arena.read_host(p * 4096, &mut b) };
        assert_eq!(b, [p as u8, 0xee, 0xef]);
    }
}

/// A handler that drops the service serving it, from inside a fault (the
/// runtime's last reference to what owns the service can go there).
struct SelfDrop {
    arena: Arena,
    service: Mutex<Option<FaultService>>,
}

impl FaultHandler for SelfDrop {
    fn arena(&self) -> &Arena {
        &self.arena
    }
    fn handle_fault(&self, fault: CpuFault) -> Result<(), FaultFatal> {
        self.arena.restore(fault.offset, 4096).map_err(|e| FaultFatal(e.to_string()))?;
        drop(self.service.lock().take());
        Ok(())
    }
}

/// The service dropped by its own thread, inside a fault: it stops without
/// joining itself (that panicked: "failed to join thread: Resource deadlock
/// avoided", a fatal fault). In a child process: the faulting access itself
/// races the stop — served, or crashed on purpose with the stopped-service
/// message (an access once the service is gone, as designed: uffd makes the
/// user view `PROT_NONE`) — and either end is right; a panic or a hang is not.
pub fn dropped_by_its_own_thread(kind: FaultBackendKind, test: &str) {
    let Some(out) = process::isolated(test, || {
        let Some(t) = toy(kind, 4096) else { std::process::exit(0) };
        let arena = Arc::into_inner(t).expect("one toy").arena;
        let h = Arc::new(SelfDrop { arena, service: Mutex::new(None) });
        let svc = FaultService::start(h.clone()).expect("service");
        *h.service.lock() = Some(svc);
        h.arena.zap(0, 4096).expect("zap");
        // SAFETY: inside the arena's user view, which stays mapped (the
        // handler owns the arena and lives in `h`).
        let v = unsafe { core::ptr::read_volatile((h.arena.base() + 8) as *const u8) };
        assert_eq!(v, 0);
        // The thread ends on its own: its handler reference goes with it.
        let t0 = std::time::Instant::now();
        while Arc::strong_count(&h) > 1 && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(h.service.lock().is_none(), "the handler dropped the service");
        assert_eq!(Arc::strong_count(&h), 1, "the service thread ended");
    }) else {
        return;
    };
    assert!(!out.stderr.contains("panicked"), "a panic: {:?}\n{}", out.end, out.stderr);
    match out.end {
        process::End::Exited(0) => {}
        process::End::Signaled(libc::SIGSEGV) if out.stderr.contains("after its fault service stopped") => {}
        other => panic!("the child ended as {other:?}:\n{}", out.stderr),
    }
}

/// Whether the program can read the user-view page at `addr` without a
/// fault: the mapping's protection (`/proc/self/maps`) and, with uffd,
/// the page-table entry's present bit (`/proc/self/pagemap`).
fn user_readable(kind: FaultBackendKind, addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let readable = maps.lines().any(|l| {
        let (range, rest) = l.split_once(' ').expect("a maps line");
        let (a, b) = range.split_once('-').expect("a range");
        let (a, b) = (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
        (a..b).contains(&addr) && rest.starts_with('r')
    });
    if kind == FaultBackendKind::Mprotect || !readable {
        return readable;
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
    f.seek(SeekFrom::Start((addr / 4096 * 8) as u64)).expect("seek");
    let mut e = [0u8; 8];
    f.read_exact(&mut e).expect("read");
    u64::from_le_bytes(e) >> 63 == 1
}

/// Withheld pages are never made accessible again: restore, read-only
/// restore, allocate, write-protect and write-unprotect over them map only
/// the others.
pub fn withheld_pages_stay_withheld(kind: FaultBackendKind) {
    let Some(t) = toy(kind, 4096) else { return };
    let arena = &t.arena;
    let base = arena.base();
    let n = 8;
    arena.populate_host(0, n * 4096).expect("populate");
    arena.restore(0, n * 4096).expect("restore");
    assert!((0..n).all(|p| user_readable(kind, base + p * 4096)), "mapped before");
    arena.withhold(2 * 4096, 2 * 4096).expect("withhold pages 2, 3");
    arena.withhold(3 * 4096, 4096).expect("page 3 again (overlapping entries)");
    arena.withhold(5 * 4096, 0).expect("nothing");
    assert!(arena.is_withheld(3 * 4096, 4096) && !arena.is_withheld(4 * 4096, 4096));
    assert!(!arena.is_withheld(4 * 4096, 2 * 4096), "an empty withholding withholds nothing");
    assert_eq!(arena.withheld(), vec![(2 * 4096, 2 * 4096), (3 * 4096, 4096)]);
    assert!((2..4).all(|p| !user_readable(kind, base + p * 4096)), "withheld at once");
    arena.zap(0, n * 4096).expect("zap");
    arena.restore(0, n * 4096).expect("restore around them");
    arena.restore_readonly(0, n * 4096).expect("restore read-only around them");
    arena.allocate(0, n * 4096).expect("allocate around them");
    if arena.has_write_protect() {
        arena.write_protect(0, n * 4096).expect("protect around them");
        for p in 0..n {
            assert_eq!(user_readable(kind, base + p * 4096), !(2..4).contains(&p), "{kind}: page {p} write-protected");
        }
        arena.write_unprotect(0, n * 4096).expect("unprotect around them");
    }
    for p in 0..n {
        assert_eq!(user_readable(kind, base + p * 4096), !(2..4).contains(&p), "{kind}: page {p}");
    }
}
