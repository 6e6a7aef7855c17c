//! Mirrors, interval notifiers and sequence counts: the device side of the
//! protocol.
//!
//! A [`Mirror`] is one device mirroring (part of) an [`AddressSpace`]. It owns
//! the device-side state behind its *update lock* (typically a
//! [`PageTable`](crate::PageTable)), and a [`MirrorOps`] vtable that the
//! address space calls when the host side changes. [`IntervalNotifier`]s are
//! per-range sequence counters that let a driver tell whether a snapshot it
//! took is still current when it comes to commit it.
//!
//! The protocol takes the update lock *itself* before calling
//! [`MirrorOps::invalidate`], and bumps the sequence counts of the mirror's
//! overlapping notifiers while holding it. A driver therefore cannot forget
//! the kernel's rule "the driver->update lock is the same lock that the driver
//! takes inside its invalidate() callback": there is only one lock, and
//! [`UpdateGuard::read_retry`] can only be called through a guard of it.
//!
//! [`AddressSpace`]: crate::AddressSpace

use std::sync::{Arc, Weak};

use crate::error::Again;
use crate::loom::{AtomicU64, Mutex, MutexGuard, Ordering};
use crate::pte::{FrameIndex, PageIndex};
use crate::range::PageRange;
use crate::space::AddressSpace;

/// Identity of a registered mirror (never reused within one address space).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MirrorId(pub(crate) u32);

impl MirrorId {
    /// The raw number, for logs.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Why the host side is invalidating a range (the modern kernel's
/// `mmu_notifier_event`; the seed had only `HMM_UPDATE_INVALIDATE`).
///
/// Mirrors use it to skip work: a mirror migrating pages to itself
/// (`Migrate { owner: its own id }`) need not zap what it is about to map.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidateEvent {
    /// The CPU is taking pages back (a CPU fault on device-private pages, or
    /// the runtime evicting them to host memory).
    CpuAccess,
    /// The range was freed (the kernel's `MMU_NOTIFY_UNMAP`).
    Unmap,
    /// Access rights were changed (`MMU_NOTIFY_PROTECTION_VMA`).
    Protect,
    /// Pages are being migrated to the device pool of `owner`
    /// (`MMU_NOTIFY_MIGRATE` with its `owner`).
    Migrate {
        /// The mirror that will own the pages.
        owner: MirrorId,
    },
    /// The address space is being torn down (`MMU_NOTIFY_RELEASE`).
    Release,
    /// A caller asked for an invalidation with no host-state change, e.g. to
    /// split a large entry or to drop device mappings under memory pressure
    /// (`MMU_NOTIFY_CLEAR`).
    Clear,
}

/// One invalidation, as a mirror's callback sees it (the seed's
/// `struct hmm_update`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Update {
    /// Pages to zap, already clipped to the mirror's range.
    pub range: PageRange,
    /// Why.
    pub event: InvalidateEvent,
    /// May the callback sleep (wait for the device)? When `false`, a callback
    /// that would have to wait returns [`Again`].
    pub blockable: bool,
}

/// The driver callbacks of a mirror (the seed's `struct hmm_mirror_ops`).
///
/// Both are called *with the mirror's update lock held* and handed the state
/// it guards; they must not call back into the [`AddressSpace`] nor take the
/// update lock again.
///
/// [`AddressSpace`]: crate::AddressSpace
pub trait MirrorOps: Send + Sync + 'static {
    /// The device-side state behind the update lock: the device page table,
    /// and whatever the driver needs to know what the device is using.
    type Table: Send + 'static;

    /// Zap every device entry for `update.range` and make sure the device no
    /// longer uses them before returning (wait for, or fence, in-flight work).
    ///
    /// May return [`Again`] only when `update.blockable` is false and it would
    /// have to wait; the whole invalidation then fails with [`Again`] and the
    /// host change is not made. When `blockable` is true, `Again` is a driver
    /// bug and panics in debug builds.
    fn invalidate(&self, table: &mut Self::Table, update: &Update) -> Result<(), Again>;

    /// The address space is going away: drop everything. Called once, after
    /// the final [`InvalidateEvent::Release`] invalidation, with no protocol
    /// lock but the update lock held (the seed drops `mirrors_sem` for it too).
    fn release(&self, table: &mut Self::Table) {
        let _ = table;
    }

    /// Copy device-private pages of this mirror back to host memory: called
    /// when the host side takes them back ([`AddressSpace::cpu_fault`], or a
    /// [`range_fault`] of *another* mirror that asked for them). Called with no
    /// protocol lock held; the pages are in flight (migration entries) and
    /// already invalidated. The default does nothing, right for a mirror that
    /// never owns device pages.
    ///
    /// [`AddressSpace::cpu_fault`]: crate::AddressSpace::cpu_fault
    /// [`range_fault`]: crate::AddressSpace::range_fault
    fn copy_to_host(&self, pages: &[(PageIndex, FrameIndex)]) {
        let _ = pages;
    }
}

