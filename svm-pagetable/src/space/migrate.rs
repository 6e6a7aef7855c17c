//! Migrations ([`Migration`], the kernel's `migrate_vma`) between host memory
//! and the device pools of mirrors, and the CPU fault path that takes
//! device-private pages back ([`AddressSpace::cpu_fault`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use super::state::Page;
use super::{AddressSpace, PageState, Prot};
use crate::error::{Again, FaultReason, Result, SpaceError};
use crate::mirror::{InvalidateEvent, MirrorId};
use crate::pte::{FrameIndex, PageIndex};
use crate::range::{ChunkOrder, PageRange};

/// Identity of one migration (see [`Migration`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct MigrationId(u32);

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

impl AddressSpace {
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
    /// copied by their owner's
    /// [`MirrorOps::copy_to_host`](crate::MirrorOps::copy_to_host), made host
    /// pages), empty pages are populated, read-only host pages are made
    /// writable for a write. This is the device-private `migrate_to_ram` path
    /// of the kernel.
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
}
