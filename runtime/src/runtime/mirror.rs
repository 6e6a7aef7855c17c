//! Several devices mirroring one arena (the seed's several mirrors, its
//! `hmm2` tests): [`Svm::mirror`] opens a runtime on another device — or
//! another logical device of the same adapter — over this runtime's arena.
//!
//! Each *member* (the arena's own runtime, member 0, and its mirrors) keeps
//! its own residency, pool, page table, flights and update lock. Shared:
//! * the arena: its views, its one CPU-fault service (member 0's), and its
//!   allocations, kept by member 0 (`alloc`/`free` through a mirror go
//!   there) and copied into every member's page table, range list and slab
//!   set under member 0's update lock, so that each member validates
//!   pointers and declarations on its own;
//! * a **lease** per page (`svm_pagetable::Leases`, whose protocol is
//!   loom-checked there): only the member holding a
//!   page's lease may have it anywhere but on the host (a device frame, a
//!   read-only copy, a claim, a flight using it in place). A member gives a
//!   lease away only under its own update lock, after bringing the pages
//!   home (HMM's invalidation of one mirror on behalf of another: blockable,
//!   it waits for that member's flights on them). So holding one's update
//!   lock and a page's lease, the page is one's own to change.
//!
//! A member that needs pages whose lease another holds (a launch, a
//! prefetch, `with_bindings`, a replay's GPU faults, a free) releases its
//! update lock, asks each holder to give its pages up ([`Inner::give_up`]),
//! and decides again: the pages come to it through the host copy, as HMM
//! migrates device-private memory of one device to another through system
//! memory. A CPU fault goes to the page's holder ([`Inner::serve_fault`]).
//! Leases are given up only when asked for: a page a member brought home
//! keeps its lease there, so one device's repeated use costs no check of
//! the others.
//!
//! Lock order: member 0's update lock before any mirror's (allocations and
//! frees copied into the mirrors); a mirror never takes member 0's update
//! lock while holding its own (leases are asked for, allocations forwarded,
//! with it released). The group's two mutexes are leaves.

use std::sync::{Arc, Weak};

use parking_lot::MutexGuard;

use super::*;

/// The arena's own runtime.
pub(super) const HOME: u8 = 0;
/// A page whose only copy was on a mirror's device when that device was
/// lost (or the mirror dropped with it lost): its data is gone.
use svm_pagetable::LOST;
/// Members a group may have (member numbers fit a byte, [`LOST`] apart).
const MAX_MEMBERS: usize = 64;

/// The members mirroring one arena and the page leases (see the module).
pub(crate) struct Group {
    /// Per arena page: the member that may have it anywhere but on the host.
    leases: svm_pagetable::Leases,
    /// Member `i` is `members[i]` (0: the arena's runtime).
    members: Mutex<Vec<Weak<Inner>>>,
}

impl Group {
    fn member(&self, i: u8) -> Option<Arc<Inner>> {
        self.members.lock().get(i as usize).and_then(Weak::upgrade)
    }

    /// Live mirrors (members 1 and up).
    fn mirrors(&self) -> Vec<Arc<Inner>> {
        self.members.lock().iter().skip(1).filter_map(Weak::upgrade).collect()
    }

    /// The member number a new mirror gets: a slot a mirror left (emptied
    /// once its leases went home or were marked lost, so that no page is
    /// leased to the number), else a new one; `None` when all are taken.
    fn free_slot(members: &[Weak<Inner>]) -> Option<usize> {
        let left = Weak::new();
        (1..members.len())
            .find(|&i| members[i].ptr_eq(&left))
            .or((members.len() < MAX_MEMBERS).then_some(members.len()))
    }
}

