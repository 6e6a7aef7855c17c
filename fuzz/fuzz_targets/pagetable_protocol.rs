//! Fuzz `svm_pagetable`'s HMM protocol (`AddressSpace` with two mirrors)
//! and its `PageTable` against a plain model.
//!
//! The model follows the proptest of `svm-pagetable/src/tests.rs` (page
//! states in a `BTreeMap`, allocations as ranges with their large-entry
//! order) and adds *data*: every allocated page carries a value; devices
//! carry theirs in pools that the mirrors' `copy_to_host` and the
//! migrations copy, so a lost or stale copy shows as a wrong value. After
//! every operation it checks: each page's state, the large-entry invariants,
//! mirror coherence (a mirror maps a page only while it owns it, with the
//! right frame and rights), and each page's value.
//!
//! A second part drives a bare `PageTable` (set / fill / zap / update /
//! drain) against a `Vec<u32>` and a simulated device copy fed only by
//! `drain_dirty`: after a drain the device copy must equal the table.

#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use svm_pagetable::model::{ModelPage as M, PageModel};
use svm_pagetable::{
    AddressSpace, Again, AllocDescriptor, ChunkOrder, Encoding, FrameIndex, InvalidateEvent, MigrateOutcome,
    MigrateTarget, Mirror, MirrorOps, PageIndex, PageRange, PageState, PageTable, Prot, Pte, RangeError, RangeRequest,
    SnapshotEntry, SpaceError, Update, LEAF_PTES,
};

const PAGES: u32 = 1100;
const MIRRORS: usize = 2;

type Shared = Arc<Mutex<Vec<u32>>>;

struct Ops {
    host: Shared,
    pool: Shared,
}

