//! Protocol tests: one per result kind, the protocol's contracts, large
//! entries, and a proptest of random operation sequences against a
//! `BTreeMap` model.

use std::sync::{Arc, Mutex as StdMutex};

use proptest::prelude::*;

use crate::*;

/// A mirror whose device is a [`PageTable`]: zaps on invalidate, logs calls.
#[derive(Default)]
struct TestOps {
    log: StdMutex<Vec<Update>>,
    copied: StdMutex<Vec<(PageIndex, FrameIndex)>>,
    released: StdMutex<u32>,
}

impl MirrorOps for TestOps {
    type Table = PageTable;
    fn invalidate(&self, table: &mut PageTable, update: &Update) -> Result<(), Again> {
        self.log.lock().expect("log").push(*update);
        table.invalidate(update);
        Ok(())
    }
    fn release(&self, table: &mut PageTable) {
        *self.released.lock().expect("released") += 1;
        table.fill(PageRange::from_range(0..table.len()).expect("ordered"), Pte::EMPTY);
    }
    fn copy_to_host(&self, pages: &[(PageIndex, FrameIndex)]) {
        self.copied.lock().expect("copied").extend_from_slice(pages);
    }
}

fn r(a: u32, b: u32) -> PageRange {
    PageRange::from_range(a..b).expect("ordered")
}

fn frame(f: u32) -> FrameIndex {
    FrameIndex::new(f).expect("fits")
}

fn setup(pages: u32) -> (Arc<AddressSpace>, Arc<Mirror<TestOps>>) {
    let space = AddressSpace::new(pages);
    let m = space.mirror_register(space.range(), TestOps::default(), PageTable::new(pages)).expect("register");
    (space, m)
}

fn snapshot(space: &Arc<AddressSpace>, me: MirrorId, range: PageRange) -> Vec<SnapshotEntry> {
    let mut pfns = vec![0; range.len() as usize];
    let mut req = RangeRequest::new(me, range, &mut pfns);
    space.range_snapshot(&mut req, true).expect("snapshot");
    (0..range.len() as usize).map(|i| req.entry(i)).collect()
}

/// Fault `range` for `mirror` with the driver loop, commit into its table.
fn fault_commit(
    space: &Arc<AddressSpace>,
    mirror: &Mirror<TestOps>,
    range: PageRange,
    write: bool,
) -> Result<(), RangeError> {
    let notifier = mirror.notifier_insert(range);
    let enc = Encoding::DEFAULT;
    let flags = enc.valid | if write { enc.write } else { 0 };
    loop {
        let seq = notifier.read_begin();
        let mut pfns = vec![0; range.len() as usize];
        let mut req = RangeRequest::new(mirror.id(), range, &mut pfns).with_request(flags, 0);
        space.range_fault(&mut req, true)?;
        let mut table = mirror.update_lock();
        if table.read_retry(&notifier, seq) {
            continue;
        }
        table.commit_snapshot(range, &pfns, &enc);
        return Ok(());
    }
}

fn strip_order(e: SnapshotEntry) -> SnapshotEntry {
    match e {
        SnapshotEntry::Host { page, write, .. } => SnapshotEntry::Host { page, write, order: ChunkOrder::Page },
        SnapshotEntry::Device { frame, write, .. } => SnapshotEntry::Device { frame, write, order: ChunkOrder::Page },
        e => e,
    }
}

fn small() -> AllocDescriptor {
    AllocDescriptor { prot: Prot::ReadWrite, max_order: ChunkOrder::Page }
}

// ------------------------------------------------------ one test per kind

#[test]
fn kind_valid_read_only() {
    let (space, m) = setup(16);
    space.alloc(r(0, 4), small()).expect("alloc");
    space.cpu_fault(r(1, 2), false, true).expect("read fault");
    let e = snapshot(&space, m.id(), r(1, 2));
    assert_eq!(e[0], SnapshotEntry::Host { page: PageIndex(1), write: false, order: ChunkOrder::Page });
}

#[test]
fn kind_write() {
    let (space, m) = setup(16);
    space.alloc(r(0, 4), small()).expect("alloc");
    space.cpu_fault(r(2, 3), true, true).expect("write fault");
    assert_eq!(
        snapshot(&space, m.id(), r(2, 3))[0],
        SnapshotEntry::Host { page: PageIndex(2), write: true, order: ChunkOrder::Page }
    );
    // A read-only allocation is never reported writable, even after protect.
    space.protect(r(2, 3), Prot::Read, true).expect("protect");
    assert_eq!(
        snapshot(&space, m.id(), r(2, 3))[0],
        SnapshotEntry::Host { page: PageIndex(2), write: false, order: ChunkOrder::Page }
    );
}

