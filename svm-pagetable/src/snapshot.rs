//! Range snapshot and range fault (the seed's `hmm_vma_get_pfns` and
//! `hmm_vma_fault`, in the request form of the modern `hmm_range_fault`).
//!
//! The caller chooses the bit encoding of the results ([`Encoding`], the
//! seed's `range->flags[]`, `range->values[]` and `pfn_shift`) and asks per
//! page for a read or write fault, with the same flag bits, through
//! `(pfns[i] & pfn_flags_mask) | default_flags`.

use std::sync::Arc;

use crate::error::{FaultReason, RangeError};
use crate::mirror::MirrorId;
use crate::pte::{FrameIndex, PageIndex, Pte};
use crate::range::{ChunkOrder, PageRange};
use crate::space::{AddressSpace, HostState, PageState, Prot};

/// The bit encoding of snapshot results, chosen by the caller.
///
/// A present page is `flags | pfn << pfn_shift | order << order_shift`, where
/// `pfn` is the arena page index for host pages and the pool frame for
/// device-private pages. `none`, `error` and `special` are whole values.
/// Requests use the `valid` (fault) and `write` (write fault) bits.
///
/// The flag bits and the order field must not overlap the pfn field.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// Present and readable by the device (seed `HMM_PFN_VALID`).
    pub valid: u64,
    /// Writable (seed `HMM_PFN_WRITE`).
    pub write: u64,
    /// With `valid`: device-private memory of *this* mirror; pfn is its
    /// frame (seed `HMM_PFN_DEVICE_PRIVATE`).
    pub device_private: u64,
    /// Without `valid`: device-private memory of *another* mirror, which this
    /// one cannot reach. Set it to 0 to report such pages as plain `none`,
    /// as the modern kernel does.
    pub device_private_other: u64,
    /// Value of a page with nothing behind it yet, or in flight (seed
    /// `HMM_PFN_NONE`).
    pub none: u64,
    /// Value of a page that is unallocated, freed or allows no access (seed
    /// `HMM_PFN_ERROR`).
    pub error: u64,
    /// Value of a page of special memory (seed `HMM_PFN_SPECIAL`).
    pub special: u64,
    /// Shift of the pfn field.
    pub pfn_shift: u32,
    /// Shift of a 5-bit field holding the large-entry order (log2 pages), if
    /// wanted (the modern `HMM_PFN_ORDER_SHIFT`).
    pub order_shift: Option<u32>,
}

impl Encoding {
    /// The modern kernel's layout: flags in the top bits, pfn in the low bits.
    pub const DEFAULT: Encoding = Encoding {
        valid: 1 << 63,
        write: 1 << 62,
        error: 1 << 61,
        device_private: 1 << 60,
        device_private_other: 1 << 59,
        special: 1 << 58,
        none: 0,
        pfn_shift: 0,
        order_shift: Some(52),
    };

    fn order_bits(&self, order: ChunkOrder) -> u64 {
        self.order_shift.map_or(0, |s| u64::from(order.log2()) << s)
    }

    fn flag_mask(&self) -> u64 {
        self.valid
            | self.write
            | self.device_private
            | self.device_private_other
            | self.order_shift.map_or(0, |s| 0x1f << s)
    }

    /// Decode one result.
    pub fn decode(&self, v: u64) -> SnapshotEntry {
        if v == self.error {
            return SnapshotEntry::Error;
        }
        if v == self.special {
            return SnapshotEntry::Special;
        }
        if v & self.valid != 0 {
            let pfn = u32::try_from((v & !self.flag_mask()) >> self.pfn_shift).unwrap_or(u32::MAX);
            let order =
                self.order_shift.and_then(|s| ChunkOrder::from_log2(((v >> s) & 0x1f) as u32)).unwrap_or_default();
            let write = v & self.write != 0;
            if v & self.device_private != 0 {
                if let Some(frame) = FrameIndex::new(pfn) {
                    return SnapshotEntry::Device { frame, write, order };
                }
                return SnapshotEntry::Error;
            }
            return SnapshotEntry::Host { page: PageIndex(pfn), write, order };
        }
        if self.device_private_other != 0 && v & self.device_private_other != 0 {
            return SnapshotEntry::OtherDevice;
        }
        SnapshotEntry::NotPresent
    }
}

