//! The host side of the protocol: one managed address space (the seed's
//! `struct hmm`, standing for the `mm_struct`), its per-page state, its
//! allocation ranges and its mirrors.
//!
//! Every change of host state goes through `AddressSpace::change`, which
//! runs the invalidation protocol around it:
//!
//! ```text
//! lock state                                    (rank 1; try_lock when !blockable -> Again)
//!   split large entries straddling the range
//!   read-lock mirrors                           (rank 2)
//!     for each mirror overlapping the range:
//!       lock its update lock                    (rank 3; try_lock when !blockable -> Again)
//!         bump its overlapping notifiers to odd (rank 4 for the list)
//!         ops.invalidate(table, update)         device zaps and waits
//!       unlock update
//!   apply the change to the page states         (skipped on Again)
//!   bump the notifiers back to even, wake read_begin waiters
//! unlock state
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use crate::error::{Again, FaultReason, Result, SpaceError};
use crate::loom::{AtomicU32, Condvar, Mutex, MutexGuard, Ordering, RwLock};
use crate::mirror::{InvalidateEvent, Mirror, MirrorEntry, MirrorId, MirrorOps, NotifierShared, Update};
use crate::pte::{FrameIndex, PageIndex};
use crate::range::{ChunkOrder, PageRange};

/// Access the host side allows on an allocation (the VMA's `VM_READ` /
/// `VM_WRITE`). Write without read is not representable: like the seed
/// ("architectures that allow write without read access are not supported"),
/// a page that can be written can be read.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Prot {
    /// No access (`PROT_NONE`): snapshots report ERROR, faults fail.
    None,
    /// Read only.
    Read,
    /// Read and write.
    #[default]
    ReadWrite,
}

impl Prot {
    /// May the page be read?
    pub fn readable(self) -> bool {
        self != Prot::None
    }
    /// May the page be written?
    pub fn writable(self) -> bool {
        self == Prot::ReadWrite
    }
}

/// Identity of one migration (see [`Migration`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MigrationId(u32);

/// State of one page on the host side (what the CPU page table and the
/// `struct page` say, in the kernel).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum PageState {
    /// Not part of any allocation: never allocated, or freed.
    #[default]
    Unallocated,
    /// Allocated, never touched: no backing page yet (`pte_none`).
    Empty {
        /// Allocation rights.
        prot: Prot,
    },
    /// Resident in host memory (a present CPU PTE).
    Host {
        /// Allocation rights.
        prot: Prot,
        /// Is the CPU mapping writable? Read faults map read-only (the zero
        /// page, in the kernel); write faults make it writable.
        writable: bool,
    },
    /// Resident in the device pool of `owner` (a device-private entry); the
    /// CPU cannot touch it until it is migrated back.
    Device {
        /// Allocation rights (the device may write iff `prot` allows).
        prot: Prot,
        /// The mirror whose pool holds it.
        owner: MirrorId,
        /// Where in that pool.
        frame: FrameIndex,
    },
    /// In flight between host and a device (a migration entry): snapshots
    /// report NONE, faults wait for the migration to end.
    Migrating {
        /// Allocation rights.
        prot: Prot,
        /// The migration that holds it.
        id: MigrationId,
    },
    /// Special memory (imported, fixed, `VM_PFNMAP` in the kernel) that the
    /// protocol cannot mirror: snapshots report SPECIAL.
    Special,
}

impl PageState {
    /// Allocation rights, for allocated non-special pages.
    pub fn prot(self) -> Option<Prot> {
        match self {
            PageState::Empty { prot }
            | PageState::Host { prot, .. }
            | PageState::Device { prot, .. }
            | PageState::Migrating { prot, .. } => Some(prot),
            PageState::Unallocated | PageState::Special => None,
        }
    }

    fn with_prot(self, new: Prot) -> Self {
        match self {
            PageState::Empty { .. } => PageState::Empty { prot: new },
            PageState::Host { writable, .. } => PageState::Host { prot: new, writable: writable && new.writable() },
            PageState::Device { owner, frame, .. } => PageState::Device { prot: new, owner, frame },
            PageState::Migrating { id, .. } => PageState::Migrating { prot: new, id },
            s @ (PageState::Unallocated | PageState::Special) => s,
        }
    }
}

