//! The two-device (`hmm2`) scenarios on `svm_pagetable`'s protocol, with the
//! data-carrying fake device of `dmirror.rs`. No GPU needed.

use svm_pagetable::{
    AllocDescriptor, ChunkOrder, FrameIndex, InvalidateEvent, PageIndex, PageState, Prot, SnapshotEntry,
};

use crate::dmirror::{cpu_read, cpu_write, new_space, pattern, r, Dev, W};

fn pages_alloc(prot: Prot) -> AllocDescriptor {
    AllocDescriptor { prot, max_order: ChunkOrder::Page }
}

/// hmm2.snapshot: one page of each class, seen from both devices.
#[test]
fn snapshot_two_mirrors() {
    let (space, host) = new_space(7);
    let d0 = Dev::new(&space, &host);
    let d1 = Dev::new(&space, &host);
    let all = [&d0, &d1];
    // Page 0 stays unallocated (the kernel's PROT_NONE hole).
    space.alloc(r(1, 7), pages_alloc(Prot::ReadWrite)).expect("alloc");
    // 1: never touched. 2: read (the zero page). 3: written. 4: written, then read-only.
    space.cpu_fault(r(2, 3), false, true).expect("read");
    cpu_write(&space, &host, r(3, 5), &[pattern(3, 0), pattern(4, 0)]).expect("write");
    space.protect(r(4, 5), Prot::Read, true).expect("protect");
    // 5: device 0's memory. 6: device 1's.
    assert_eq!(d0.migrate_to(r(5, 6), &all).expect("d0"), 1);
    assert_eq!(d1.migrate_to(r(6, 7), &all).expect("d1"), 1);

    let host_entry = |p: u32, write: bool| SnapshotEntry::Host { page: PageIndex(p), write, order: ChunkOrder::Page };
    let own =
        |f: u32| SnapshotEntry::Device { frame: FrameIndex::new(f).expect("f"), write: true, order: ChunkOrder::Page };
    assert_eq!(
        d0.snapshot(r(0, 7)),
        vec![
            SnapshotEntry::Error,
            SnapshotEntry::NotPresent,
            host_entry(2, false),
            host_entry(3, true),
            host_entry(4, false),
            own(0),
            SnapshotEntry::OtherDevice,
        ]
    );
    let s1 = d1.snapshot(r(0, 7));
    assert_eq!((s1[5], s1[6]), (SnapshotEntry::OtherDevice, own(0)));
    // A snapshot faults nothing: device pages stayed where they were.
    assert!(matches!(space.page(PageIndex(5)), Some((PageState::Device { owner, .. }, _)) if owner == d0.id()));
    assert!(matches!(space.page(PageIndex(1)), Some((PageState::Empty { .. }, _))));
}

/// hmm2.double_map: both devices read the same (read-only) memory; one
/// migrates it; the other still reads the right data.
#[test]
fn double_map_two_mirrors() {
    let n = 6;
    let (space, host) = new_space(n);
    let d0 = Dev::new(&space, &host);
    let d1 = Dev::new(&space, &host);
    let all = [&d0, &d1];
    space.alloc(r(0, n), pages_alloc(Prot::ReadWrite)).expect("alloc");
    let data: Vec<_> = (0..n).map(|p| pattern(p, 1)).collect();
    cpu_write(&space, &host, r(0, n), &data).expect("init");
    space.protect(r(0, n), Prot::Read, true).expect("read-only");
    assert_eq!(d0.read(r(0, n)).expect("d0 read"), data);
    assert_eq!(d1.read(r(0, n)).expect("d1 read"), data);
    // Device 1 takes the pages; device 0 is told (Migrate with d1 as owner).
    assert_eq!(d1.migrate_to(r(0, n), &all).expect("migrate"), n as usize);
    assert!(d0
        .mirror
        .ops()
        .log
        .lock()
        .expect("log")
        .iter()
        .any(|u| u.event == InvalidateEvent::Migrate { owner: d1.id() } && u.range == r(0, n)));
    // Device 0 reads again: device 1 copies them back, the data is right.
    assert_eq!(d0.read(r(0, n)).expect("d0 read after migration"), data);
    assert_eq!(d1.mirror.ops().copied_back.lock().expect("copied").len(), n as usize);
    assert!((0..n).all(|p| matches!(space.page(PageIndex(p)), Some((PageState::Host { .. }, _)))));
    // Writes are refused on a read-only range.
    let e = d0.write(r(0, 1), &[[0; W]]).expect_err("read-only");
    assert!(
        matches!(e, svm_pagetable::RangeError::Fault { reason: svm_pagetable::FaultReason::ReadOnly, .. }),
        "{e:?}"
    );
    assert_eq!(cpu_read(&space, &host, r(0, n)).expect("cpu"), data);
}

/// hmm2.migrate_mixed: PROT_NONE pages and holes are skipped (the kernel
/// returns EINVAL for the whole call; this protocol migrates partially), and
/// a page on another device moves device to device (the kernel returns
/// ENOENT: `migrate_vma` cannot collect another device's private pages).
#[test]
fn migrate_mixed_two_mirrors() {
    let (space, host) = new_space(6);
    let d0 = Dev::new(&space, &host);
    let d1 = Dev::new(&space, &host);
    let all = [&d0, &d1];
    space.alloc(r(0, 6), pages_alloc(Prot::None)).expect("alloc");
    assert_eq!(d1.migrate_to(r(0, 6), &all).expect("none"), 0, "no-access pages are not collected");
    space.free(r(1, 2), true).expect("hole");
    assert_eq!(d1.migrate_to(r(0, 3), &all).expect("hole"), 0);
    // 2: read-only zero page. 3: read-only with data. 4, 5: read-write with data.
    space.protect(r(2, 3), Prot::Read, true).expect("p2");
    space.cpu_fault(r(2, 3), false, true).expect("read p2");
    space.protect(r(3, 6), Prot::ReadWrite, true).expect("p3..6");
    cpu_write(&space, &host, r(3, 6), &[pattern(3, 2), pattern(4, 2), pattern(5, 2)]).expect("write");
    space.protect(r(3, 4), Prot::Read, true).expect("p3 ro");
    let want = vec![[0; W], pattern(3, 2), pattern(4, 2), pattern(5, 2)];
    assert_eq!(d1.migrate_to(r(2, 6), &all).expect("mixed"), 4);
    assert_eq!(d1.read(r(2, 6)).expect("d1 read"), want);
    // Page 5 is device 1's: device 0 takes it over, with its data.
    assert_eq!(d0.migrate_to(r(5, 6), &all).expect("d1 -> d0"), 1);
    assert!(matches!(space.page(PageIndex(5)), Some((PageState::Device { owner, .. }, _)) if owner == d0.id()));
    assert_eq!(d0.read(r(5, 6)).expect("d0 read"), vec![pattern(5, 2)]);
    assert!(!d1.mirror.update_lock().get(PageIndex(5)).is_valid(), "device 1's mapping was zapped");
    // Page 0 is still no-access and untouched; the CPU reads the rest right.
    assert_eq!(space.page(PageIndex(0)).map(|p| p.0), Some(PageState::Empty { prot: Prot::None }));
    assert_eq!(cpu_read(&space, &host, r(2, 6)).expect("cpu"), want);
}