impl Default for Encoding {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A decoded result (the kinds of the seed's `hmm_pfn_value_e` and flags).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotEntry {
    /// VALID (+ WRITE): in host memory at arena page `page`.
    Host {
        /// The host page (the pfn).
        page: PageIndex,
        /// Writable.
        write: bool,
        /// The large entry it is part of.
        order: ChunkOrder,
    },
    /// VALID | DEVICE_PRIVATE (+ WRITE): in this mirror's own pool.
    Device {
        /// Pool frame.
        frame: FrameIndex,
        /// Writable.
        write: bool,
        /// The large entry it is part of.
        order: ChunkOrder,
    },
    /// Device-private memory of another mirror.
    OtherDevice,
    /// NONE: allocated, nothing behind it yet, or in flight.
    NotPresent,
    /// ERROR: unallocated, freed, or no access.
    Error,
    /// SPECIAL.
    Special,
}

impl SnapshotEntry {
    /// The device PTE a mirror whose pool is the [`Pte`] frame space would
    /// commit: its own pages resident, other allocated pages `ALLOCATED`
    /// (not resident: the device faults or the runtime migrates), the rest
    /// `EMPTY` (an error on access).
    pub fn to_pte(self) -> Pte {
        match self {
            SnapshotEntry::Device { frame, write, .. } => Pte::resident(frame, write),
            SnapshotEntry::Host { .. } | SnapshotEntry::OtherDevice | SnapshotEntry::NotPresent => Pte::ALLOCATED,
            SnapshotEntry::Error | SnapshotEntry::Special => Pte::EMPTY,
        }
    }
}

/// One snapshot or fault request (the seed's `struct hmm_range`).
#[derive(Debug)]
pub struct RangeRequest<'a> {
    /// The mirror asking: its own device-private pages are reported as such.
    pub mirror: MirrorId,
    /// The pages.
    pub range: PageRange,
    /// The result encoding.
    pub encoding: Encoding,
    /// Request bits for every page (`encoding.valid` = fault,
    /// `encoding.write` = write fault).
    pub default_flags: u64,
    /// Which bits of `pfns[i]` on input are per-page requests.
    pub pfn_flags_mask: u64,
    /// One entry per page: requests in, results out.
    pub pfns: &'a mut [u64],
}

impl<'a> RangeRequest<'a> {
    /// A request with the default encoding and no fault asked for.
    pub fn new(mirror: MirrorId, range: PageRange, pfns: &'a mut [u64]) -> Self {
        Self { mirror, range, encoding: Encoding::DEFAULT, default_flags: 0, pfn_flags_mask: 0, pfns }
    }
    /// Use `encoding`.
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }
    /// Ask for `default_flags | (pfns[i] & pfn_flags_mask)` on each page.
    pub fn with_request(mut self, default_flags: u64, pfn_flags_mask: u64) -> Self {
        self.default_flags = default_flags;
        self.pfn_flags_mask = pfn_flags_mask;
        self
    }
    /// Decoded result of page `i` of the range.
    pub fn entry(&self, i: usize) -> SnapshotEntry {
        self.encoding.decode(self.pfns[i])
    }
}

/// What a walk found that needs the state lock dropped.
enum Walk {
    Done,
    Fault(u32, FaultReason),
    /// Other mirrors' pages to take back (sorted page numbers).
    TakeBack(Vec<u32>),
    /// A requested page is in flight.
    InFlight,
}

fn encode_state(enc: &Encoding, me: MirrorId, page: u32, state: PageState, order: ChunkOrder) -> u64 {
    match state {
        PageState::Unallocated => enc.error,
        PageState::Special => enc.special,
        PageState::Empty { prot } | PageState::Migrating { prot, .. } if prot.readable() => enc.none,
        PageState::Host { prot, writable } if prot.readable() => {
            enc.valid
                | if writable { enc.write } else { 0 }
                | enc.order_bits(order)
                | (u64::from(page) << enc.pfn_shift)
        }
        PageState::Device { prot, owner, frame } if prot.readable() => {
            if owner == me {
                enc.valid
                    | enc.device_private
                    | if prot.writable() { enc.write } else { 0 }
                    | enc.order_bits(order)
                    | (u64::from(frame.get()) << enc.pfn_shift)
            } else {
                enc.none | enc.device_private_other
            }
        }
        // Allocated, no access.
        _ => enc.error,
    }
}