/// One page: its state and the large entry it belongs to.
///
/// Invariant (checked by `HostState::check`): a page with `order > Page` is
/// part of the aligned chunk of that order, every page of which has the same
/// order and the same state up to its frame, frames consecutive; only `Host`
/// and `Device` pages form chunks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Page {
    pub(crate) state: PageState,
    pub(crate) order: ChunkOrder,
}

/// How to allocate a range (the VMA's flags).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct AllocDescriptor {
    /// Access rights.
    pub prot: Prot,
    /// Largest chunk a fault may populate at once (the THP setting of the
    /// VMA). Policy belongs to the caller; `Page` disables large entries.
    pub max_order: ChunkOrder,
}

impl Default for AllocDescriptor {
    fn default() -> Self {
        Self { prot: Prot::ReadWrite, max_order: ChunkOrder::Chunk2M }
    }
}

#[derive(Copy, Clone, Debug)]
struct Alloc {
    end: u32,
    max_order: ChunkOrder,
}

/// Everything behind the state lock.
pub(crate) struct HostState {
    pub(crate) pages: Vec<Page>,
    /// start -> allocation (the VMA tree).
    allocs: BTreeMap<u32, Alloc>,
    next_migration: u32,
    pub(crate) released: bool,
}

impl HostState {
    fn alloc_of(&self, page: u32) -> Option<(u32, Alloc)> {
        self.allocs.range(..=page).next_back().filter(|(_, a)| a.end > page).map(|(s, a)| (*s, *a))
    }

    /// Split any large entry that straddles a boundary of `range`, so that
    /// changing `range` leaves every remaining chunk uniform.
    fn split_boundaries(&mut self, range: PageRange) {
        if range.is_empty() {
            return;
        }
        for edge in [range.start().0, range.end().0 - 1] {
            let order = self.pages[edge as usize].order;
            if order != ChunkOrder::Page {
                let chunk = order.chunk_of(PageIndex(edge));
                if !range.covers(chunk) {
                    self.split(chunk);
                }
            }
        }
    }

    fn split(&mut self, chunk: PageRange) {
        for p in &mut self.pages[chunk.start().0 as usize..chunk.end().0 as usize] {
            p.order = ChunkOrder::Page;
        }
    }

    /// Populate the Empty page `page` for a fault: the largest chunk the
    /// allocation allows whose pages are all Empty, else the page alone.
    pub(crate) fn populate(&mut self, page: u32, writable: bool) {
        let Some((astart, alloc)) = self.alloc_of(page) else {
            return;
        };
        let PageState::Empty { prot } = self.pages[page as usize].state else {
            return;
        };
        let writable = writable && prot.writable();
        for order in ChunkOrder::LARGEST_FIRST {
            if order > alloc.max_order {
                continue;
            }
            let chunk = order.chunk_of(PageIndex(page));
            if chunk.start().0 < astart || chunk.end().0 > alloc.end {
                continue;
            }
            let span = &mut self.pages[chunk.start().0 as usize..chunk.end().0 as usize];
            if span.iter().all(|p| p.state == PageState::Empty { prot }) {
                for p in span {
                    *p = Page { state: PageState::Host { prot, writable }, order };
                }
                return;
            }
        }
    }

    /// Make the Host page `page` (and its chunk) writable; the caller checked
    /// the allocation allows it.
    pub(crate) fn upgrade_write(&mut self, page: u32) {
        let chunk = self.pages[page as usize].order.chunk_of(PageIndex(page));
        for p in &mut self.pages[chunk.start().0 as usize..chunk.end().0 as usize] {
            if let PageState::Host { prot, .. } = p.state {
                p.state = PageState::Host { prot, writable: true };
            }
        }
    }

