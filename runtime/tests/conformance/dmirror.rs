//! A fake device on `svm_pagetable`'s mirror protocol that carries data,
//! modelled on the kernel's `lib/test_hmm.c` ("dmirror"): host memory is a
//! vector of small pages, each device has its own pool of frames, device
//! reads and writes go through the HMM driver loop (notifier, range fault,
//! update lock, `read_retry`, commit), and migrations copy real data. Used
//! for the two-device (`hmm2`) scenarios.

use std::sync::{Arc, Mutex};

use svm_pagetable::{
    AddressSpace, Again, Encoding, FrameIndex, MigrateOutcome, MigrateTarget, Mirror, MirrorId, MirrorOps, PageIndex,
    PageRange, PageState, PageTable, RangeError, RangeRequest, SnapshotEntry, SpaceError, Update,
};

/// Words per fake page (small: the data, not the size, is what is checked).
pub const W: usize = 16;
pub type PageData = [u32; W];

pub type HostMem = Arc<Mutex<Vec<PageData>>>;

pub struct DevOps {
    host: HostMem,
    pool: Mutex<Vec<PageData>>,
    pub log: Mutex<Vec<Update>>,
    pub copied_back: Mutex<Vec<(PageIndex, FrameIndex)>>,
}

impl MirrorOps for DevOps {
    type Table = PageTable;
    fn invalidate(&self, table: &mut PageTable, update: &Update) -> Result<(), Again> {
        self.log.lock().expect("log").push(*update);
        table.invalidate(update);
        Ok(())
    }
    fn copy_to_host(&self, pages: &[(PageIndex, FrameIndex)]) {
        let pool = self.pool.lock().expect("pool");
        let mut host = self.host.lock().expect("host");
        for &(p, f) in pages {
            host[p.0 as usize] = pool[f.get() as usize];
        }
        self.copied_back.lock().expect("copied").extend_from_slice(pages);
    }
}

pub struct Dev {
    pub space: Arc<AddressSpace>,
    pub mirror: Arc<Mirror<DevOps>>,
}

pub fn r(a: u32, b: u32) -> PageRange {
    PageRange::from_range(a..b).expect("ordered")
}

pub fn new_space(pages: u32) -> (Arc<AddressSpace>, HostMem) {
    (AddressSpace::new(pages), Arc::new(Mutex::new(vec![[0; W]; pages as usize])))
}

impl Dev {
    pub fn new(space: &Arc<AddressSpace>, host: &HostMem) -> Self {
        let ops = DevOps {
            host: host.clone(),
            pool: Mutex::new(Vec::new()),
            log: Mutex::default(),
            copied_back: Mutex::default(),
        };
        let mirror = space.mirror_register(space.range(), ops, PageTable::new(space.pages())).expect("register");
        Self { space: space.clone(), mirror }
    }

    pub fn id(&self) -> MirrorId {
        self.mirror.id()
    }

    /// Snapshot without faulting (`HMM_DMIRROR_SNAPSHOT`).
    pub fn snapshot(&self, range: PageRange) -> Vec<SnapshotEntry> {
        let mut pfns = vec![0; range.len() as usize];
        let mut req = RangeRequest::new(self.id(), range, &mut pfns);
        self.space.range_snapshot(&mut req, true).expect("snapshot");
        (0..range.len() as usize).map(|i| req.entry(i)).collect()
    }

    /// The driver loop: fault `range` (for writing when `write`), commit the
    /// snapshot into the device table under the update lock, then run `f`
    /// on the entries while still holding it (the device using what it
    /// mapped).
    fn with_mapped<R>(
        &self,
        range: PageRange,
        write: bool,
        f: impl FnOnce(&[SnapshotEntry], &mut Vec<PageData>, &mut Vec<PageData>) -> R,
    ) -> Result<R, RangeError> {
        let notifier = self.mirror.notifier_insert(range);
        let enc = Encoding::DEFAULT;
        let flags = enc.valid | if write { enc.write } else { 0 };
        loop {
            let seq = notifier.read_begin();
            let mut pfns = vec![0; range.len() as usize];
            let mut req = RangeRequest::new(self.id(), range, &mut pfns).with_request(flags, 0);
            self.space.range_fault(&mut req, true)?;
            let entries: Vec<SnapshotEntry> = (0..range.len() as usize).map(|i| req.entry(i)).collect();
            let mut table = self.mirror.update_lock();
            if table.read_retry(&notifier, seq) {
                continue;
            }
            table.commit_snapshot(range, &pfns, &enc);
            let ops = self.mirror.ops();
            let mut host = ops.host.lock().expect("host");
            let mut pool = ops.pool.lock().expect("pool");
            return Ok(f(&entries, &mut host, &mut pool));
        }
    }