/// A mirror as the address space stores it, with its `Table` type erased.
pub(crate) trait MirrorEntry: Send + Sync {
    fn id(&self) -> MirrorId;
    fn range(&self) -> PageRange;
    /// Take the update lock, bump overlapping notifiers to odd (pushing them
    /// on `bumped`, which the caller ends), call the driver.
    fn invalidate(&self, update: &Update, bumped: &mut Vec<Arc<NotifierShared>>) -> Result<(), Again>;
    fn release(&self);
    fn copy_to_host(&self, pages: &[(PageIndex, FrameIndex)]);
}

/// A device registered as a mirror of an address space (the seed's
/// `struct hmm_mirror`). Made by [`AddressSpace::mirror_register`].
///
/// [`AddressSpace::mirror_register`]: crate::AddressSpace::mirror_register
pub struct Mirror<O: MirrorOps> {
    id: MirrorId,
    range: PageRange,
    pub(crate) space: Weak<AddressSpace>,
    ops: O,
    /// Rank 3 in the lock order (see the crate doc).
    update: Mutex<O::Table>,
    /// Rank 4. Weak: dropping an [`IntervalNotifier`] removes it.
    notifiers: Mutex<Vec<Weak<NotifierShared>>>,
}

impl<O: MirrorOps> core::fmt::Debug for Mirror<O> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mirror").field("id", &self.id).field("range", &self.range).finish_non_exhaustive()
    }
}

impl<O: MirrorOps> Mirror<O> {
    pub(crate) fn new(id: MirrorId, range: PageRange, space: Weak<AddressSpace>, ops: O, table: O::Table) -> Self {
        Self { id, range, space, ops, update: Mutex::new(table), notifiers: Mutex::new(Vec::new()) }
    }

    /// This mirror's identity.
    pub fn id(&self) -> MirrorId {
        self.id
    }

    /// The pages it mirrors.
    pub fn range(&self) -> PageRange {
        self.range
    }

    /// The driver callbacks.
    pub fn ops(&self) -> &O {
        &self.ops
    }

    /// Take the update lock: the lock every invalidation of this mirror takes,
    /// under which a driver checks [`UpdateGuard::read_retry`] and commits.
    ///
    /// Do not call [`AddressSpace`] methods while holding
    /// it (lock order: the address space's state lock comes first).
    pub fn update_lock(&self) -> UpdateGuard<'_, O> {
        UpdateGuard { mirror_id: self.id, guard: self.update.lock() }
    }

    /// Non-blocking [`Self::update_lock`].
    pub fn try_update_lock(&self) -> Option<UpdateGuard<'_, O>> {
        self.update.try_lock().map(|guard| UpdateGuard { mirror_id: self.id, guard })
    }

    /// Start tracking invalidations of `range` (the kernel's
    /// `mmu_interval_notifier_insert`). Invalidations of the mirror outside
    /// every notifier still zap, but only notifiers make a snapshot retry.
    /// Dropping the returned notifier removes it.
    pub fn notifier_insert(&self, range: PageRange) -> IntervalNotifier {
        let shared =
            Arc::new(NotifierShared { mirror: self.id, range, seq: AtomicU64::new(0), space: self.space.clone() });
        let mut list = self.notifiers.lock();
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&shared));
        IntervalNotifier { shared }
    }
}

impl<O: MirrorOps> MirrorEntry for Mirror<O> {
    fn id(&self) -> MirrorId {
        self.id
    }

    fn range(&self) -> PageRange {
        self.range
    }

    fn invalidate(&self, update: &Update, bumped: &mut Vec<Arc<NotifierShared>>) -> Result<(), Again> {
        let mut table = if update.blockable { self.update.lock() } else { self.update.try_lock().ok_or(Again)? };
        {
            let list = self.notifiers.lock();
            for n in list.iter().filter_map(Weak::upgrade) {
                if n.range.overlaps(update.range) {
                    // Even -> odd: an invalidation is in progress. Ended (odd
                    // -> even) by the address space once the host state has
                    // changed, still under its state lock.
                    let prev = n.seq.fetch_add(1, Ordering::AcqRel);
                    debug_assert!(prev & 1 == 0, "nested invalidation of one notifier");
                    bumped.push(n);
                }
            }
        }
        let r = self.ops.invalidate(&mut table, update);
        debug_assert!(r.is_ok() || !update.blockable, "MirrorOps::invalidate returned Again while blockable");
        r
    }