impl Svm {
    /// A runtime on another device mirroring this runtime's arena: the
    /// same managed memory, the same pointer values, allocations made
    /// through either, kernels of each running on its own device. A page
    /// written by one device and then used by the other moves between them
    /// through the host copy (the first device's launches on it finish
    /// first); a CPU access is served from whichever device has the page.
    ///
    /// `desc` chooses the device (`device`: an application's; `None`: a new
    /// logical device, of the adapter `WGPU_ADAPTER_NAME` picks), its pool,
    /// fault chunk and mapping mode (`None`: this runtime's). The arena's
    /// size and fault backend are this runtime's (`arena_size` and
    /// `fault_backend` are ignored). Advice is per device: each member's
    /// own. Kernels are compiled for one member. At most 63 mirrors at once.
    ///
    /// Bound to this runtime's arena: the mirror keeps it (and its fault
    /// service) alive; dropping the mirror first brings its pages home.
    pub fn mirror(&self, desc: &SvmDescriptor) -> Result<Svm> {
        self.inner.check_process()?;
        let home = match &self.inner.home {
            Some(h) => h.clone(),
            None => self.clone(),
        };
        let mode = match desc.mapping {
            Some(m) => m,
            None => home.inner.gpu.mode,
        };
        if (mode == MappingMode::Coherent) != (home.inner.gpu.mode == MappingMode::Coherent) {
            // The coherent mode's device uses the host pages themselves and
            // frees them in place; the others punch freed pages out.
            return Err(SvmError::Config(format!(
                "a {mode:?} mirror of a {:?} arena: the coherent mode mirrors only a coherent arena, and only it",
                home.inner.gpu.mode
            )));
        }
        let full = || SvmError::Config(format!("an arena has at most {} mirrors at once", MAX_MEMBERS - 1));
        // (Checked before a device is opened, and again under the lock.)
        if home.inner.group.get().is_some_and(|(g, _)| Group::free_slot(&g.members.lock()).is_none()) {
            return Err(full());
        }
        let inner = Self::open_inner(desc, home.inner.arena.clone(), mode, Some(home.clone()))?;
        let group = home.inner.group.get_or_init(|| {
            let g = Group {
                leases: svm_pagetable::Leases::new(home.inner.arena.len() / PAGE_SIZE),
                members: Mutex::new(vec![Arc::downgrade(&home.inner)]),
            };
            (Arc::new(g), HOME)
        });
        let g = group.0.clone();
        {
            // Member 0's update lock: no allocation slips between the copy
            // of the live ones and the registration.
            let home_st = home.inner.state.lock();
            let slot = Group::free_slot(&g.members.lock()).ok_or_else(full)?;
            let me = u8::try_from(slot).expect("MAX_MEMBERS fits a byte");
            let mut st = inner.state.lock();
            inner
                .gpu
                .import_coherent(u64::from(home_st.top) * PAGE_SIZE as u64, |o, l| {
                    inner.arena.populate_host(o, l).map_err(|e| e.to_string())
                })
                .map_err(|e| SvmError::Device(DeviceError::Unexpected(e)))?;
            for (start, len) in home_st.ranges.live() {
                let first = page_of(start);
                let slab = home_st.slabs.is_slab(first);
                copy_alloc(&mut st, start, len, slab);
            }
            drop(st);
            inner.group.set((g.clone(), me)).unwrap_or_else(|_| unreachable!("a new runtime is in no group"));
            if let Some(k) = home.inner.signals.kick() {
                inner.signals.set_kick(k);
            }
            // (Under member 0's update lock: member numbers are taken in turn.)
            let mut members = g.members.lock();
            if slot == members.len() {
                members.push(Arc::downgrade(&inner));
            } else {
                members[slot] = Arc::downgrade(&inner);
            }
        }
        // (The fault service is member 0's: parked faults on this mirror's
        // flights are kicked through the kick set above.)
        Ok(Svm { _service: home._service.clone(), inner })
    }

    /// The number of runtimes mirroring this arena, this one included (1:
    /// no mirror).
    pub fn mirrors(&self) -> usize {
        // (A member whose last handle went has left: its slot is empty.)
        self.inner.group.get().map_or(1, |(g, _)| g.members.lock().iter().filter(|m| m.strong_count() > 0).count())
    }

    /// The arena's own runtime, for a mirror (allocation goes there).
    pub(super) fn home(&self) -> Option<&Svm> {
        self.inner.home.as_ref()
    }
}

/// Record the allocation `[start, start + len)` (a slab page or not) in a
/// mirror's state.
fn copy_alloc(st: &mut State, start: usize, len: usize, slab: bool) {
    let first = page_of(start);
    let end = first + page_of(len);
    let fresh = st.ranges.insert(start, len);
    debug_assert!(fresh, "member 0 allocated [{start:#x}, +{len:#x}), live in a mirror");
    if slab {
        st.slabs.add_page(first, crate::slab::MIN_CLASS);
    }
    st.table.update_range(first..end, |_, _| Pte::ALLOCATED);
    st.top = st.top.max(end);
}

impl Inner {
    /// The group this runtime is a member of, and its member number.
    fn membership(&self) -> Option<(&Arc<Group>, u8)> {
        self.group.get().map(|(g, i)| (g, *i))
    }