#[test]
fn kind_device_private_own_and_other() {
    let space = AddressSpace::new(16);
    let a = space.mirror_register(space.range(), TestOps::default(), PageTable::new(16)).expect("a");
    let b = space.mirror_register(space.range(), TestOps::default(), PageTable::new(16)).expect("b");
    space.alloc(r(0, 4), small()).expect("alloc");
    let mig = space.migrate_begin(r(0, 2), MigrateTarget::Device(a.id()), true).expect("begin");
    assert_eq!(mig.len(), 2);
    mig.finalize(|p, _| MigrateOutcome::Device(frame(10 + p.0))).expect("finalize");
    let own = snapshot(&space, a.id(), r(0, 2));
    assert_eq!(own[1], SnapshotEntry::Device { frame: frame(11), write: true, order: ChunkOrder::Page });
    let other = snapshot(&space, b.id(), r(0, 2));
    assert_eq!(other, vec![SnapshotEntry::OtherDevice; 2]);
    // With device_private_other = 0 it is plain NONE, like the modern kernel.
    let enc = Encoding { device_private_other: 0, ..Encoding::DEFAULT };
    let mut pfns = vec![0; 2];
    let mut req = RangeRequest::new(b.id(), r(0, 2), &mut pfns).with_encoding(enc);
    space.range_snapshot(&mut req, true).expect("snapshot");
    assert_eq!(req.entry(0), SnapshotEntry::NotPresent);
    // Migration to a's pool invalidated b with a's id as owner.
    let log = b.ops().log.lock().expect("log").clone();
    assert_eq!(log.last().map(|u| u.event), Some(InvalidateEvent::Migrate { owner: a.id() }));
}

#[test]
fn kind_none_empty_and_in_flight() {
    let (space, m) = setup(16);
    space.alloc(r(0, 4), small()).expect("alloc");
    space.cpu_fault(r(3, 4), true, true).expect("fault");
    assert_eq!(snapshot(&space, m.id(), r(0, 1))[0], SnapshotEntry::NotPresent);
    let mig = space.migrate_begin(r(3, 4), MigrateTarget::Device(m.id()), true).expect("begin");
    assert!(matches!(space.page(PageIndex(3)), Some((PageState::Migrating { .. }, _))));
    assert_eq!(snapshot(&space, m.id(), r(3, 4))[0], SnapshotEntry::NotPresent);
    drop(mig); // restores
    assert!(matches!(snapshot(&space, m.id(), r(3, 4))[0], SnapshotEntry::Host { write: true, .. }));
}

#[test]
fn kind_error_unallocated_freed_no_access() {
    let (space, m) = setup(16);
    space.alloc(r(0, 8), small()).expect("alloc");
    space.cpu_fault(r(0, 8), true, true).expect("fault");
    space.free(r(2, 4), true).expect("free");
    space.protect(r(5, 6), Prot::None, true).expect("protect");
    let e = snapshot(&space, m.id(), r(0, 10));
    assert_eq!(e[2], SnapshotEntry::Error, "freed");
    assert_eq!(e[3], SnapshotEntry::Error, "freed");
    assert_eq!(e[5], SnapshotEntry::Error, "no access");
    assert_eq!(e[9], SnapshotEntry::Error, "never allocated");
    assert!(matches!(e[4], SnapshotEntry::Host { .. }));
    // Faulting them fails with the reason, error at the page, none after.
    let mut pfns = vec![0; 4];
    let enc = Encoding::DEFAULT;
    let mut req = RangeRequest::new(m.id(), r(4, 8), &mut pfns).with_request(enc.valid, 0);
    let err = space.range_fault(&mut req, true).expect_err("no access");
    assert_eq!(err, RangeError::Fault { page: PageIndex(5), reason: FaultReason::NoAccess });
    assert_eq!(req.entry(1), SnapshotEntry::Error);
    assert_eq!(req.entry(2), SnapshotEntry::NotPresent);
    let mut pfns = vec![0; 1];
    let mut req = RangeRequest::new(m.id(), r(9, 10), &mut pfns).with_request(enc.valid, 0);
    assert_eq!(
        space.range_fault(&mut req, true),
        Err(RangeError::Fault { page: PageIndex(9), reason: FaultReason::Unallocated })
    );
}