    fn release(&self) {
        let mut table = self.update.lock();
        self.ops.release(&mut table);
    }

    fn copy_to_host(&self, pages: &[(PageIndex, FrameIndex)]) {
        self.ops.copy_to_host(pages);
    }
}

/// The update lock of a [`Mirror`], held. Derefs to the mirror's `Table`.
pub struct UpdateGuard<'a, O: MirrorOps> {
    mirror_id: MirrorId,
    guard: MutexGuard<'a, O::Table>,
}

impl<O: MirrorOps> UpdateGuard<'_, O> {
    /// Has `notifier`'s range been invalidated since `seq` was read? If so the
    /// snapshot taken after [`IntervalNotifier::read_begin`] is stale: drop
    /// the guard and start again. If not, commit now, before dropping the
    /// guard: any later invalidation has to take this lock first, and will
    /// zap what was committed.
    ///
    /// # Panics
    /// If `notifier` belongs to another mirror (its count is not protected by
    /// this lock, so the answer would mean nothing).
    pub fn read_retry(&self, notifier: &IntervalNotifier, seq: Seq) -> bool {
        assert_eq!(notifier.shared.mirror, self.mirror_id, "read_retry under the update lock of another mirror");
        notifier.shared.seq.load(Ordering::Acquire) != seq.0
    }
}

impl<O: MirrorOps> core::ops::Deref for UpdateGuard<'_, O> {
    type Target = O::Table;
    fn deref(&self) -> &O::Table {
        &self.guard
    }
}

impl<O: MirrorOps> core::ops::DerefMut for UpdateGuard<'_, O> {
    fn deref_mut(&mut self) -> &mut O::Table {
        &mut self.guard
    }
}

/// A sequence count read by [`IntervalNotifier::read_begin`].
///
/// Invariant: even (no invalidation was in progress when it was read).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Seq(u64);

impl Seq {
    /// The raw count, for logs.
    pub fn get(self) -> u64 {
        self.0
    }
}

pub(crate) struct NotifierShared {
    mirror: MirrorId,
    range: PageRange,
    /// Odd while an invalidation of the range is in progress (between the
    /// bump under the update lock and the end under the state lock).
    pub(crate) seq: AtomicU64,
    space: Weak<AddressSpace>,
}

impl NotifierShared {
    pub(crate) fn end(&self) {
        let prev = self.seq.fetch_add(1, Ordering::AcqRel);
        debug_assert!(prev & 1 == 1, "ending an invalidation that was not begun");
    }
}

/// Tracks invalidations of one range of one mirror with a sequence count (the
/// kernel's `struct mmu_interval_notifier`; it replaces the seed's racy
/// `range->valid` flag). Made by [`Mirror::notifier_insert`].
///
/// The driver loop (hmm.rst, drm_gpusvm):
///
/// ```text
/// loop {
///     let seq = notifier.read_begin();              // no lock held
///     space.range_fault(&mut request, true)?;       // takes and drops the state lock
///     let mut table = mirror.update_lock();         // the lock invalidate takes
///     if table.read_retry(&notifier, seq) { continue }
///     table.commit_snapshot(...);                   // write device PTEs, still locked
///     break;
/// }
/// ```
pub struct IntervalNotifier {
    shared: Arc<NotifierShared>,
}

impl core::fmt::Debug for IntervalNotifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IntervalNotifier")
            .field("mirror", &self.shared.mirror)
            .field("range", &self.shared.range)
            .field("seq", &self.shared.seq.load(Ordering::Relaxed))
            .finish()
    }
}

impl IntervalNotifier {
    /// The tracked range.
    pub fn range(&self) -> PageRange {
        self.shared.range
    }

    /// The mirror it belongs to.
    pub fn mirror(&self) -> MirrorId {
        self.shared.mirror
    }

    /// Read the sequence count before taking a snapshot (the kernel's
    /// `mmu_interval_read_begin`). If an invalidation of the range is in
    /// progress, waits for it to end, so that the snapshot that follows sees
    /// the new host state and the commit is not refused for nothing.
    ///
    /// Must not be called with the update lock held (lock order).
    pub fn read_begin(&self) -> Seq {
        loop {
            let s = self.shared.seq.load(Ordering::Acquire);
            if s & 1 == 0 {
                return Seq(s);
            }
            // Odd counts only exist while the invalidating thread holds the
            // address space's state lock: waiting for that lock waits for the
            // invalidation to end.
            match self.shared.space.upgrade() {
                Some(space) => space.wait_for_invalidation(),
                None => return Seq(s & !1),
            }
        }
    }
}
