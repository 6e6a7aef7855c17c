//! The runtime's state under the update lock (`Inner::state`): per-page
//! residency (frames, read-only copies, advice, the resident index), the
//! host copy of the page table, allocations, launches in flight, and the
//! queries every step of the data flow asks of them.

use super::*;

/// Bits of [`State::advice`].
pub(super) mod advice {
    /// Keep read-only device copies across launches; CPU writes are caught.
    pub const READ_MOSTLY: u8 = 1;
    /// Migrate written pages back to the host right after each launch.
    pub const PREFER_HOST: u8 = 2;
    /// Evict these pages only when nothing else can go.
    pub const PREFER_DEVICE: u8 = 4;
    /// AccessedBy: the device uses the host copy in place (never migrates).
    pub const COHERENT: u8 = 8;
}

/// A range of host memory the device reads and writes in place (the seed's
/// DEVICE_PUBLIC, UVM's AccessedBy): its pages never migrate; their PTEs say
/// COHERENT and the prelude reaches them through the coherent window.
pub(super) struct Coherent {
    /// First page and end page of the range.
    pub(super) first: u32,
    pub(super) end: u32,
    /// The bind group with the imported buffer as the coherent window (the
    /// import lives as long as the buffer it is bound through).
    pub(super) bind_group: wgpu::BindGroup,
    pub(super) _import: crate::vk::HostImport,
    /// Chosen by the runtime for a launch larger than the pool (not the
    /// program's `AccessedBy`): replaced when another launch needs the
    /// window, and by the program's advice.
    pub(super) auto: bool,
}

/// Pages per region of the resident index ([`State::resident_count`]).
pub(super) const REGION_PAGES: u32 = 512;

impl State {
    /// The state of a new runtime: `arena_len` bytes, `pages` pages, every
    /// page unallocated and on the host.
    ///
    /// The per-page vectors cover the whole arena but start as zero bits
    /// (the OS commits their memory as pages are used, not for a large
    /// reservation); the device tables cover what is allocated (`top`).
    pub(super) fn new(arena_len: usize, pages: u32, frames: Frames) -> Self {
        let n = pages as usize;
        let mut table = PageTable::new(pages);
        // The device's table starts zeroed (all EMPTY) like this one.
        table.mark_clean();
        State {
            ranges: RangeAllocator::new(arena_len),
            frames_of: FrameMap::new(n),
            top: 0,
            tables: None,
            resident_count: vec![0; pages.div_ceil(REGION_PAGES) as usize],
            table,
            frames,
            mapped: Vec::new(),
            pinned: Vec::new(),
            dup: vec![false; n],
            last_use: vec![0; n],
            advice: vec![0; n],
            epoch: 0,
            evicted: vec![false; n],
            last_refault: None,
            last_fault_end: None,
            prefer_host_later: Vec::new(),
            coherent: None,
            owned: std::collections::HashSet::new(),
            leaked: std::collections::HashSet::new(),
            discard: Vec::new(),
            flights: Vec::new(),
            deferred_free: Vec::new(),
            slabs: crate::slab::Slabs::default(),
            write_bytes: Vec::new(),
            discarded_fresh: Vec::new(),
            stamps_busy: false,
            copies: None,
        }
    }

    /// The device owns the page (its data is only there).
    pub(super) fn owned(&self, p: u32) -> bool {
        self.frames_of.get(p as usize) != HOST && !self.dup[p as usize]
    }

    /// Making page `p` resident on the device takes a frame and a copy: it
    /// is on the host only, and not used in place (`AccessedBy`).
    pub(super) fn migrates(&self, p: u32) -> bool {
        self.frames_of.get(p as usize) == HOST && self.advice[p as usize] & advice::COHERENT == 0
    }

    /// A pass that may be running on the device (queued launches', a
    /// driven launch's, the application's in another thread's
    /// `with_bindings`; not a prefetch's or a fault's claim, which has no
    /// pass). (The thread in `with_bindings` does not wait for its own
    /// passes: a copy it queues runs after them anyway.)
    pub(super) fn running_pass(&self) -> Option<&Arc<flight::FlightShared>> {
        let others = |t: &std::thread::ThreadId| *t != std::thread::current().id();
        self.flights
            .iter()
            .find(|f| (!f.claim || f.app_passes.as_ref().is_some_and(others)) && !f.shared.gpu_done())
            .map(|f| &f.shared)
    }

    /// This thread's own application scope (`with_bindings`) is open on
    /// this member: waiting for every flight would wait for it.
    pub(super) fn own_scope_open(&self) -> bool {
        let me = std::thread::current().id();
        self.flights.iter().any(|f| f.app_passes == Some(me))
    }

    /// Page `p`'s contents are discarded by the running launch.
    pub(super) fn discarded(&self, p: u32) -> bool {
        let i = self.discard.partition_point(|r| r.1 <= p);
        self.discard.get(i).is_some_and(|r| r.0 <= p)
    }

    /// Give page `p` frame `f` (or [`HOST`]: none); returns the old one.
    /// Every change of `frames_of` goes through here, so that the resident
    /// index stays exact.
    pub(super) fn set_frame(&mut self, p: u32, f: u32) -> u32 {
        let old = self.frames_of.replace(p as usize, f);
        let r = (p / REGION_PAGES) as usize;
        match (old == HOST, f == HOST) {
            (true, false) => self.resident_count[r] += 1,
            (false, true) => self.resident_count[r] -= 1,
            _ => {}
        }
        old
    }