    /// Check the chunk invariant of [`Page`]; returns the first violation.
    pub(crate) fn check(&self) -> core::result::Result<(), String> {
        let mut p = 0usize;
        while p < self.pages.len() {
            let page = self.pages[p];
            let n = page.order.pages() as usize;
            if n == 1 {
                p += 1;
                continue;
            }
            if p & (n - 1) != 0 || p + n > self.pages.len() {
                return Err(format!("page {p}: misaligned chunk of order {:?}", page.order));
            }
            for (i, q) in (0u32..).zip(&self.pages[p..p + n]) {
                let same = match (page.state, q.state) {
                    (PageState::Host { .. }, PageState::Host { .. }) => page.state == q.state,
                    (
                        PageState::Device { prot, owner, frame },
                        PageState::Device { prot: p2, owner: o2, frame: f2 },
                    ) => prot == p2 && owner == o2 && f2.get() == frame.get() + i,
                    _ => false,
                };
                if !same || q.order != page.order {
                    return Err(format!("page {}: breaks the chunk at {p}: {q:?} vs {page:?}", p + i as usize));
                }
            }
            p += n;
        }
        Ok(())
    }
}

struct MirrorList {
    released: bool,
    list: Vec<Arc<dyn MirrorEntry>>,
}

/// Where a [`Migration`] moves pages.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MigrateTarget {
    /// Back to host memory: collects `Device` pages (the CPU taking them back;
    /// invalidation event [`InvalidateEvent::CpuAccess`]).
    Host,
    /// Into the device pool of a mirror: collects `Empty`, `Host` and other
    /// mirrors' `Device` pages (event [`InvalidateEvent::Migrate`]).
    Device(MirrorId),
}

/// What became of one migrated page (see [`Migration::finalize`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum MigrateOutcome {
    /// Not migrated: put back the source state (a lost race, no memory).
    Restore,
    /// Now in host memory.
    Host,
    /// Now at `frame` in the target mirror's pool.
    Device(FrameIndex),
}

/// An in-flight migration (the kernel's `migrate_vma`): its pages are
/// invalidated in every mirror and held as migration entries
/// ([`PageState::Migrating`]) until [`Migration::finalize`]. Copying is the
/// caller's job; this is mechanism only.
///
/// Dropping it without finalizing restores every page.
#[derive(Debug)]
pub struct Migration {
    id: MigrationId,
    target: MigrateTarget,
    space: Weak<AddressSpace>,
    /// Collected pages, in page order, with their source state and order.
    pages: Vec<(PageIndex, PageState, ChunkOrder)>,
}

impl Migration {
    /// The target.
    pub fn target(&self) -> MigrateTarget {
        self.target
    }
    /// The collected pages with their source states, in page order. Pages of
    /// the range not listed were skipped (not allocated, already at the
    /// target, in another migration, special, or no access).
    pub fn pages(&self) -> impl ExactSizeIterator<Item = (PageIndex, PageState)> + '_ {
        self.pages.iter().map(|(p, s, _)| (*p, *s))
    }
    /// Number of collected pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }
    /// True when nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// End the migration: `outcome` says, for each collected page and its
    /// source state, where it now is. Pages changed meanwhile (freed) are
    /// skipped. Large entries survive when a whole chunk moved uniformly.
    ///
    /// # Errors
    /// [`SpaceError::BadOutcome`] for a `Device` outcome of a migration to the
    /// host (every page is then restored); [`SpaceError::Released`].
    pub fn finalize(mut self, mut outcome: impl FnMut(PageIndex, PageState) -> MigrateOutcome) -> Result<()> {
        let outcomes: Vec<MigrateOutcome> = self.pages.iter().map(|(p, s, _)| outcome(*p, *s)).collect();
        let owner = match self.target {
            MigrateTarget::Device(m) => Some(m),
            MigrateTarget::Host => None,
        };
        if let Some(i) = outcomes.iter().position(|o| matches!(o, MigrateOutcome::Device(_)) && owner.is_none()) {
            return Err(SpaceError::BadOutcome(self.pages[i].0));
        }
        let Some(space) = self.space.upgrade() else {
            return Err(SpaceError::Released);
        };
        let pages = core::mem::take(&mut self.pages);
        space.migration_end(self.id, &pages, |i, prot| match (outcomes[i], owner) {
            (MigrateOutcome::Restore, _) => None,
            (MigrateOutcome::Host, _) => Some(PageState::Host { prot, writable: prot.writable() }),
            (MigrateOutcome::Device(frame), Some(owner)) => Some(PageState::Device { prot, owner, frame }),
            (MigrateOutcome::Device(_), None) => None,
        });
        Ok(())
    }
}

