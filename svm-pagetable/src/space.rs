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
//!
//! The parts: `state` (per-page state, allocations, the state behind the
//! lock), `changes` (allocate, free, protect), `migrate` (migrations and
//! CPU faults); this file keeps the space itself, its mirrors and the change.

mod changes;
mod migrate;
mod state;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Again, Result, SpaceError};
use crate::loom::{AtomicU32, Condvar, Mutex, MutexGuard, Ordering, RwLock};
use crate::mirror::{InvalidateEvent, Mirror, MirrorEntry, MirrorId, MirrorOps, NotifierShared, Update};
use crate::pte::PageIndex;
use crate::range::{ChunkOrder, PageRange};

pub use migrate::{MigrateOutcome, MigrateTarget, Migration, MigrationId};
pub(crate) use state::HostState;
use state::Page;
pub use state::{AllocDescriptor, PageState, Prot};

struct MirrorList {
    released: bool,
    list: Vec<Arc<dyn MirrorEntry>>,
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
