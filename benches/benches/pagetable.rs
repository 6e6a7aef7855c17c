//! svm-pagetable: PTE updates per second, snapshot pages per second, and
//! upload bytes per launch as a function of pages changed.
//!
//! Run: `cargo bench -p svm-benches --bench root -- pagetable`.
//! Targets (issue 3): >= 10 M PTE updates/s and >= 20 M snapshot pages/s on
//! one core; upload bytes proportional to the leaves changed, not to the
//! arena.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use svm_pagetable::{
    AddressSpace, AllocDescriptor, ChunkOrder, Encoding, FrameIndex, MirrorOps, PageIndex, PageRange, PageTable, Prot,
    Pte, RangeRequest, Update, LEAF_PTES,
};

/// A mirror that zaps its table, as a driver would.
struct BenchOps;

impl MirrorOps for BenchOps {
    type Table = PageTable;
    fn invalidate(&self, table: &mut PageTable, update: &Update) -> Result<(), svm_pagetable::Again> {
        table.zap(update.range);
        Ok(())
    }
}

const ARENA: u32 = 1 << 18; // 1 GiB of 4 KiB pages
const BATCH: u32 = 1 << 16;

fn pte_updates(c: &mut Criterion) {
    let mut g = c.benchmark_group("pagetable/pte_updates");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    let mut table = PageTable::new(ARENA);
    let mut round = 0u32;
    g.bench_function("set", |b| {
        b.iter(|| {
            round = round.wrapping_add(1);
            let f = FrameIndex::new(round & 0xffff).unwrap_or(FrameIndex::new(0).expect("0 fits"));
            for p in 0..BATCH {
                // Scattered over the arena so that many leaves are touched.
                let page = PageIndex(p.wrapping_mul(2_654_435_761) % ARENA);
                table.set(page, Pte::resident(f, p & 1 == 0));
            }
            black_box(table.dirty_leaves())
        });
    });
    let enc = Encoding::DEFAULT;
    let pfns: Vec<u64> = (0..BATCH).map(|i| enc.valid | enc.device_private | enc.write | u64::from(i)).collect();
    let range = PageRange::from_range(0..BATCH).expect("ordered");
    g.bench_function("commit_snapshot", |b| {
        b.iter(|| {
            table.zap(range);
            table.commit_snapshot(range, black_box(&pfns), &enc);
        });
    });
    g.finish();
}

fn snapshots(c: &mut Criterion) {
    let mut g = c.benchmark_group("pagetable/snapshot");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    for order in [ChunkOrder::Page, ChunkOrder::Chunk2M] {
        let space = AddressSpace::new(ARENA);
        let mirror = space.mirror_register(space.range(), BenchOps, PageTable::new(ARENA)).expect("register");
        space.alloc(space.range(), AllocDescriptor { prot: Prot::ReadWrite, max_order: order }).expect("alloc");
        space.cpu_fault(space.range(), true, true).expect("populate");
        let range = PageRange::from_range(0..BATCH).expect("ordered");
        let mut pfns = vec![0u64; BATCH as usize];
        g.bench_with_input(BenchmarkId::new("range_snapshot", format!("{order:?}")), &order, |b, _| {
            b.iter(|| {
                let mut req = RangeRequest::new(mirror.id(), range, &mut pfns);
                space.range_snapshot(&mut req, true).expect("snapshot");
                black_box(pfns[BATCH as usize - 1])
            });
        });
        let enc = Encoding::DEFAULT;
        let notifier = mirror.notifier_insert(range);
        g.bench_with_input(BenchmarkId::new("fault_and_commit", format!("{order:?}")), &order, |b, _| {
            b.iter(|| {
                let seq = notifier.read_begin();
                let mut req = RangeRequest::new(mirror.id(), range, &mut pfns).with_request(enc.valid, 0);
                space.range_fault(&mut req, true).expect("fault");
                let mut table = mirror.update_lock();
                assert!(!table.read_retry(&notifier, seq));
                table.commit_snapshot(range, &pfns, &enc);
            });
        });
    }
    g.finish();
}

fn upload_bytes(c: &mut Criterion) {
    let mut g = c.benchmark_group("pagetable/upload");
    println!("upload bytes per launch (pagetable::drain_dirty), LEAF_PTES = {LEAF_PTES}:");
    println!("{:>10} {:>10} {:>12} {:>14} {:>12}", "arena", "changed", "layout", "bytes", "bytes/change");
    for arena in [1u32 << 16, 1 << 20] {
        for changed in [1u32, 16, 256, 4096, 65536] {
            for (layout, stride) in [("contiguous", 1u32), ("scattered", 4099)] {
                // A clean table per row, so that only this row's changes count.
                let mut table = PageTable::new(arena);
                table.drain_dirty(|_| {});
                let pages: Vec<u32> = (0..changed).map(|i| i.wrapping_mul(stride) % arena).collect();
                let mut round = 0u32;
                let mut touch = |t: &mut PageTable| {
                    // A new frame each round: every set is a real change.
                    round = (round + 1) % Pte::MAX_FRAMES;
                    let f = FrameIndex::new(round).expect("fits");
                    for &p in &pages {
                        t.set(PageIndex(p), Pte::resident(f, true));
                    }
                };
                touch(&mut table);
                let bytes = table.drain_dirty(|b| {
                    black_box(b.entries.len());
                });
                println!(
                    "{arena:>10} {changed:>10} {layout:>12} {bytes:>14} {:>12.1}",
                    bytes as f64 / f64::from(changed)
                );
                if arena == 1 << 20 {
                    g.throughput(Throughput::Bytes(bytes));
                    g.bench_with_input(BenchmarkId::new(layout, changed), &changed, |b, _| {
                        b.iter(|| {
                            touch(&mut table);
                            table.drain_dirty(|b| {
                                black_box(b.entries.len());
                            })
                        });
                    });
                }
            }
        }
    }
    g.finish();
}

pub fn benches(c: &mut Criterion) {
    pte_updates(c);
    snapshots(c);
    upload_bytes(c);
}