    /// `HMM_DMIRROR_READ`: the device reads `range`.
    pub fn read(&self, range: PageRange) -> Result<Vec<PageData>, RangeError> {
        self.with_mapped(range, false, |entries, host, pool| {
            entries
                .iter()
                .map(|e| match *e {
                    SnapshotEntry::Host { page, .. } => host[page.0 as usize],
                    SnapshotEntry::Device { frame, .. } => pool[frame.get() as usize],
                    other => panic!("faulted page reported {other:?}"),
                })
                .collect()
        })
    }

    /// `HMM_DMIRROR_WRITE`: the device writes `data` over `range`.
    pub fn write(&self, range: PageRange, data: &[PageData]) -> Result<(), RangeError> {
        self.with_mapped(range, true, |entries, host, pool| {
            for (e, d) in entries.iter().zip(data) {
                match *e {
                    SnapshotEntry::Host { page, write: true, .. } => host[page.0 as usize] = *d,
                    SnapshotEntry::Device { frame, write: true, .. } => pool[frame.get() as usize] = *d,
                    other => panic!("write-faulted page reported {other:?}"),
                }
            }
        })
    }

    /// `HMM_DMIRROR_MIGRATE_TO_DEV`: migrate `range` into this device's
    /// pool, copying from host memory or from the other devices' pools.
    /// Returns the pages moved.
    pub fn migrate_to(&self, range: PageRange, all: &[&Dev]) -> Result<usize, SpaceError> {
        let mig = self.space.migrate_begin(range, MigrateTarget::Device(self.id()), true)?;
        let mut frames = Vec::new();
        for (p, src) in mig.pages() {
            let data = match src {
                PageState::Empty { .. } => [0; W],
                PageState::Host { .. } => self.mirror.ops().host.lock().expect("host")[p.0 as usize],
                PageState::Device { owner, frame, .. } => {
                    let other = all.iter().find(|d| d.id() == owner).expect("owner known");
                    other.mirror.ops().pool.lock().expect("pool")[frame.get() as usize]
                }
                other => panic!("collected page {p:?} in state {other:?}"),
            };
            let mut pool = self.mirror.ops().pool.lock().expect("pool");
            pool.push(data);
            frames.push((p, FrameIndex::new(pool.len() as u32 - 1).expect("frame fits")));
        }
        let moved = frames.len();
        mig.finalize(|p, _| {
            let f = frames.iter().find(|(q, _)| *q == p).expect("collected").1;
            MigrateOutcome::Device(f)
        })?;
        Ok(moved)
    }
}

/// The CPU reads `range` (device pages are taken back by their owners).
pub fn cpu_read(space: &Arc<AddressSpace>, host: &HostMem, range: PageRange) -> Result<Vec<PageData>, SpaceError> {
    space.cpu_fault(range, false, true)?;
    let h = host.lock().expect("host");
    Ok(range.iter().map(|p| h[p.0 as usize]).collect())
}

/// The CPU writes `data` over `range`.
pub fn cpu_write(
    space: &Arc<AddressSpace>,
    host: &HostMem,
    range: PageRange,
    data: &[PageData],
) -> Result<(), SpaceError> {
    space.cpu_fault(range, true, true)?;
    let mut h = host.lock().expect("host");
    for (p, d) in range.iter().zip(data) {
        h[p.0 as usize] = *d;
    }
    Ok(())
}

/// Recognisable page contents.
pub fn pattern(page: u32, tag: u32) -> PageData {
    core::array::from_fn(|i| page * 1000 + i as u32 + tag * 1_000_000)
}
