//! Host-side page state of an [`AddressSpace`](super::AddressSpace): the
//! access rights ([`Prot`]), the state of one page ([`PageState`]), the
//! allocations (the VMA tree) and [`HostState`], everything behind the state
//! lock, with its large-entry bookkeeping.

use std::collections::BTreeMap;

use super::MigrationId;
use crate::mirror::MirrorId;
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

    pub(super) fn with_prot(self, new: Prot) -> Self {
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
pub(super) struct Alloc {
    pub(super) end: u32,
    pub(super) max_order: ChunkOrder,
}

/// Everything behind the state lock.
pub(crate) struct HostState {
    pub(crate) pages: Vec<Page>,
    /// start -> allocation (the VMA tree).
    pub(super) allocs: BTreeMap<u32, Alloc>,
    pub(super) next_migration: u32,
    pub(crate) released: bool,
}

impl HostState {
    fn alloc_of(&self, page: u32) -> Option<(u32, Alloc)> {
        self.allocs.range(..=page).next_back().filter(|(_, a)| a.end > page).map(|(s, a)| (*s, *a))
    }

    /// Split any large entry that straddles a boundary of `range`, so that
    /// changing `range` leaves every remaining chunk uniform.
    pub(super) fn split_boundaries(&mut self, range: PageRange) {
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