fn walk(st: &mut HostState, req: &mut RangeRequest<'_>, fault: bool) -> Walk {
    let enc = req.encoding;
    let me = req.mirror;
    let start = req.range.start().0;
    // Checked by the caller: one entry per page.
    let n = req.range.len();
    let mut take_back = Vec::new();
    let mut in_flight = false;
    let mut i = 0u32;
    while i < n {
        let p = start + i;
        let page = st.pages[p as usize];
        // The unit path (the seed's hmm_vma_handle_pmd): a whole large entry
        // inside the range, no fault to handle, filled in one go.
        let chunk = page.order.pages();
        if chunk > 1 && !fault && p & (chunk - 1) == 0 && i + chunk <= n {
            let base = encode_state(&enc, me, p, page.state, page.order);
            let step = if base & enc.valid != 0 { 1u64 << enc.pfn_shift } else { 0 };
            let mut v = base;
            for out in &mut req.pfns[i as usize..(i + chunk) as usize] {
                *out = v;
                v = v.wrapping_add(step);
            }
            i += chunk;
            continue;
        }
        if fault {
            let r = (req.pfns[i as usize] & req.pfn_flags_mask) | req.default_flags;
            let want_write = r & enc.write != 0;
            let want = want_write || r & enc.valid != 0;
            if want {
                let reason = match page.state {
                    PageState::Unallocated => Some(FaultReason::Unallocated),
                    PageState::Special => Some(FaultReason::Special),
                    s if s.prot() == Some(Prot::None) => Some(FaultReason::NoAccess),
                    s if want_write && s.prot() == Some(Prot::Read) => Some(FaultReason::ReadOnly),
                    _ => None,
                };
                if let Some(reason) = reason {
                    return Walk::Fault(i, reason);
                }
                match page.state {
                    PageState::Empty { .. } => st.populate(p, want_write),
                    PageState::Host { writable: false, .. } if want_write => st.upgrade_write(p),
                    PageState::Device { owner, .. } if owner != me => take_back.push(p),
                    PageState::Migrating { .. } => in_flight = true,
                    _ => {}
                }
            }
        }
        let page = st.pages[p as usize];
        req.pfns[i as usize] = encode_state(&enc, me, p, page.state, page.order);
        i += 1;
    }
    if in_flight {
        Walk::InFlight
    } else if !take_back.is_empty() {
        Walk::TakeBack(take_back)
    } else {
        Walk::Done
    }
}

impl AddressSpace {
    fn range_check(&self, req: &RangeRequest<'_>) -> Result<(), RangeError> {
        if req.range.end().0 > self.pages() {
            return Err(RangeError::OutOfRange { range: req.range, limit: self.range() });
        }
        if req.pfns.len() != req.range.len() as usize {
            return Err(RangeError::LengthMismatch { pages: req.range.len(), entries: req.pfns.len() });
        }
        Ok(())
    }

    /// Snapshot the host state of `req.range` without faulting anything (the
    /// seed's `hmm_vma_get_pfns`; requests in `pfns` are ignored). Large
    /// entries are filled as units.
    ///
    /// The snapshot is only a guess until committed under the mirror's update
    /// lock after a successful [`UpdateGuard::read_retry`] check.
    ///
    /// # Errors
    /// `Busy` when `!blockable` and the state lock is held; `OutOfRange`,
    /// `LengthMismatch`, `Released`.
    ///
    /// [`UpdateGuard::read_retry`]: crate::UpdateGuard::read_retry
    pub fn range_snapshot(&self, req: &mut RangeRequest<'_>, blockable: bool) -> Result<(), RangeError> {
        self.range_check(req)?;
        let mut st = self.lock_state(blockable).ok_or(RangeError::Busy)?;
        if st.released {
            return Err(RangeError::Released);
        }
        let _ = walk(&mut st, req, false);
        Ok(())
    }

    /// Fault in what `req` asks for, then snapshot (the seed's
    /// `hmm_vma_fault`, in the form of the modern `hmm_range_fault`). Empty
    /// pages are populated (as large entries where the allocation allows),
    /// read-only host pages made writable for write requests, other mirrors'
    /// device-private pages taken back to the host (their owners copy), and
    /// pages in flight waited for. Pages not asked for are only snapshotted.
    ///
    /// # Errors
    /// `Fault` for a requested page that cannot be faulted (its entry is set
    /// to `error`, the entries after it to `none`); `Busy` when `!blockable`
    /// and it would have to wait; `OutOfRange`, `LengthMismatch`, `Released`.
    pub fn range_fault(self: &Arc<Self>, req: &mut RangeRequest<'_>, blockable: bool) -> Result<(), RangeError> {
        self.range_check(req)?;
        loop {
            let mut st = self.lock_state(blockable).ok_or(RangeError::Busy)?;
            if st.released {
                return Err(RangeError::Released);
            }
            match walk(&mut st, req, true) {
                Walk::Done => return Ok(()),
                Walk::Fault(i, reason) => {
                    req.pfns[i as usize] = req.encoding.error;
                    let none = req.encoding.none;
                    req.pfns[i as usize + 1..].iter_mut().for_each(|v| *v = none);
                    return Err(RangeError::Fault { page: PageIndex(req.range.start().0 + i), reason });
                }
                Walk::InFlight => {
                    if !blockable {
                        return Err(RangeError::Busy);
                    }
                    drop(self.wait_migration(st));
                }
                Walk::TakeBack(pages) => {
                    drop(st);
                    match self.take_back(req.range, blockable, |p| pages.binary_search(&p.0).is_ok()) {
                        Ok(()) => {}
                        Err(crate::error::SpaceError::Released) => return Err(RangeError::Released),
                        Err(_) => return Err(RangeError::Busy),
                    }
                }
            }
        }
    }
}