impl Drop for Migration {
    fn drop(&mut self) {
        if !self.pages.is_empty() {
            if let Some(space) = self.space.upgrade() {
                let pages = core::mem::take(&mut self.pages);
                space.migration_end(self.id, &pages, |_, _| None);
            }
        }
    }
}

/// One managed address space and its mirrors (the seed's `struct hmm`).
///
/// See the [crate docs](crate) for the protocol and the lock order.
pub struct AddressSpace {
    pages: u32,
    /// Rank 1: page states, allocations (the `mmap_lock` and page-table
    /// locks of the kernel, in one).
    state: Mutex<HostState>,
    /// Signalled, with `state`, when a migration ends.
    migrated: Condvar,
    /// Rank 2: the mirrors (the seed's `mirrors_sem`).
    mirrors: RwLock<MirrorList>,
    next_mirror: AtomicU32,
}

impl core::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AddressSpace").field("pages", &self.pages).finish_non_exhaustive()
    }
}

impl AddressSpace {
    /// A space of `pages` pages, all [`PageState::Unallocated`].
    pub fn new(pages: u32) -> Arc<Self> {
        Arc::new(Self {
            pages,
            state: Mutex::new(HostState {
                pages: vec![Page::default(); pages as usize],
                allocs: BTreeMap::new(),
                next_migration: 0,
                released: false,
            }),
            migrated: Condvar::new(),
            mirrors: RwLock::new(MirrorList { released: false, list: Vec::new() }),
            next_mirror: AtomicU32::new(0),
        })
    }

    /// Number of pages.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// All pages, `0..pages`.
    pub fn range(&self) -> PageRange {
        PageRange::with_len(PageIndex(0), self.pages).unwrap_or_default()
    }

    pub(crate) fn check_range(&self, range: PageRange) -> Result<()> {
        if range.end().0 > self.pages {
            return Err(SpaceError::OutOfRange { range, pages: self.pages });
        }
        Ok(())
    }