#[test]
fn kind_special() {
    let (space, m) = setup(16);
    space.alloc_special(r(4, 6)).expect("special");
    assert_eq!(snapshot(&space, m.id(), r(4, 6)), vec![SnapshotEntry::Special; 2]);
    let mut pfns = vec![0; 2];
    let mut req = RangeRequest::new(m.id(), r(4, 6), &mut pfns).with_request(Encoding::DEFAULT.valid, 0);
    assert_eq!(
        space.range_fault(&mut req, true),
        Err(RangeError::Fault { page: PageIndex(4), reason: FaultReason::Special })
    );
}

// ------------------------------------------------------------ faults

#[test]
fn fault_default_plus_mask_requests() {
    let (space, m) = setup(16);
    space.alloc(r(0, 8), small()).expect("alloc");
    let enc = Encoding::DEFAULT;
    // Read-fault everything, write-fault pages whose input has WRITE.
    let mut pfns = vec![0, enc.write, 0, enc.write];
    let mut req = RangeRequest::new(m.id(), r(0, 4), &mut pfns).with_request(enc.valid, enc.write);
    space.range_fault(&mut req, true).expect("fault");
    let w: Vec<bool> = (0..4).map(|i| matches!(req.entry(i), SnapshotEntry::Host { write: true, .. })).collect();
    assert_eq!(w, vec![false, true, false, true]);
    // A write request on a read-only allocation is a fault error.
    space.protect(r(0, 1), Prot::Read, true).expect("protect");
    let mut pfns = vec![0];
    let mut req = RangeRequest::new(m.id(), r(0, 1), &mut pfns).with_request(enc.write, 0);
    assert_eq!(
        space.range_fault(&mut req, true),
        Err(RangeError::Fault { page: PageIndex(0), reason: FaultReason::ReadOnly })
    );
}

#[test]
fn fault_custom_encoding_like_the_seed() {
    // The seed's style: flags in the low bits, pfn shifted above them.
    let enc = Encoding {
        valid: 1,
        write: 2,
        device_private: 4,
        device_private_other: 0,
        none: 0,
        error: 0x10,
        special: 0x20,
        pfn_shift: 8,
        order_shift: None,
    };
    let (space, m) = setup(16);
    space.alloc(r(0, 8), small()).expect("alloc");
    let mut pfns = vec![0; 3];
    let mut req = RangeRequest::new(m.id(), r(5, 8), &mut pfns).with_encoding(enc).with_request(1, 0);
    space.range_fault(&mut req, true).expect("fault");
    assert_eq!(pfns, vec![(5 << 8) | 1, (6 << 8) | 1, (7 << 8) | 1]);
}

#[test]
fn fault_takes_back_other_mirrors_pages() {
    let space = AddressSpace::new(16);
    let a = space.mirror_register(space.range(), TestOps::default(), PageTable::new(16)).expect("a");
    let b = space.mirror_register(space.range(), TestOps::default(), PageTable::new(16)).expect("b");
    space.alloc(r(0, 4), small()).expect("alloc");
    space
        .migrate_begin(r(0, 4), MigrateTarget::Device(a.id()), true)
        .expect("begin")
        .finalize(|p, _| MigrateOutcome::Device(frame(p.0)))
        .expect("finalize");
    fault_commit(&space, &a, r(0, 4), true).expect("a maps its own pages");
    assert!(a.update_lock().get(PageIndex(1)).is_valid());
    // b asks for page 1: a copies it back and loses its mapping.
    fault_commit(&space, &b, r(1, 2), false).expect("b faults");
    assert_eq!(a.ops().copied.lock().expect("copied").as_slice(), &[(PageIndex(1), frame(1))]);
    assert!(!a.update_lock().get(PageIndex(1)).is_valid());
    assert!(a.update_lock().get(PageIndex(2)).is_valid(), "only the page asked for moved");
    assert!(a
        .ops()
        .log
        .lock()
        .expect("log")
        .iter()
        .any(|u| u.event == InvalidateEvent::CpuAccess && u.range.contains(PageIndex(1))));
    assert!(matches!(space.page(PageIndex(1)), Some((PageState::Host { .. }, _))));
    // The CPU takes the rest back.
    space.cpu_fault(r(0, 4), false, true).expect("cpu");
    assert_eq!(a.ops().copied.lock().expect("copied").len(), 4);
    assert_eq!(a.update_lock().populated_leaves(), 1);
    assert!(!a.update_lock().get(PageIndex(2)).is_valid());
}