impl MirrorOps for Ops {
    type Table = PageTable;
    fn invalidate(&self, table: &mut PageTable, update: &Update) -> Result<(), Again> {
        table.invalidate(update);
        Ok(())
    }
    fn copy_to_host(&self, pages: &[(PageIndex, FrameIndex)]) {
        let pool = self.pool.lock().unwrap();
        let mut host = self.host.lock().unwrap();
        for &(p, f) in pages {
            host[p.0 as usize] = pool[f.get() as usize];
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum P {
    None,
    Read,
    ReadWrite,
    ReadWrite2,
}
impl P {
    fn prot(self) -> Prot {
        match self {
            P::None => Prot::None,
            P::Read => Prot::Read,
            P::ReadWrite | P::ReadWrite2 => Prot::ReadWrite,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum O {
    Page,
    K64,
    M2,
}
impl O {
    fn order(self) -> ChunkOrder {
        match self {
            O::Page => ChunkOrder::Page,
            O::K64 => ChunkOrder::Chunk64K,
            O::M2 => ChunkOrder::Chunk2M,
        }
    }
}

/// A span: start anchor, offset and length, biased to overlap.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Span {
    anchor: u8,
    off: u16,
    len: u16,
}
impl Span {
    fn get(self) -> (u32, u32) {
        let anchors = [0u32, 16, 500, 512, 1024, 31, 48];
        let a = match self.anchor as usize {
            i if i < anchors.len() * 30 => anchors[i % anchors.len()] + u32::from(self.off % 8),
            _ => u32::from(self.off) % PAGES,
        };
        let n = match self.len % 8 {
            0 => 512,
            1 => 16,
            2 => 64,
            _ => u32::from(self.len % 600) + 1,
        };
        let s = a.min(PAGES - 1);
        (s, (s + n).min(PAGES))
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Alloc(Span, P, O),
    AllocSpecial(Span),
    Free(Span),
    Protect(Span, P),
    Invalidate(Span),
    CpuFault(Span, bool),
    CpuWrite(Span),
    ToDevice(Span, bool, u8),
    ToHost(Span),
    Snapshot(Span, bool),
    Fault(Span, bool, bool),
    // PageTable part.
    PtSet(u16, u32),
    PtFill(Span, u32),
    PtZap(Span),
    PtUpdate(Span, u32),
    PtDrain,
}

#[derive(Default)]
struct Model {
    core: PageModel,
    /// The value each allocated, non-special page holds (its logical contents).
    val: BTreeMap<u32, u32>,
}

impl std::ops::Deref for Model {
    type Target = PageModel;
    fn deref(&self) -> &PageModel {
        &self.core
    }
}

impl std::ops::DerefMut for Model {
    fn deref_mut(&mut self) -> &mut PageModel {
        &mut self.core
    }
}

impl Model {
    fn upgrade_chunk(&mut self, space: &AddressSpace, p: u32, prot: Prot, order: Option<ChunkOrder>) {
        let order = order.unwrap_or_else(|| space.page(PageIndex(p)).unwrap().1);
        for q in order.chunk_of(PageIndex(p)).iter() {
            self.pages.insert(q.0, M::Host(prot, true));
        }
    }
}

fn r(a: u32, b: u32) -> PageRange {
    PageRange::from_range(a..b).unwrap()
}

fn strip(e: SnapshotEntry) -> SnapshotEntry {
    match e {
        SnapshotEntry::Host { page, write, .. } => SnapshotEntry::Host { page, write, order: ChunkOrder::Page },
        SnapshotEntry::Device { frame, write, .. } => SnapshotEntry::Device { frame, write, order: ChunkOrder::Page },
        e => e,
    }
}

struct World {
    space: Arc<AddressSpace>,
    mirrors: Vec<Arc<Mirror<Ops>>>,
    host: Shared,
    pools: Vec<Shared>,
    model: Model,
    stamp: u32,
    // PageTable part.
    pt: PageTable,
    pt_model: Vec<u32>,
    pt_device: Vec<u32>,
}

impl World {
    fn new() -> Self {
        let space = AddressSpace::new(PAGES);
        let host: Shared = Arc::new(Mutex::new(vec![0; PAGES as usize]));
        let pools: Vec<Shared> = (0..MIRRORS).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
        let mirrors = pools
            .iter()
            .map(|pool| {
                space
                    .mirror_register(
                        space.range(),
                        Ops { host: host.clone(), pool: pool.clone() },
                        PageTable::new(PAGES),
                    )
                    .unwrap()
            })
            .collect();
        let pt = PageTable::new(PAGES);
        Self {
            space,
            mirrors,
            host,
            pools,
            model: Model::default(),
            stamp: 1,
            pt,
            pt_model: vec![0; PAGES as usize],
            pt_device: vec![0xdead_beef; PAGES as usize],
        }
    }

    fn idx(&self, id: svm_pagetable::MirrorId) -> usize {
        self.mirrors.iter().position(|m| m.id() == id).unwrap()
    }

    /// The driver loop of PROTOCOL.md; returns the entries committed.
    fn fault_commit(&self, m: usize, range: PageRange, write: bool) -> Result<Vec<SnapshotEntry>, RangeError> {
        let mirror = &self.mirrors[m];
        let notifier = mirror.notifier_insert(range);
        let enc = Encoding::DEFAULT;
        let flags = enc.valid | if write { enc.write } else { 0 };
        loop {
            let seq = notifier.read_begin();
            let mut pfns = vec![0; range.len() as usize];
            let mut req = RangeRequest::new(mirror.id(), range, &mut pfns).with_request(flags, 0);
            self.space.range_fault(&mut req, true)?;
            let entries = (0..range.len() as usize).map(|i| req.entry(i)).collect();
            let mut table = mirror.update_lock();
            if table.read_retry(&notifier, seq) {
                continue;
            }
            table.commit_snapshot(range, &pfns, &enc);
            return Ok(entries);
        }
    }

    fn alloc(&mut self, s: u32, e: u32, prot: Prot, order: ChunkOrder) {
        let model = &mut self.model;
        let res = self.space.alloc(r(s, e), AllocDescriptor { prot, max_order: order });
        if (s..e).any(|p| model.pages.contains_key(&p)) {
            assert!(matches!(res, Err(SpaceError::Overlap(_))), "{res:?}");
        } else {
            assert_eq!(res, Ok(()));
            let mut host = self.host.lock().unwrap();
            for p in s..e {
                model.pages.insert(p, M::Empty(prot));
                model.val.insert(p, 0);
                host[p as usize] = 0; // fresh memory is zero
            }
            model.allocs.insert(s, (e, order));
        }
    }

    fn cpu(&mut self, s: u32, e: u32, write: bool, store: bool) {
        let model = &mut self.model;
        let res = self.space.cpu_fault(r(s, e), write, true);
        match (s..e).find_map(|p| model.fault_reason(p, write).map(|why| (p, why))) {
            Some((p, reason)) => assert_eq!(res, Err(SpaceError::Fault { page: PageIndex(p), reason })),
            None => {
                assert_eq!(res, Ok(()));
                for p in s..e {
                    if let M::Device(prot, ..) = model.pages[&p] {
                        model.pages.insert(p, M::Host(prot, prot.writable()));
                    }
                }
                for p in s..e {
                    match model.pages[&p] {
                        M::Empty(_) => model.populate(p, write),
                        M::Host(prot, false) if write => model.upgrade_chunk(&self.space, p, prot, None),
                        _ => {}
                    }
                }
                if store {
                    // The CPU stores into the pages it now has mapped writable.
                    let mut host = self.host.lock().unwrap();
                    for p in s..e {
                        self.stamp += 1;
                        host[p as usize] = self.stamp;
                        model.val.insert(p, self.stamp);
                    }
                }
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Alloc(sp, p, o) => {
                let (s, e) = sp.get();
                self.alloc(s, e, p.prot(), o.order());
            }
            Op::AllocSpecial(sp) => {
                let (s, e) = sp.get();
                let res = self.space.alloc_special(r(s, e));
                if (s..e).any(|p| self.model.pages.contains_key(&p)) {
                    assert!(res.is_err());
                } else {
                    assert_eq!(res, Ok(()));
                    (s..e).for_each(|p| {
                        self.model.pages.insert(p, M::Special);
                    });
                    self.model.allocs.insert(s, (e, ChunkOrder::Page));
                }
            }
            Op::Free(sp) => {
                let (s, e) = sp.get();
                self.space.free(r(s, e), true).unwrap();
                for p in s..e {
                    self.model.pages.remove(&p);
                    self.model.val.remove(&p);
                }
                let hit: Vec<_> =
                    self.model.allocs.range(..e).filter(|(_, a)| a.0 > s).map(|(k, a)| (*k, *a)).collect();
                for (k, a) in hit {
                    self.model.allocs.remove(&k);
                    if k < s {
                        self.model.allocs.insert(k, (s, a.1));
                    }
                    if a.0 > e {
                        self.model.allocs.insert(e, a);
                    }
                }
            }
            Op::Protect(sp, p) => {
                let (s, e) = sp.get();
                let prot = p.prot();
                self.space.protect(r(s, e), prot, true).unwrap();
                for p in s..e {
                    if let Some(m) = self.model.pages.get_mut(&p) {
                        *m = match *m {
                            M::Empty(_) => M::Empty(prot),
                            M::Host(_, w) => M::Host(prot, w && prot.writable()),
                            M::Device(_, o, f) => M::Device(prot, o, f),
                            M::Special => M::Special,
                        };
                    }
                }
            }
            Op::Invalidate(sp) => {
                let (s, e) = sp.get();
                self.space.invalidate(r(s, e), InvalidateEvent::Clear, true).unwrap();
            }
            Op::CpuFault(sp, write) => {
                let (s, e) = sp.get();
                self.cpu(s, e, write, false);
            }
            Op::CpuWrite(sp) => {
                let (s, e) = sp.get();
                self.cpu(s, e, true, true);
            }
            Op::ToDevice(sp, second, k) => {
                let (s, e) = sp.get();
                let m = usize::from(second);
                let target = self.mirrors[m].id();
                let mig = self.space.migrate_begin(r(s, e), MigrateTarget::Device(target), true).unwrap();
                // Copy each collected page into a fresh frame of the target pool.
                let mut frames = BTreeMap::new();
                for (p, src) in mig.pages() {
                    let data = match src {
                        PageState::Empty { .. } => 0,
                        PageState::Host { .. } => self.host.lock().unwrap()[p.0 as usize],
                        PageState::Device { owner, frame, .. } => {
                            let o = self.idx(owner);
                            assert_ne!(o, m, "page {p:?} collected from its own target");
                            self.pools[o].lock().unwrap()[frame.get() as usize]
                        }
                        other => panic!("collected {p:?} in state {other:?}"),
                    };
                    let mut pool = self.pools[m].lock().unwrap();
                    pool.push(data);
                    frames.insert(p.0, pool.len() as u32 - 1);
                }
                let mut moved = Vec::new();
                mig.finalize(|p, src| {
                    let selected = match self.model.pages.get(&p.0) {
                        Some(M::Empty(prot) | M::Host(prot, _)) => prot.readable(),
                        Some(M::Device(prot, o, _)) => prot.readable() && *o != m,
                        _ => false,
                    };
                    assert!(selected, "page {p:?} in state {src:?} was collected");
                    if (p.0 ^ u32::from(k)) % 7 == 0 {
                        MigrateOutcome::Restore
                    } else {
                        moved.push(p.0);
                        MigrateOutcome::Device(FrameIndex::new(frames[&p.0]).unwrap())
                    }
                })
                .unwrap();
                for p in moved {
                    let prot = self.model.pages[&p].prot().unwrap();
                    self.model.pages.insert(p, M::Device(prot, m, frames[&p]));
                }
            }
            Op::ToHost(sp) => {
                let (s, e) = sp.get();
                let mig = self.space.migrate_begin(r(s, e), MigrateTarget::Host, true).unwrap();
                {
                    let mut host = self.host.lock().unwrap();
                    for (p, src) in mig.pages() {
                        let PageState::Device { owner, frame, .. } = src else { panic!("{p:?}: {src:?}") };
                        host[p.0 as usize] = self.pools[self.idx(owner)].lock().unwrap()[frame.get() as usize];
                    }
                }
                let mut moved = Vec::new();
                mig.finalize(|p, _| {
                    moved.push(p.0);
                    MigrateOutcome::Host
                })
                .unwrap();
                let expected: Vec<u32> = (s..e)
                    .filter(|p| matches!(self.model.pages.get(p), Some(M::Device(prot, ..)) if prot.readable()))
                    .collect();
                assert_eq!(moved, expected);
                for p in moved {
                    let prot = self.model.pages[&p].prot().unwrap();
                    self.model.pages.insert(p, M::Host(prot, prot.writable()));
                }
            }
            Op::Snapshot(sp, second) => {
                let (s, e) = sp.get();
                let m = usize::from(second);
                let mut pfns = vec![0; (e - s) as usize];
                let mut req = RangeRequest::new(self.mirrors[m].id(), r(s, e), &mut pfns);
                self.space.range_snapshot(&mut req, true).unwrap();
                for i in 0..(e - s) as usize {
                    assert_eq!(strip(req.entry(i)), self.model.expect(s + i as u32, m), "page {}", s + i as u32);
                }
            }
            Op::Fault(sp, second, write) => {
                let (s, e) = sp.get();
                let m = usize::from(second);
                let orders: Vec<ChunkOrder> = (s..e).map(|p| self.space.page(PageIndex(p)).unwrap().1).collect();
                let res = self.fault_commit(m, r(s, e), write);
                let fail = (s..e).find_map(|p| self.model.fault_reason(p, write).map(|why| (p, why)));
                let upto = fail.map_or(e, |(p, _)| p);
                for p in s..upto {
                    match self.model.pages[&p] {
                        M::Empty(_) => self.model.populate(p, write),
                        M::Host(prot, false) if write => {
                            self.model.upgrade_chunk(&self.space, p, prot, Some(orders[(p - s) as usize]))
                        }
                        _ => {}
                    }
                }
                match fail {
                    Some((p, reason)) => assert_eq!(res.err(), Some(RangeError::Fault { page: PageIndex(p), reason })),
                    None => {
                        let entries = res.unwrap();
                        for p in s..e {
                            if let M::Device(prot, o, _) = self.model.pages[&p] {
                                if o != m {
                                    self.model.pages.insert(p, M::Host(prot, prot.writable()));
                                }
                            }
                        }
                        if write {
                            // The device stores through what it mapped.
                            let mut host = self.host.lock().unwrap();
                            let mut pool = self.pools[m].lock().unwrap();
                            for (i, ent) in entries.iter().enumerate() {
                                let p = s + i as u32;
                                self.stamp += 1;
                                match *ent {
                                    SnapshotEntry::Host { page, write: true, .. } => host[page.0 as usize] = self.stamp,
                                    SnapshotEntry::Device { frame, write: true, .. } => {
                                        pool[frame.get() as usize] = self.stamp
                                    }
                                    other => panic!("write fault of page {p} reported {other:?}"),
                                }
                                self.model.val.insert(p, self.stamp);
                            }
                        }
                    }
                }
            }
            Op::PtSet(p, bits) => {
                let p = u32::from(p) % PAGES;
                self.pt.set(PageIndex(p), Pte::from_bits(bits));
                self.pt_model[p as usize] = bits;
            }
            Op::PtFill(sp, bits) => {
                let (s, e) = sp.get();
                self.pt.fill(r(s, e), Pte::from_bits(bits));
                self.pt_model[s as usize..e as usize].fill(bits);
            }
            Op::PtZap(sp) => {
                let (s, e) = sp.get();
                self.pt.zap(r(s, e));
                for b in &mut self.pt_model[s as usize..e as usize] {
                    if *b & Pte::VALID != 0 {
                        *b &= Pte::ALLOC;
                    }
                }
            }
            Op::PtUpdate(sp, x) => {
                let (s, e) = sp.get();
                self.pt.update_range(s..e, |p, old| Pte::from_bits(old.bits() ^ x.rotate_left(p.0 % 32)));
                for p in s..e {
                    self.pt_model[p as usize] ^= x.rotate_left(p % 32);
                }
            }
            Op::PtDrain => {
                let dev = &mut self.pt_device;
                let before = self.pt.dirty_bytes();
                let bytes = self.pt.drain_dirty(|b| {
                    assert_eq!(b.byte_offset % (LEAF_PTES as u64 * 4), 0, "batches start at leaves");
                    let first = (b.byte_offset / 4) as usize;
                    for (i, pte) in b.entries.iter().enumerate() {
                        dev[first + i] = pte.bits();
                    }
                });
                assert_eq!(bytes, before);
                assert_eq!(self.pt.dirty_leaves(), 0);
                assert_eq!(self.pt_device, self.pt_model, "device copy differs after a drain");
            }
        }
    }

    fn check(&self) {
        let model = &self.model;
        self.space.check_invariants().unwrap();
        let host = self.host.lock().unwrap();
        for p in 0..PAGES {
            let (state, _) = self.space.page(PageIndex(p)).unwrap();
            let want = match model.pages.get(&p) {
                None => PageState::Unallocated,
                Some(M::Special) => PageState::Special,
                Some(M::Empty(prot)) => PageState::Empty { prot: *prot },
                Some(M::Host(prot, w)) => PageState::Host { prot: *prot, writable: *w },
                Some(M::Device(prot, o, f)) => {
                    PageState::Device { prot: *prot, owner: self.mirrors[*o].id(), frame: FrameIndex::new(*f).unwrap() }
                }
            };
            assert_eq!(state, want, "page {p}");
            // Data: the logical value of the page.
            let got = match state {
                PageState::Empty { .. } => Some(0),
                PageState::Host { .. } => Some(host[p as usize]),
                PageState::Device { owner, frame, .. } => {
                    Some(self.pools[self.idx(owner)].lock().unwrap()[frame.get() as usize])
                }
                _ => None,
            };
            if let Some(got) = got {
                assert_eq!(Some(&got), model.val.get(&p), "value of page {p} ({state:?})");
            }
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            let table = m.update_lock();
            for p in 0..PAGES {
                let pte = table.get(PageIndex(p));
                if pte.is_valid() {
                    let ok = matches!(self.space.page(PageIndex(p)), Some((PageState::Device { owner, frame, prot }, _))
                        if self.idx(owner) == i && Some(frame) == pte.frame() && pte.is_writable() == prot.writable());
                    assert!(ok, "mirror {i} maps page {p} stale: {pte:?}");
                }
            }
        }
        for p in 0..PAGES {
            assert_eq!(self.pt.get(PageIndex(p)).bits(), self.pt_model[p as usize], "page table entry {p}");
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World::new();
    // Most of the space starts allocated, as in the proptest.
    w.alloc(0, 1024, Prot::ReadWrite, ChunkOrder::Chunk2M);
    for op in ops.into_iter().take(64) {
        w.run(op);
        w.check();
    }
});