    /// Runs of `ranges` whose lease another member holds: `(a, b, holder)`.
    /// Empty for a runtime alone with its arena.
    pub(super) fn foreign_runs(&self, ranges: impl IntoIterator<Item = (u32, u32)>) -> Vec<(u32, u32, u8)> {
        let Some((g, me)) = self.membership() else { return Vec::new() };
        g.leases.foreign_runs(ranges, me)
    }

    /// Runs of `[0, top)` lost with a mirror's device (their lease marked
    /// lost: a free takes them back).
    pub(super) fn lost_with_mirrors(&self, top: u32) -> Vec<(u32, u32)> {
        match self.membership() {
            Some((g, _)) => g.leases.held_runs(0, top, LOST),
            None => Vec::new(),
        }
    }

    /// Whether page `p`'s lease is held by another member whose device is
    /// lost (alive, or dropped: the lease marked lost): its only copy may
    /// be gone. (Found by review: a live mirror's lost device counted as
    /// reachable.)
    pub(super) fn lost_with_a_mirror(&self, p: u32) -> bool {
        self.membership().is_some_and(|(g, me)| {
            let h = g.leases.holder(p);
            h == LOST || (h != me && g.member(h).is_some_and(|m| m.gpu.check_lost().is_err()))
        })
    }

    /// Whether another runtime mirrors this arena (or did).
    pub(super) fn in_group(&self) -> bool {
        self.group.get().is_some()
    }

    /// Runs of `[a, b)` whose lease this runtime holds (alone: all of it).
    pub(super) fn held_runs(&self, a: u32, b: u32) -> Vec<(u32, u32)> {
        match self.membership() {
            Some((g, me)) => g.leases.held_runs(a, b, me),
            None => vec![(a, b)],
        }
    }

    /// Whether this runtime holds page `p`'s lease (alone: always). Under
    /// the update lock: a mirror that left holds none (its number may be
    /// another's now).
    pub(super) fn holds(&self, p: u32) -> bool {
        self.membership().is_none_or(|(g, me)| self.is_member(g, me) && g.leases.holds(p, me))
    }

    /// Whether this runtime still is member `me` of `g`. Stable under its
    /// update lock: a mirror leaves with it held (`leave_group`).
    fn is_member(&self, g: &Group, me: u8) -> bool {
        me == HOME || std::ptr::eq(g.members.lock()[me as usize].as_ptr(), self)
    }

    /// Take the leases of `runs` ([`Self::foreign_runs`]) from their
    /// holders, with the update lock released (each holder waits for its
    /// flights on them): the caller decides again after. A page lost with
    /// a mirror's device is [`DeviceError::Lost`].
    pub(super) fn take_leases(
        &self,
        guard: &mut MutexGuard<'_, State>,
        runs: &[(u32, u32, u8)],
    ) -> Result<(), DeviceError> {
        let Some((g, me)) = self.membership() else { return Ok(()) };
        MutexGuard::unlocked(guard, || self.ask_holders(g, me, runs))
    }

    /// [`Self::take_leases`] for a launch, which also releases the launch
    /// order (another thread's launch on other data must not wait).
    pub(super) fn take_leases_unordered(
        &self,
        guard: &mut MutexGuard<'_, State>,
        order: &mut MutexGuard<'_, ()>,
        runs: &[(u32, u32, u8)],
    ) -> Result<(), DeviceError> {
        let Some((g, me)) = self.membership() else { return Ok(()) };
        // (Taken again in lock order: the launch order, then the update lock.)
        MutexGuard::unlocked(guard, || MutexGuard::unlocked(order, || self.ask_holders(g, me, runs)))
    }

