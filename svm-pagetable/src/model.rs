//! A `BTreeMap` model of what the address space should say about each page,
//! shared by the property test (`tests.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/pagetable_protocol.rs`, through the `model`
//! feature). Only the rules both check against live here; each keeps its own
//! bookkeeping (frames handed out, page contents) around it.

use std::collections::BTreeMap;

use crate::{ChunkOrder, FaultReason, FrameIndex, PageIndex, Prot, SnapshotEntry};

/// What the model knows of one allocated page.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ModelPage {
    /// Allocated, never populated.
    Empty(Prot),
    /// On the host; `true`: mapped writable.
    Host(Prot, bool),
    /// On mirror `.1`'s device at frame `.2`.
    Device(Prot, usize, u32),
    /// A special (device-private, unmovable) range.
    Special,
}

impl ModelPage {
    /// The page's protection (`None` for special pages).
    pub fn prot(self) -> Option<Prot> {
        match self {
            ModelPage::Empty(p) | ModelPage::Host(p, _) | ModelPage::Device(p, _, _) => Some(p),
            ModelPage::Special => None,
        }
    }
}

/// Pages and allocations of the model.
#[derive(Default, Debug)]
pub struct PageModel {
    /// Allocated pages.
    pub pages: BTreeMap<u32, ModelPage>,
    /// Allocation start -> (end, largest chunk order).
    pub allocs: BTreeMap<u32, (u32, ChunkOrder)>,
}

impl PageModel {
    /// A host fault on the empty page `p` populates the largest aligned
    /// chunk around it that its allocation allows and that is all empty.
    pub fn populate(&mut self, p: u32, write: bool) {
        let Some((&s, &(e, max))) = self.allocs.range(..=p).next_back().filter(|(_, a)| a.0 > p) else { return };
        let Some(ModelPage::Empty(prot)) = self.pages.get(&p).copied() else { return };
        for order in ChunkOrder::LARGEST_FIRST {
            let n = order.pages();
            let cs = p / n * n;
            if order > max || cs < s || cs + n > e {
                continue;
            }
            if (cs..cs + n).all(|q| self.pages.get(&q) == Some(&ModelPage::Empty(prot))) {
                for q in cs..cs + n {
                    self.pages.insert(q, ModelPage::Host(prot, write && prot.writable()));
                }
                return;
            }
        }
    }

    /// The snapshot entry mirror `me` should see for page `p` (order
    /// stripped to a single page).
    pub fn expect(&self, p: u32, me: usize) -> SnapshotEntry {
        match self.pages.get(&p) {
            None => SnapshotEntry::Error,
            Some(ModelPage::Special) => SnapshotEntry::Special,
            Some(m) if m.prot() == Some(Prot::None) => SnapshotEntry::Error,
            Some(ModelPage::Empty(_)) => SnapshotEntry::NotPresent,
            Some(ModelPage::Host(_, w)) => {
                SnapshotEntry::Host { page: PageIndex(p), write: *w, order: ChunkOrder::Page }
            }
            Some(ModelPage::Device(prot, o, f)) if *o == me => SnapshotEntry::Device {
                frame: FrameIndex::new(*f).expect("model frames fit"),
                write: prot.writable(),
                order: ChunkOrder::Page,
            },
            Some(ModelPage::Device(..)) => SnapshotEntry::OtherDevice,
        }
    }

    /// Why a fault on page `p` must fail, if it must.
    pub fn fault_reason(&self, p: u32, write: bool) -> Option<FaultReason> {
        match self.pages.get(&p) {
            None => Some(FaultReason::Unallocated),
            Some(ModelPage::Special) => Some(FaultReason::Special),
            Some(m) if m.prot() == Some(Prot::None) => Some(FaultReason::NoAccess),
            Some(m) if write && m.prot() == Some(Prot::Read) => Some(FaultReason::ReadOnly),
            _ => None,
        }
    }
}