    /// Every page with a device frame (device-owned or a read-only copy),
    /// ascending; the cost follows the resident set (regions of
    /// [`REGION_PAGES`] with none are skipped), not the arena.
    pub(super) fn resident_pages(&self) -> impl Iterator<Item = u32> + '_ {
        let regions = self.top.div_ceil(REGION_PAGES) as usize;
        self.resident_count[..regions].iter().enumerate().filter(|(_, &c)| c > 0).flat_map(move |(r, _)| {
            let a = r as u32 * REGION_PAGES;
            let b = (a + REGION_PAGES).min(self.top);
            (a..b).filter(move |&p| self.frames_of.get(p as usize) != HOST)
        })
    }
}

/// Launches after a refault during which eviction treats the pool as
/// thrashing (most recently used first).
pub(super) const THRASH_WINDOW: u32 = 16;

/// Sentinel of [`State::frames_of`]: the page is not on the device.
pub(super) const HOST: u32 = FrameMap::HOST;
/// Size of the device→host staging buffer, in pages (2 MiB): the largest
/// span one CPU fault, prefetch or eviction batch moves.
pub(super) const STAGING_PAGES: u32 = 512;

/// Mutable state, under the update lock.
pub(super) struct State {
    pub(super) ranges: RangeAllocator,
    /// Per arena page: its pool frame when the device owns it, else [`HOST`].
    /// Changed only through [`State::set_frame`].
    pub(super) frames_of: FrameMap,
    /// End (page) of the highest allocation ever made: the allocated
    /// high-water mark. No page above it was ever allocated; scans of the
    /// arena stop here, and the device tables cover at least this.
    pub(super) top: u32,
    /// The device's page table and launch log, covering `top` or more
    /// pages once made (see [`Inner::tables`]).
    pub(super) tables: Option<crate::gpu::Tables>,
    /// Per region of [`REGION_PAGES`] pages: how many have a frame (the
    /// resident index: eviction and replayable launches visit only regions
    /// with resident pages).
    pub(super) resident_count: Vec<u32>,
    pub(super) table: PageTable,
    pub(super) frames: Frames,
    /// Pages whose PTE was made valid for the last launch (reset before the
    /// next one).
    pub(super) mapped: Vec<(u32, u32)>,
    /// The working set of the running launch or prefetch: never evicted to
    /// make room for it. Empty between operations (a finished launch's pages
    /// are ordinary LRU candidates).
    pub(super) pinned: Vec<(u32, u32)>,
    /// Per arena page: the device holds a read-only duplicate for the
    /// running launch (dropped at its end); the CPU copy stays current.
    pub(super) dup: Vec<bool>,
    /// Per arena page: the launch epoch that last mapped it (LRU eviction).
    pub(super) last_use: Vec<u32>,
    /// Per arena page: [`advice`] bits set by [`Svm::advise`].
    pub(super) advice: Vec<u8>,
    /// Launches so far.
    pub(super) epoch: u32,
    /// Per arena page: evicted (written back to make room) and not needed
    /// since; a launch that needs it again is a *refault*.
    pub(super) evicted: Vec<bool>,
    /// The epoch of the last refault: eviction treats the pool as thrashing
    /// for [`THRASH_WINDOW`] launches after it.
    pub(super) last_refault: Option<u32>,
    /// End (page) of the span the last CPU fault brought back: a fault
    /// there is the next step of a sequential stream.
    pub(super) last_fault_end: Option<u32>,
    /// `PreferredLocation(Host)` pages a retired launch used, whose move
    /// home was put off while a pass may run (`flush_preferred_host`).
    pub(super) prefer_host_later: Vec<(u32, u32)>,
    /// The range advised `AccessedBy`, imported for in-place device access.
    pub(super) coherent: Option<Coherent>,
    /// Pages the running launch discards (`Binding::write_discard`): zeroed
    /// on the device instead of copied in; empty between launches.
    pub(super) discard: Vec<(u32, u32)>,
    /// Sub-page allocations: size-class slabs in arena pages. A slab page
    /// is one range of `ranges`; its PTE is never writable (pointer writes
    /// to its blocks are admitted only by byte-exact extents of what a
    /// launch declared read-write: a neighbour block may be borrowed).
    pub(super) slabs: crate::slab::Slabs,
    /// The preparing launch's read-write declared byte ranges (arena
    /// offsets), for the byte-exact extents of slab pages; empty between.
    pub(super) write_bytes: Vec<(usize, usize)>,
    /// Pages the preparing launch cleared on the device instead of copying
    /// in (`write_discard`): their data is only in the host copy until the
    /// launch submits; a launch that fails before gives them back to the
    /// host. Empty between launches.
    pub(super) discarded_fresh: Vec<(u32, u32)>,
    /// Passes submitted and not yet retired, oldest first (see `flight`).
    pub(super) flights: Vec<flight::InFlight>,
    /// Frames a device-side move left, freed when the launch that moved
    /// them is done (its pass takes them over).
    pub(super) deferred_free: Vec<u32>,
    /// The GPU timestamp query set belongs to a pass in flight.
    pub(super) stamps_busy: bool,
    /// Host → device copies of the launch being prepared, made once its
    /// flight is recorded and the lock released (`residency::to_device`);
    /// `None` outside such a launch: copies are made at once.
    pub(super) copies: Option<Vec<residency::CopyIn>>,
    /// Starts of the live allocations a typed owner ([`ManagedVec`]) holds:
    /// the raw [`Svm::free`] refuses them (only the owner's drop frees).
    pub(super) owned: std::collections::HashSet<usize>,
    /// Starts of allocations freed on pages a lost device may still write:
    /// kept allocated for good (`Inner::leak`).
    pub(super) leaked: std::collections::HashSet<usize>,
}