    fn ask_holders(&self, g: &Group, me: u8, runs: &[(u32, u32, u8)]) -> Result<(), DeviceError> {
        for &(a, b, h) in runs {
            if h == LOST {
                let addr = self.arena.base() + a as usize * PAGE_SIZE;
                return Err(DeviceError::Lost(format!("page {addr:#x} was only on a mirror's device, which was lost")));
            }
            match g.member(h) {
                Some(m) => m.give_up(a, b, me)?,
                // Being dropped: its drop brings its pages home and gives
                // their leases to member 0; the caller asks again.
                None => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        Ok(())
    }

    /// Give up the leases this runtime holds in `[a, b)` to member `to`:
    /// wait for the flights using those pages (the lock released), bring
    /// device-owned pages home and drop read-only copies, then pass the
    /// leases on (HMM's invalidation on another mirror's behalf).
    pub(super) fn give_up(&self, a: u32, b: u32, to: u8) -> Result<(), DeviceError> {
        let Some((g, me)) = self.membership() else { return Ok(()) };
        self.check_process()?;
        let mut guard = self.state.lock();
        loop {
            self.wait_pages(&mut guard, a, b);
            // (A copy back through the queue is not made behind a running
            // pass with the lock held: after it, decided again.)
            match self.copy_back_behind_a_pass(&guard, a, b) {
                Some(f) => self.wait_settled(&mut guard, &f),
                None => break,
            }
        }
        if !self.is_member(g, me) {
            // Left the group while this waited (a handle another thread
            // took before): its number may be another mirror's now, and
            // it holds no lease.
            return Ok(());
        }
        let st = &mut *guard;
        let mine = g.leases.held_runs(a, b, me);
        let mut result = Ok(());
        for &(x, y) in &mine {
            for p in x..y {
                if st.dup[p as usize] {
                    result = result.and(self.drop_copy(st, p));
                }
            }
            let spans: Vec<(u32, u32)> = runs(x, y, |p| st.owned(p)).flat_map(|(s, e)| Self::spans_of(s, e)).collect();
            if !spans.is_empty() {
                result = result.and(self.migrate_back_spans(st, &spans).map(drop));
            }
        }
        // (Pages that could not come home, or whose read-only copy could
        // not be dropped, stay this member's: a CPU access to one reports
        // the loss here.)
        g.leases.hand_over(a, b, me, to, |p| st.owned(p) || st.dup[p as usize]);
        result
    }

    /// Pages of `[addr, addr + len)` that another member has on its device
    /// (owned or a read-only copy), each asked under its own lock.
    pub(super) fn pages_on_other_devices(&self, addr: usize, len: usize) -> Vec<(u32, u32)> {
        let Some((g, _)) = self.membership() else { return Vec::new() };
        let off = addr.wrapping_sub(self.arena.base());
        let Some(end) = off.checked_add(len).filter(|&e| e <= self.arena.len()) else { return Vec::new() };
        let (a, b) = (page_of(off), page_of(end.next_multiple_of(PAGE_SIZE)));
        let mut out = Vec::new();
        for (x, y, h) in self.foreign_runs([(a, b)]) {
            let Some(m) = g.member(h) else { continue };
            let st = m.state.lock();
            out.extend(runs(x, y, |p| st.frames_of.get(p as usize) != HOST));
        }
        out
    }

    /// A CPU fault, served by the member holding its page's lease.
    pub(super) fn serve_fault(&self, fault: CpuFault, park: bool) -> Result<Served, FaultFatal> {
        let Some((g, _)) = self.membership() else {
            return self.serve_fault_held(fault, park).map(|s| s.expect("alone, every lease is held"));
        };
        let page = page_of(fault.offset);
        loop {
            let h = g.leases.holder(page);
            if h == LOST {
                let addr = self.arena.base() + fault.offset;
                return Err(FaultFatal(format!(
                    "page {addr:#x} was only on a mirror's device, which was lost or dropped lost"
                )));
            }
            match g.member(h) {
                Some(m) => {
                    if let Some(s) = m.serve_fault_held(fault, park)? {
                        return Ok(s);
                    }
                }
                // Being dropped (bringing its pages home): parked, kicked
                // when its drop is done; or waited for.
                None if park => return Ok(Served::Again),
                None => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    }

    /// A new allocation `[start, start + len)` of member 0 (under its update
    /// lock), copied into each mirror; a slab page marked so.
    pub(super) fn copy_alloc_to_mirrors(&self, start: usize, len: usize, slab: bool) -> Result<(), AllocError> {
        let Some((g, _)) = self.membership() else { return Ok(()) };
        let ms = g.mirrors();
        // Every mirror's import first: one failing leaves no mirror with
        // the range (the caller frees it).
        for m in &ms {
            m.gpu
                .import_coherent((start + len) as u64, |o, l| m.arena.populate_host(o, l).map_err(|e| e.to_string()))
                .map_err(AllocError::Os)?;
        }
        for m in &ms {
            copy_alloc(&mut m.state.lock(), start, len, slab);
        }
        Ok(())
    }

    /// Whether a mirror imports host memory over pages `[a, b)` in place
    /// (`AccessedBy` through it). Member 0's update lock may be held (each
    /// mirror's is taken after it, in lock order).
    pub(super) fn mirror_windows_meet(&self, a: u32, b: u32) -> bool {
        let Some((g, _)) = self.membership() else { return false };
        g.mirrors().iter().any(|m| window_meets(&m.state.lock(), a, b))
    }

    /// Before member 0 frees pages `[a, b)`, with its update lock
    /// *released*: the mirrors' imports of host memory over them go, each
    /// mirror's launches finishing first (as on one device). A mirror's
    /// flight may need member 0's lock (an application scope's `f`
    /// allocating, a CPU fault on member 0's pages), so member 0 holds
    /// nothing while it waits; the free decides again after. `false`
    /// (nothing waited for) when this thread's own application scope is
    /// open on such a mirror: it would wait for itself.
    pub(super) fn drop_mirror_windows(&self, a: u32, b: u32) -> bool {
        let Some((g, _)) = self.membership() else { return true };
        for m in g.mirrors() {
            let mut guard = m.state.lock();
            if window_meets(&guard, a, b) {
                if guard.own_scope_open() {
                    return false;
                }
                m.wait_all_flights(&mut guard);
                if window_meets(&guard, a, b) {
                    m.drop_coherent(&mut guard);
                }
            }
        }
        true
    }

    /// [`Self::drop_mirror_windows`] under member 0's update lock, for the
    /// free itself: a window still over the pages (the free's loop dropped
    /// them with the lock released, and no mirror maps pages in place
    /// without their leases, which member 0 holds) goes only where its
    /// mirror has no launch in flight; `false` (nothing dropped) otherwise,
    /// and the free waits with the lock released and decides again.
    pub(super) fn drop_idle_mirror_windows(&self, a: u32, b: u32) -> bool {
        let Some((g, _)) = self.membership() else { return true };
        // (One mirror's lock at a time; an idle window dropped before a
        // busy one is found is simply gone when the free comes again.)
        for m in g.mirrors() {
            let mut st = m.state.lock();
            if window_meets(&st, a, b) {
                if !st.flights.is_empty() {
                    return false;
                }
                m.drop_coherent(&mut st);
            }
        }
        true
    }

    /// Pages of `[a, b)` lost with a mirror's device go back to member 0
    /// (being freed: their data is gone either way). For a slab page this
    /// is the free of any of its blocks: the page's other blocks then read
    /// zeros instead of failing as lost. (A small allocation met the page
    /// lost before, and retired it: it hands out no more blocks.)
    pub(super) fn reclaim_lost(&self, a: u32, b: u32) {
        let Some((g, _)) = self.membership() else { return };
        g.leases.hand_over(a, b, LOST, HOME, |_| false);
    }

    /// The free of `[start, start + len)` by member 0 (under its update
    /// lock, every lease of it member 0's), copied into each mirror.
    pub(super) fn copy_free_to_mirrors(&self, start: usize, len: usize) {
        let Some((g, _)) = self.membership() else { return };
        let (first, end) = (page_of(start), page_of(start + len));
        for m in g.mirrors() {
            let mut guard = m.state.lock();
            let st = &mut *guard;
            let pages = first as usize..end as usize;
            st.advice[pages.clone()].fill(0);
            st.evicted[pages].fill(false);
            st.table.update_range(first..end, |_, _| Pte::EMPTY);
            st.ranges.free(start);
            st.slabs.forget_page(first);
        }
    }

    /// A mirror's last handle gone (its flights finish first): every page
    /// it holds comes home and its lease goes to member 0; pages that
    /// cannot (a lost device) are marked lost; its member slot is emptied.
    /// Parked faults are kicked after.
    /// Called when its last handle goes, and again (doing nothing) when
    /// its state goes.
    pub(super) fn leave_group(&self) {
        let Some((g, me)) = self.membership() else { return };
        if me == HOME || !std::ptr::eq(g.members.lock()[me as usize].as_ptr(), self) {
            return;
        }
        let top = self.state.lock().top;
        if let Err(e) = self.give_up(0, top, HOME) {
            tracing::error!("svm: a dropped mirror's pages could not come home: {e}");
        }
        // (Under the update lock: a handle another thread took before acts
        // on this member's number only while it is this member's.)
        let st = self.state.lock();
        g.leases.hand_over(0, top, me, LOST, |_| false);
        g.members.lock()[me as usize] = Weak::new();
        drop(st);
        if let Some(k) = self.signals.kick() {
            k.kick();
        }
    }
}

/// Whether member state `st`'s in-place window covers a page of `[a, b)`.
fn window_meets(st: &State, a: u32, b: u32) -> bool {
    st.coherent.as_ref().is_some_and(|c| c.first < b && a < c.end)
}