#[test]
fn non_blocking_fault_is_busy_and_blocking_waits() {
    let (space, m) = setup(16);
    space.alloc(r(0, 4), small()).expect("alloc");
    let mig = space.migrate_begin(r(0, 4), MigrateTarget::Device(m.id()), true).expect("begin");
    let enc = Encoding::DEFAULT;
    let mut pfns = vec![0; 4];
    let mut req = RangeRequest::new(m.id(), r(0, 4), &mut pfns).with_request(enc.valid, 0);
    assert_eq!(space.range_fault(&mut req, false), Err(RangeError::Busy));
    let s2 = space.clone();
    let id = m.id();
    let waiter = std::thread::spawn(move || {
        let mut pfns = vec![0; 4];
        let mut req = RangeRequest::new(id, r(0, 4), &mut pfns).with_request(Encoding::DEFAULT.valid, 0);
        s2.range_fault(&mut req, true).map(|()| req.entry(0))
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    mig.finalize(|p, _| MigrateOutcome::Device(frame(p.0))).expect("finalize");
    let e = waiter.join().expect("thread").expect("fault");
    assert_eq!(e, SnapshotEntry::Device { frame: frame(0), write: true, order: ChunkOrder::Page });
}

// ------------------------------------------------- invalidation protocol

#[test]
fn invalidate_reaches_overlapping_mirrors_only_with_event() {
    let space = AddressSpace::new(64);
    let a = space.mirror_register(r(0, 32), TestOps::default(), PageTable::new(64)).expect("a");
    let b = space.mirror_register(r(32, 64), TestOps::default(), PageTable::new(64)).expect("b");
    space.alloc(r(0, 64), small()).expect("alloc");
    space.invalidate(r(30, 40), InvalidateEvent::Clear, true).expect("inv");
    space.protect(r(10, 12), Prot::Read, true).expect("protect");
    space.free(r(40, 41), true).expect("free");
    let la = a.ops().log.lock().expect("log").clone();
    let lb = b.ops().log.lock().expect("log").clone();
    assert_eq!(
        la.iter().map(|u| (u.range, u.event)).collect::<Vec<_>>(),
        vec![(r(30, 32), InvalidateEvent::Clear), (r(10, 12), InvalidateEvent::Protect)]
    );
    assert_eq!(
        lb.iter().map(|u| (u.range, u.event)).collect::<Vec<_>>(),
        vec![(r(32, 40), InvalidateEvent::Clear), (r(40, 41), InvalidateEvent::Unmap)]
    );
}

#[test]
fn non_blockable_invalidate_returns_again_while_update_lock_held() {
    let (space, m) = setup(16);
    space.alloc(r(0, 4), small()).expect("alloc");
    space.cpu_fault(r(0, 4), true, true).expect("fault");
    let n = m.notifier_insert(r(0, 4));
    let seq = n.read_begin();
    {
        let guard = m.update_lock();
        assert_eq!(space.free(r(0, 2), false), Err(SpaceError::Again(Again)));
        assert_eq!(space.invalidate(r(0, 2), InvalidateEvent::Clear, false), Err(SpaceError::Again(Again)));
        // Nothing changed on the host side.
        assert!(matches!(space.page(PageIndex(0)), Some((PageState::Host { .. }, _))));
        // The mirror was never entered: its count did not move.
        assert!(!guard.read_retry(&n, seq));
    }
    space.free(r(0, 2), false).expect("free when the lock is free");
    assert!(m.ops().log.lock().expect("log").iter().any(|u| !u.blockable));
}

#[test]
fn read_retry_sees_invalidation_between_snapshot_and_commit() {
    let (space, m) = setup(16);
    space.alloc(r(0, 4), small()).expect("alloc");
    let n = m.notifier_insert(r(0, 2));
    let far = m.notifier_insert(r(8, 10));
    let seq = n.read_begin();
    let seq_far = far.read_begin();
    space.cpu_fault(r(0, 1), true, true).expect("populating needs no invalidation");
    assert!(!m.update_lock().read_retry(&n, seq));
    space.invalidate(r(1, 2), InvalidateEvent::Clear, true).expect("inv");
    let g = m.update_lock();
    assert!(g.read_retry(&n, seq));
    assert!(!g.read_retry(&far, seq_far), "other ranges are unaffected");
    drop(g);
    let seq2 = n.read_begin();
    assert_eq!(seq2.get(), seq.get() + 2);
}

#[test]
#[should_panic(expected = "another mirror")]
fn read_retry_checks_the_lock_belongs_to_the_notifier() {
    let space = AddressSpace::new(8);
    let a = space.mirror_register(space.range(), TestOps::default(), PageTable::new(8)).expect("a");
    let b = space.mirror_register(space.range(), TestOps::default(), PageTable::new(8)).expect("b");
    let n = a.notifier_insert(r(0, 8));
    let seq = n.read_begin();
    let _ = b.update_lock().read_retry(&n, seq);
}

#[test]
fn release_and_unregister() {
    let space = AddressSpace::new(16);
    let a = space.mirror_register(space.range(), TestOps::default(), PageTable::new(16)).expect("a");
    let b = space.mirror_register(space.range(), TestOps::default(), PageTable::new(16)).expect("b");
    space.alloc(r(0, 4), small()).expect("alloc");
    space
        .migrate_begin(r(0, 1), MigrateTarget::Device(a.id()), true)
        .expect("begin")
        .finalize(|_, _| MigrateOutcome::Device(frame(0)))
        .expect("finalize");
    assert_eq!(space.mirror_unregister(&a), Err(SpaceError::OwnsPages { mirror: a.id(), pages: 1 }));
    space.mirror_unregister(&b).expect("b leaves");
    assert_eq!(space.mirror_unregister(&b), Err(SpaceError::NotRegistered(b.id())));
    let calls = b.ops().log.lock().expect("log").len();
    space.free(r(0, 4), true).expect("free");
    assert_eq!(b.ops().log.lock().expect("log").len(), calls, "no callback after unregister");
    space.release();
    space.release();
    assert_eq!(*a.ops().released.lock().expect("r"), 1);
    assert_eq!(*b.ops().released.lock().expect("r"), 0);
    assert_eq!(a.ops().log.lock().expect("log").last().map(|u| u.event), Some(InvalidateEvent::Release));
    assert!(space.is_released());
    assert_eq!(space.alloc(r(0, 1), small()), Err(SpaceError::Released));
    assert!(matches!(
        space.mirror_register(space.range(), TestOps::default(), PageTable::new(1)),
        Err(SpaceError::Released)
    ));
}

#[test]
fn dropping_the_space_releases_mirrors() {
    let space = AddressSpace::new(4);
    let a = space.mirror_register(space.range(), TestOps::default(), PageTable::new(4)).expect("a");
    drop(space);
    assert_eq!(*a.ops().released.lock().expect("r"), 1);
}

// ----------------------------------------------------------- large entries

#[test]
fn large_entries_fault_as_units_and_split() {
    let (space, m) = setup(2048);
    space.alloc(r(0, 1024 + 48), AllocDescriptor::default()).expect("alloc");
    // One fault in the first 2 MiB populates all of it.
    space.cpu_fault(r(7, 8), true, true).expect("fault");
    assert_eq!(space.page(PageIndex(511)).map(|p| p.1), Some(ChunkOrder::Chunk2M));
    // The tail of the allocation only fits 64 KiB chunks.
    space.cpu_fault(r(1024 + 20, 1024 + 21), false, true).expect("fault");
    assert_eq!(space.page(PageIndex(1024 + 16)).map(|p| p.1), Some(ChunkOrder::Chunk64K));
    assert_eq!(space.page(PageIndex(1024)).map(|p| p.0), Some(PageState::Empty { prot: Prot::ReadWrite }));
    let e = snapshot(&space, m.id(), r(0, 512));
    assert!(
        e.iter()
            .enumerate()
            .all(|(i, e)| *e
                == SnapshotEntry::Host { page: PageIndex(i as u32), write: true, order: ChunkOrder::Chunk2M })
    );
    space.check_invariants().expect("uniform");
    // Free a piece of the middle: the chunk splits, the rest stays mapped.
    space.free(r(100, 101), true).expect("free");
    space.check_invariants().expect("split cleanly");
    let e = snapshot(&space, m.id(), r(99, 102));
    assert_eq!(e[0], SnapshotEntry::Host { page: PageIndex(99), write: true, order: ChunkOrder::Page });
    assert_eq!(e[1], SnapshotEntry::Error);
    // Partial invalidation splits too.
    space.cpu_fault(r(512, 513), true, true).expect("fault");
    assert_eq!(space.page(PageIndex(600)).map(|p| p.1), Some(ChunkOrder::Chunk2M));
    space.invalidate(r(600, 601), InvalidateEvent::Clear, true).expect("inv");
    assert_eq!(space.page(PageIndex(512)).map(|p| p.1), Some(ChunkOrder::Page));
    space.check_invariants().expect("split cleanly");
}

#[test]
fn large_entries_survive_whole_migration() {
    let (space, m) = setup(1024);
    space.alloc(r(0, 1024), AllocDescriptor::default()).expect("alloc");
    space.cpu_fault(r(0, 1024), true, true).expect("fault");
    space
        .migrate_begin(r(512, 1024), MigrateTarget::Device(m.id()), true)
        .expect("begin")
        .finalize(|p, _| MigrateOutcome::Device(frame(p.0 - 512 + 4096)))
        .expect("finalize");
    assert_eq!(space.page(PageIndex(700)).map(|p| p.1), Some(ChunkOrder::Chunk2M));
    space.check_invariants().expect("uniform");
    let e = snapshot(&space, m.id(), r(512, 1024));
    assert_eq!(e[10], SnapshotEntry::Device { frame: frame(4106), write: true, order: ChunkOrder::Chunk2M });
    // Non-consecutive frames: split.
    space
        .migrate_begin(r(0, 512), MigrateTarget::Device(m.id()), true)
        .expect("begin")
        .finalize(|p, _| MigrateOutcome::Device(frame(1000 - p.0)))
        .expect("finalize");
    assert_eq!(space.page(PageIndex(7)).map(|p| p.1), Some(ChunkOrder::Page));
    space.check_invariants().expect("uniform");
    // Migration to the host with a device frame is refused, pages restored.
    let mig = space.migrate_begin(r(0, 2), MigrateTarget::Host, true).expect("begin");
    assert_eq!(mig.finalize(|_, _| MigrateOutcome::Device(frame(1))), Err(SpaceError::BadOutcome(PageIndex(0))));
    assert!(matches!(space.page(PageIndex(0)), Some((PageState::Device { .. }, _))));
}

// ------------------------------------------------ proptest against a model

use crate::model::{ModelPage as M, PageModel};

const PAGES: u32 = 1100;
const MIRRORS: usize = 2;

#[derive(Default)]
struct Model {
    core: PageModel,
    next_frame: u32,
}

impl core::ops::Deref for Model {
    type Target = PageModel;
    fn deref(&self) -> &PageModel {
        &self.core
    }
}

impl core::ops::DerefMut for Model {
    fn deref_mut(&mut self) -> &mut PageModel {
        &mut self.core
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(u32, u32, Prot, ChunkOrder),
    AllocSpecial(u32, u32),
    Free(u32, u32),
    Protect(u32, u32, Prot),
    Invalidate(u32, u32),
    CpuFault(u32, u32, bool),
    ToDevice(u32, u32, usize, u32),
    ToHost(u32, u32),
    Snapshot(u32, u32, usize),
    Fault(u32, u32, usize, bool),
}

fn span() -> impl Strategy<Value = (u32, u32)> {
    // Biased towards a few anchors so that operations overlap each other.
    let anchor = prop_oneof![Just(0u32), Just(16), Just(500), Just(512), Just(1024), 0..PAGES];
    prop_oneof![
        4 => (anchor.clone(), 0..8u32, 1..24u32).prop_map(|(a, o, n)| (a + o, n)),
        2 => (anchor, prop_oneof![Just(16u32), Just(64), Just(512), 1..600u32]).prop_map(|(a, n)| (a, n)),
        1 => (0..3u32, 1..3u32).prop_map(|(c, n)| (c * 512, n * 512)),
    ]
    .prop_map(|(s, n)| (s.min(PAGES - 1), (s + n).min(PAGES)))
}

fn prot() -> impl Strategy<Value = Prot> {
    prop_oneof![3 => Just(Prot::ReadWrite), 1 => Just(Prot::Read), 1 => Just(Prot::None)]
}

fn op() -> impl Strategy<Value = Op> {
    let order = prop_oneof![Just(ChunkOrder::Page), Just(ChunkOrder::Chunk64K), Just(ChunkOrder::Chunk2M)];
    prop_oneof![
        3 => (span(), prot(), order).prop_map(|((s, e), p, o)| Op::Alloc(s, e, p, o)),
        1 => span().prop_map(|(s, e)| Op::AllocSpecial(s, e)),
        1 => span().prop_map(|(s, e)| Op::Free(s, e)),
        1 => (span(), prot()).prop_map(|((s, e), p)| Op::Protect(s, e, p)),
        1 => span().prop_map(|(s, e)| Op::Invalidate(s, e)),
        2 => (span(), any::<bool>()).prop_map(|((s, e), w)| Op::CpuFault(s, e, w)),
        2 => (span(), 0..MIRRORS, any::<u32>()).prop_map(|((s, e), m, k)| Op::ToDevice(s, e, m, k)),
        1 => span().prop_map(|(s, e)| Op::ToHost(s, e)),
        2 => (span(), 0..MIRRORS).prop_map(|((s, e), m)| Op::Snapshot(s, e, m)),
        2 => (span(), 0..MIRRORS, any::<bool>()).prop_map(|((s, e), m, w)| Op::Fault(s, e, m, w)),
    ]
}

fn run_ops(ops: &[Op]) -> Result<(), TestCaseError> {
    let space = AddressSpace::new(PAGES);
    let mirrors: Vec<_> = (0..MIRRORS)
        .map(|_| space.mirror_register(space.range(), TestOps::default(), PageTable::new(PAGES)).expect("register"))
        .collect();
    let idx = |id: MirrorId| mirrors.iter().position(|m| m.id() == id).expect("known");
    let mut model = Model::default();
    // Most of the space starts allocated, so that faults mostly succeed.
    let first = Op::Alloc(0, 1024, Prot::ReadWrite, ChunkOrder::Chunk2M);
    for op in core::iter::once(&first).chain(ops) {
        match *op {
            Op::Alloc(s, e, prot, order) => {
                let res = space.alloc(r(s, e), AllocDescriptor { prot, max_order: order });
                if (s..e).any(|p| model.pages.contains_key(&p)) {
                    prop_assert!(matches!(res, Err(SpaceError::Overlap(_))));
                } else {
                    prop_assert_eq!(res, Ok(()));
                    (s..e).for_each(|p| {
                        model.pages.insert(p, M::Empty(prot));
                    });
                    model.allocs.insert(s, (e, order));
                }
            }
            Op::AllocSpecial(s, e) => {
                let res = space.alloc_special(r(s, e));
                if (s..e).any(|p| model.pages.contains_key(&p)) {
                    prop_assert!(res.is_err());
                } else {
                    prop_assert_eq!(res, Ok(()));
                    (s..e).for_each(|p| {
                        model.pages.insert(p, M::Special);
                    });
                    model.allocs.insert(s, (e, ChunkOrder::Page));
                }
            }
            Op::Free(s, e) => {
                space.free(r(s, e), true).expect("free");
                (s..e).for_each(|p| {
                    model.pages.remove(&p);
                });
                let hit: Vec<_> = model.allocs.range(..e).filter(|(_, a)| a.0 > s).map(|(k, a)| (*k, *a)).collect();
                for (k, a) in hit {
                    model.allocs.remove(&k);
                    if k < s {
                        model.allocs.insert(k, (s, a.1));
                    }
                    if a.0 > e {
                        model.allocs.insert(e, a);
                    }
                }
            }
            Op::Protect(s, e, prot) => {
                space.protect(r(s, e), prot, true).expect("protect");
                for p in s..e {
                    if let Some(m) = model.pages.get_mut(&p) {
                        *m = match *m {
                            M::Empty(_) => M::Empty(prot),
                            M::Host(_, w) => M::Host(prot, w && prot.writable()),
                            M::Device(_, o, f) => M::Device(prot, o, f),
                            M::Special => M::Special,
                        };
                    }
                }
            }
            Op::Invalidate(s, e) => space.invalidate(r(s, e), InvalidateEvent::Clear, true).expect("inv"),
            Op::CpuFault(s, e, write) => {
                let res = space.cpu_fault(r(s, e), write, true);
                match (s..e).find_map(|p| model.fault_reason(p, write).map(|why| (p, why))) {
                    Some((p, reason)) => prop_assert_eq!(res, Err(SpaceError::Fault { page: PageIndex(p), reason })),
                    None => {
                        prop_assert_eq!(res, Ok(()));
                        for p in s..e {
                            if let M::Device(prot, ..) = model.pages[&p] {
                                model.pages.insert(p, M::Host(prot, prot.writable()));
                            }
                        }
                        for p in s..e {
                            match model.pages[&p] {
                                M::Empty(_) => model.populate(p, write),
                                M::Host(prot, false) if write => {
                                    // The whole chunk is upgraded: find it in the space.
                                    let (_, order) = space.page(PageIndex(p)).expect("in space");
                                    for q in order.chunk_of(PageIndex(p)).iter() {
                                        model.pages.insert(q.0, M::Host(prot, true));
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            Op::ToDevice(s, e, m, k) => {
                let target = mirrors[m].id();
                let mig = space.migrate_begin(r(s, e), MigrateTarget::Device(target), true).expect("begin");
                let base = model.next_frame;
                let mut moved = Vec::new();
                mig.finalize(|p, src| {
                    let selected = match model.pages.get(&p.0) {
                        Some(M::Empty(prot) | M::Host(prot, _)) => prot.readable(),
                        Some(M::Device(prot, o, _)) => prot.readable() && *o != m,
                        _ => false,
                    };
                    assert!(selected, "page {p:?} in state {src:?} was collected");
                    // Restore a few pages, derived from k, to exercise lost races.
                    if (p.0 ^ k) % 7 == 0 {
                        MigrateOutcome::Restore
                    } else {
                        moved.push(p.0);
                        MigrateOutcome::Device(frame(base + p.0))
                    }
                })
                .expect("finalize");
                model.next_frame += PAGES;
                for p in moved {
                    let prot = model.pages[&p].prot().expect("allocated");
                    model.pages.insert(p, M::Device(prot, m, base + p));
                }
            }
            Op::ToHost(s, e) => {
                let mig = space.migrate_begin(r(s, e), MigrateTarget::Host, true).expect("begin");
                let mut moved = Vec::new();
                mig.finalize(|p, _| {
                    moved.push(p.0);
                    MigrateOutcome::Host
                })
                .expect("finalize");
                let expected: Vec<u32> = (s..e)
                    .filter(|p| matches!(model.pages.get(p), Some(M::Device(prot, ..)) if prot.readable()))
                    .collect();
                prop_assert_eq!(&moved, &expected);
                for p in moved {
                    let prot = model.pages[&p].prot().expect("allocated");
                    model.pages.insert(p, M::Host(prot, prot.writable()));
                }
            }
            Op::Snapshot(s, e, m) => {
                let got = snapshot(&space, mirrors[m].id(), r(s, e));
                for (i, g) in got.into_iter().enumerate() {
                    prop_assert_eq!(strip_order(g), model.expect(s + i as u32, m), "page {}", s + i as u32);
                }
            }
            Op::Fault(s, e, m, write) => {
                // range_fault upgrades whole chunks in its first walk, before a
                // take-back may split them: the model needs the orders from before.
                let orders: Vec<ChunkOrder> = (s..e).map(|p| space.page(PageIndex(p)).expect("in space").1).collect();
                let res = fault_commit(&space, &mirrors[m], r(s, e), write);
                let fail = (s..e).find_map(|p| model.fault_reason(p, write).map(|why| (p, why)));
                // Pages before a failure are populated/upgraded; take-backs happen only on success.
                let upto = fail.map_or(e, |(p, _)| p);
                for p in s..upto {
                    match model.pages[&p] {
                        M::Empty(_) => model.populate(p, write),
                        M::Host(prot, false) if write => {
                            let order = orders[(p - s) as usize];
                            for q in order.chunk_of(PageIndex(p)).iter() {
                                model.pages.insert(q.0, M::Host(prot, true));
                            }
                        }
                        _ => {}
                    }
                }
                match fail {
                    Some((p, reason)) => prop_assert_eq!(res, Err(RangeError::Fault { page: PageIndex(p), reason })),
                    None => {
                        prop_assert_eq!(res, Ok(()));
                        for p in s..e {
                            if let M::Device(prot, o, _) = model.pages[&p] {
                                if o != m {
                                    model.pages.insert(p, M::Host(prot, prot.writable()));
                                }
                            }
                        }
                    }
                }
            }
        }
        space.check_invariants().map_err(TestCaseError::fail)?;
        // Whole-space agreement with the model.
        for p in 0..PAGES {
            let (state, _) = space.page(PageIndex(p)).expect("in space");
            let want = match model.pages.get(&p) {
                None => PageState::Unallocated,
                Some(M::Special) => PageState::Special,
                Some(M::Empty(prot)) => PageState::Empty { prot: *prot },
                Some(M::Host(prot, w)) => PageState::Host { prot: *prot, writable: *w },
                Some(M::Device(prot, o, f)) => {
                    PageState::Device { prot: *prot, owner: mirrors[*o].id(), frame: frame(*f) }
                }
            };
            prop_assert_eq!(state, want, "page {} after {:?}", p, op);
        }
        // Coherence: a mirror maps a page only while it holds it.
        for (i, m) in mirrors.iter().enumerate() {
            let table = m.update_lock();
            for p in 0..PAGES {
                let pte = table.get(PageIndex(p));
                if pte.is_valid() {
                    let ok = matches!(space.page(PageIndex(p)), Some((PageState::Device { owner, frame, prot }, _))
                        if idx(owner) == i && Some(frame) == pte.frame() && pte.is_writable() == prot.writable());
                    prop_assert!(ok, "mirror {} maps page {} stale: {:?}", i, p, pte);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn protocol_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run_ops(&ops)?;
    }
}