    pub(crate) fn lock_state(&self, blockable: bool) -> Option<MutexGuard<'_, HostState>> {
        if blockable {
            Some(self.state.lock())
        } else {
            self.state.try_lock()
        }
    }

    pub(crate) fn wait_migration<'a>(&self, g: MutexGuard<'a, HostState>) -> MutexGuard<'a, HostState> {
        self.migrated.wait(g)
    }

    /// Wait until no invalidation is in progress (odd notifier counts exist
    /// only while the invalidating thread holds the state lock).
    pub(crate) fn wait_for_invalidation(&self) {
        drop(self.state.lock());
    }

    /// State and large-entry order of `page`, or `None` outside the space.
    pub fn page(&self, page: PageIndex) -> Option<(PageState, ChunkOrder)> {
        let st = self.state.lock();
        st.pages.get(page.0 as usize).map(|p| (p.state, p.order))
    }

    /// Has [`Self::release`] run?
    pub fn is_released(&self) -> bool {
        self.state.lock().released
    }

    /// Number of registered mirrors.
    pub fn mirror_count(&self) -> usize {
        self.mirrors.read().list.len()
    }

    /// Check the large-entry invariants (for tests and debugging).
    ///
    /// # Errors
    /// A description of the first broken invariant.
    pub fn check_invariants(&self) -> core::result::Result<(), String> {
        self.state.lock().check()
    }

    // ---------------------------------------------------------------- mirrors

    /// Register a device as a mirror of `range` (the seed's
    /// `hmm_mirror_register`). `table` is the device-side state its update
    /// lock guards. From now on, every invalidation overlapping `range` calls
    /// `ops.invalidate` under that lock.
    ///
    /// # Errors
    /// [`SpaceError::OutOfRange`], [`SpaceError::Released`].
    pub fn mirror_register<O: MirrorOps>(
        self: &Arc<Self>,
        range: PageRange,
        ops: O,
        table: O::Table,
    ) -> Result<Arc<Mirror<O>>> {
        self.check_range(range)?;
        let id = MirrorId(self.next_mirror.fetch_add(1, Ordering::Relaxed));
        let mirror = Arc::new(Mirror::new(id, range, Arc::downgrade(self), ops, table));
        let mut list = self.mirrors.write();
        if list.released {
            return Err(SpaceError::Released);
        }
        list.list.push(mirror.clone());
        Ok(mirror)
    }

    /// Stop mirroring (the seed's `hmm_mirror_unregister`). When it returns,
    /// no callback of the mirror is running or will run. The mirror's
    /// device-private pages must have been migrated back first. Must not be
    /// called from the mirror's own callbacks.
    ///
    /// # Errors
    /// [`SpaceError::OwnsPages`], [`SpaceError::NotRegistered`].
    pub fn mirror_unregister<O: MirrorOps>(&self, mirror: &Mirror<O>) -> Result<()> {
        let st = self.state.lock();
        let owned = st
            .pages
            .iter()
            .filter(|p| matches!(p.state, PageState::Device { owner, .. } if owner == mirror.id()))
            .count();
        if owned > 0 {
            return Err(SpaceError::OwnsPages { mirror: mirror.id(), pages: u32::try_from(owned).unwrap_or(u32::MAX) });
        }
        let mut list = self.mirrors.write();
        let before = list.list.len();
        list.list.retain(|m| m.id() != mirror.id());
        let removed = list.list.len() != before;
        drop(list);
        drop(st);
        if removed {
            Ok(())
        } else {
            Err(SpaceError::NotRegistered(mirror.id()))
        }
    }

    fn mirror_entry(&self, id: MirrorId) -> Option<Arc<dyn MirrorEntry>> {
        self.mirrors.read().list.iter().find(|m| m.id() == id).cloned()
    }

    // ------------------------------------------------------------ the change

    /// Run the invalidation protocol for `range` and, if every mirror took
    /// it, apply `f` to the host state; see the module doc. `f` sees the
    /// state with large entries straddling `range` already split.
    fn change<R>(
        &self,
        range: PageRange,
        event: InvalidateEvent,
        blockable: bool,
        f: impl FnOnce(&mut HostState) -> R,
    ) -> Result<R> {
        self.check_range(range)?;
        let mut st = self.lock_state(blockable).ok_or(Again)?;
        if st.released {
            return Err(SpaceError::Released);
        }
        st.split_boundaries(range);
        let mut bumped = Vec::new();
        let r = self.invalidate_mirrors(range, event, blockable, &mut bumped);
        let out = r.map(|()| f(&mut st)).map_err(SpaceError::from);
        for n in &bumped {
            n.end();
        }
        drop(st);
        out
    }

    /// Call every overlapping mirror. The caller holds the state lock.
    fn invalidate_mirrors(
        &self,
        range: PageRange,
        event: InvalidateEvent,
        blockable: bool,
        bumped: &mut Vec<Arc<NotifierShared>>,
    ) -> core::result::Result<(), Again> {
        let list = self.mirrors.read();
        for m in &list.list {
            if let Some(clipped) = m.range().intersect(range) {
                let update = Update { range: clipped, event, blockable };
                m.invalidate(&update, bumped)?;
            }
        }
        Ok(())
    }

    /// Invalidate `range` in every overlapping mirror without changing host
    /// state (the seed's `hmm_invalidate_range`, reachable directly), e.g. to
    /// drop device mappings under memory pressure. Large entries straddling
    /// the range are split: a chunk that was partly invalidated is no longer
    /// one unit for the mirrors.
    ///
    /// # Errors
    /// [`SpaceError::Again`] when `!blockable` and a mirror's update lock (or
    /// the state lock) is held; [`SpaceError::OutOfRange`]; [`SpaceError::Released`].
    pub fn invalidate(&self, range: PageRange, event: InvalidateEvent, blockable: bool) -> Result<()> {
        self.change(range, event, blockable, |_| ())
    }

    // ----------------------------------------------------- host-side changes

    /// Allocate `range` (an `mmap`): its pages become [`PageState::Empty`].
    /// No invalidation: no mirror can hold entries for unallocated pages.
    ///
    /// # Errors
    /// [`SpaceError::Overlap`] if a page is already allocated; `OutOfRange`, `Released`.
    pub fn alloc(&self, range: PageRange, desc: AllocDescriptor) -> Result<()> {
        self.alloc_with(range, desc.max_order, PageState::Empty { prot: desc.prot })
    }

    /// Allocate `range` as special memory (imported or fixed, like a
    /// `VM_PFNMAP` VMA): snapshots report SPECIAL, faults fail.
    ///
    /// # Errors
    /// As [`Self::alloc`].
    pub fn alloc_special(&self, range: PageRange) -> Result<()> {
        self.alloc_with(range, ChunkOrder::Page, PageState::Special)
    }

    fn alloc_with(&self, range: PageRange, max_order: ChunkOrder, state: PageState) -> Result<()> {
        self.check_range(range)?;
        let mut st = self.state.lock();
        if st.released {
            return Err(SpaceError::Released);
        }
        if let Some(p) = range.iter().find(|p| st.pages[p.0 as usize].state != PageState::Unallocated) {
            return Err(SpaceError::Overlap(p));
        }
        if range.is_empty() {
            return Ok(());
        }
        for p in &mut st.pages[range.start().0 as usize..range.end().0 as usize] {
            *p = Page { state, order: ChunkOrder::Page };
        }
        st.allocs.insert(range.start().0, Alloc { end: range.end().0, max_order });
        Ok(())
    }

    /// Free `range` (an `munmap`; holes are fine): invalidation event
    /// [`InvalidateEvent::Unmap`], then every page becomes Unallocated.
    /// Device-private pages are dropped with it; pages in flight are
    /// dropped too and their migration skips them.
    ///
    /// # Errors
    /// `Again` when `!blockable` and a lock is held; `OutOfRange`, `Released`.
    pub fn free(&self, range: PageRange, blockable: bool) -> Result<()> {
        self.change(range, InvalidateEvent::Unmap, blockable, |st| {
            if range.is_empty() {
                return;
            }
            for p in &mut st.pages[range.start().0 as usize..range.end().0 as usize] {
                *p = Page::default();
            }
            // Trim the allocation tree like munmap trims VMAs.
            let (s, e) = (range.start().0, range.end().0);
            let hit: Vec<(u32, Alloc)> =
                st.allocs.range(..e).filter(|(_, a)| a.end > s).map(|(k, a)| (*k, *a)).collect();
            for (k, a) in hit {
                st.allocs.remove(&k);
                if k < s {
                    st.allocs.insert(k, Alloc { end: s, ..a });
                }
                if a.end > e {
                    st.allocs.insert(e, a);
                }
            }
        })
    }

    /// Change the access rights of the allocated pages of `range` (an
    /// `mprotect`): event [`InvalidateEvent::Protect`]. Host mappings lose
    /// write permission when `prot` forbids it.
    ///
    /// # Errors
    /// As [`Self::free`].
    pub fn protect(&self, range: PageRange, prot: Prot, blockable: bool) -> Result<()> {
        self.change(range, InvalidateEvent::Protect, blockable, |st| {
            if range.is_empty() {
                return;
            }
            for p in &mut st.pages[range.start().0 as usize..range.end().0 as usize] {
                p.state = p.state.with_prot(prot);
            }
        })
    }

    /// Start migrating the pages of `range` to `target` (the kernel's
    /// `migrate_vma_setup`): collect them, invalidate them in every mirror
    /// (event `CpuAccess` for the host, `Migrate { owner }` for a device),
    /// and hold them as migration entries. Partial migration is allowed:
    /// pages that cannot move are skipped, not errors.
    ///
    /// # Errors
    /// `Again` when `!blockable` and a lock is held; `OutOfRange`, `Released`.
    pub fn migrate_begin(
        self: &Arc<Self>,
        range: PageRange,
        target: MigrateTarget,
        blockable: bool,
    ) -> Result<Migration> {
        self.migrate_begin_filtered(range, target, blockable, |_| true)
    }

    pub(crate) fn migrate_begin_filtered(
        self: &Arc<Self>,
        range: PageRange,
        target: MigrateTarget,
        blockable: bool,
        keep: impl Fn(PageIndex) -> bool,
    ) -> Result<Migration> {
        let event = match target {
            MigrateTarget::Host => InvalidateEvent::CpuAccess,
            MigrateTarget::Device(owner) => InvalidateEvent::Migrate { owner },
        };
        let selected = |p: PageIndex, s: PageState| {
            keep(p)
                && match (s, target) {
                    (PageState::Device { prot, .. }, MigrateTarget::Host) => prot.readable(),
                    (PageState::Empty { prot } | PageState::Host { prot, .. }, MigrateTarget::Device(_)) => {
                        prot.readable()
                    }
                    (PageState::Device { prot, owner, .. }, MigrateTarget::Device(m)) => owner != m && prot.readable(),
                    _ => false,
                }
        };
        self.check_range(range)?;
        // Look first, so that a migration with nothing to move invalidates nothing.
        {
            let st = self.lock_state(blockable).ok_or(Again)?;
            if st.released {
                return Err(SpaceError::Released);
            }
            if !range.iter().any(|p| selected(p, st.pages[p.0 as usize].state)) {
                return Ok(Migration {
                    id: MigrationId(u32::MAX),
                    target,
                    space: Arc::downgrade(self),
                    pages: Vec::new(),
                });
            }
        }
        let pages = self.change(range, event, blockable, |st| {
            let id = MigrationId(st.next_migration);
            st.next_migration = st.next_migration.wrapping_add(1);
            let mut pages = Vec::new();
            for p in range.iter() {
                let page = &mut st.pages[p.0 as usize];
                if selected(p, page.state) {
                    pages.push((p, page.state, page.order));
                    let prot = page.state.prot().unwrap_or_default();
                    *page = Page { state: PageState::Migrating { prot, id }, order: ChunkOrder::Page };
                }
            }
            (id, pages)
        })?;
        Ok(Migration { id: pages.0, target, space: Arc::downgrade(self), pages: pages.1 })
    }

    /// The end of a migration: set each page still held by `id` to what
    /// `dest(i, prot)` says (`None` = its source state), rebuild large
    /// entries that moved whole, wake waiters.
    fn migration_end(
        &self,
        id: MigrationId,
        pages: &[(PageIndex, PageState, ChunkOrder)],
        dest: impl Fn(usize, Prot) -> Option<PageState>,
    ) {
        let mut st = self.state.lock();
        let mut i = 0;
        while i < pages.len() {
            let (p, _, order) = pages[i];
            let n = order.pages() as usize;
            // A whole chunk that moved keeps its order if the result is uniform.
            let whole = n > 1
                && p.0 & (order.pages() - 1) == 0
                && i + n <= pages.len()
                && (0u32..).zip(&pages[i..i + n]).all(|(k, (q, _, o))| q.0 == p.0 + k && *o == order);
            let span = if whole { n } else { 1 };
            for (k, &(q, src, _)) in pages[i..i + span].iter().enumerate() {
                let slot = &mut st.pages[q.0 as usize];
                if let PageState::Migrating { prot, id: held } = slot.state {
                    if held == id {
                        // Source order restored below only if uniform.
                        slot.state = dest(i + k, prot).unwrap_or(src.with_prot(prot));
                        slot.order = ChunkOrder::Page;
                    }
                }
            }
            if whole {
                let chunk = order.chunk_of(p);
                let s = chunk.start().0 as usize;
                let first = st.pages[s].state;
                let uniform = (0u32..).zip(&st.pages[s..s + n]).all(|(k, q)| match (first, q.state) {
                    (PageState::Host { .. }, PageState::Host { .. }) => q.state == first,
                    (
                        PageState::Device { prot, owner, frame },
                        PageState::Device { prot: p2, owner: o2, frame: f2 },
                    ) => prot == p2 && owner == o2 && f2.get() == frame.get() + k,
                    _ => false,
                });
                if uniform {
                    for q in &mut st.pages[s..s + n] {
                        q.order = order;
                    }
                }
            }
            i += span;
        }
        drop(st);
        self.migrated.notify_all();
    }

    /// The CPU touches `range` (reads, or writes when `write`): device-private
    /// pages are taken back (invalidated with [`InvalidateEvent::CpuAccess`],
    /// copied by their owner's [`MirrorOps::copy_to_host`], made host pages),
    /// empty pages are populated, read-only host pages are made writable for
    /// a write. This is the device-private `migrate_to_ram` path of the kernel.
    ///
    /// # Errors
    /// [`SpaceError::Fault`] for a page the allocation does not allow;
    /// `Busy`/`Again` when `!blockable`; `OutOfRange`, `Released`.
    pub fn cpu_fault(self: &Arc<Self>, range: PageRange, write: bool, blockable: bool) -> Result<()> {
        self.check_range(range)?;
        loop {
            let mut st = self.lock_state(blockable).ok_or(SpaceError::Busy)?;
            if st.released {
                return Err(SpaceError::Released);
            }
            let mut device = false;
            let mut in_flight = false;
            for p in range.iter() {
                let s = st.pages[p.0 as usize].state;
                let reason = match s.prot() {
                    None if s == PageState::Special => Some(FaultReason::Special),
                    None => Some(FaultReason::Unallocated),
                    Some(Prot::None) => Some(FaultReason::NoAccess),
                    Some(Prot::Read) if write => Some(FaultReason::ReadOnly),
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    return Err(SpaceError::Fault { page: p, reason });
                }
                device |= matches!(s, PageState::Device { .. });
                in_flight |= matches!(s, PageState::Migrating { .. });
            }
            if in_flight {
                if !blockable {
                    return Err(SpaceError::Busy);
                }
                drop(self.wait_migration(st));
                continue;
            }
            if device {
                drop(st);
                self.take_back(range, blockable, |_| true)?;
                continue;
            }
            for p in range.iter() {
                match st.pages[p.0 as usize].state {
                    PageState::Empty { .. } => st.populate(p.0, write),
                    PageState::Host { writable: false, .. } if write => st.upgrade_write(p.0),
                    _ => {}
                }
            }
            return Ok(());
        }
    }

    /// Migrate the device-private pages of `range` accepted by `keep` to
    /// the host, with their owners copying.
    pub(crate) fn take_back(
        self: &Arc<Self>,
        range: PageRange,
        blockable: bool,
        keep: impl Fn(PageIndex) -> bool,
    ) -> Result<()> {
        let mig = self.migrate_begin_filtered(range, MigrateTarget::Host, blockable, keep)?;
        let mut by_owner: BTreeMap<MirrorId, Vec<(PageIndex, FrameIndex)>> = BTreeMap::new();
        for (p, s) in mig.pages() {
            if let PageState::Device { owner, frame, .. } = s {
                by_owner.entry(owner).or_default().push((p, frame));
            }
        }
        for (owner, pages) in by_owner {
            if let Some(m) = self.mirror_entry(owner) {
                m.copy_to_host(&pages);
            }
        }
        mig.finalize(|_, _| MigrateOutcome::Host)
    }

    /// Tear the space down (the seed's `hmm_release`): invalidate everything
    /// with [`InvalidateEvent::Release`], drop every page, then call each
    /// mirror's [`MirrorOps::release`] once, with no protocol lock held but
    /// its own update lock, and unregister it. Idempotent; runs on drop too.
    pub fn release(&self) {
        {
            let mut st = self.state.lock();
            if st.released {
                return;
            }
            let mut bumped = Vec::new();
            // Blockable: cannot fail.
            let _ = self.invalidate_mirrors(self.range(), InvalidateEvent::Release, true, &mut bumped);
            st.released = true;
            st.pages.iter_mut().for_each(|p| *p = Page::default());
            st.allocs.clear();
            for n in &bumped {
                n.end();
            }
        }
        self.migrated.notify_all();
        loop {
            let next = {
                let mut list = self.mirrors.write();
                list.released = true;
                list.list.pop()
            };
            match next {
                Some(m) => m.release(),
                None => break,
            }
        }
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        self.release();
    }
}
