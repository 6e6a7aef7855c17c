//! Typed errors of the protocol (thiserror, `#[non_exhaustive]`).
//!
//! Only what a caller cannot anticipate is an error: contention (`Again`,
//! `Busy`), faults on pages the host side does not allow, a torn-down address
//! space. Passing a range outside the arena is also an error rather than a
//! panic, because ranges come from user addresses.

use crate::mirror::MirrorId;
use crate::pte::PageIndex;
use crate::range::PageRange;

/// The seed's `-EAGAIN`: a non-blockable invalidation found a mirror's update
/// lock held (or a mirror that would have to wait for its device). Nothing was
/// changed on the host side; try again from a context that may block.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("would block: a mirror's update lock is held or its device is busy")]
pub struct Again;

/// Why a page cannot be faulted in (the seed's `HMM_PFN_ERROR` cases).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultReason {
    /// Not part of any allocation (never allocated, or freed).
    Unallocated,
    /// The allocation allows no access (`PROT_NONE`).
    NoAccess,
    /// A write was asked for on a read-only page.
    ReadOnly,
    /// The page is special (imported or fixed memory) and cannot be faulted.
    Special,
}

/// Errors of [`range_snapshot`](crate::AddressSpace::range_snapshot) and
/// [`range_fault`](crate::AddressSpace::range_fault).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// Non-blocking call, and it would have had to wait (the state lock was
    /// held, or a page was in flight). The seed's `-EBUSY`.
    #[error("busy: the address space is being changed or a page is in flight")]
    Busy,
    /// A page asked for could not be faulted; its entry holds the encoding's
    /// `error` value and the entries after it hold `none`. The seed's `-EFAULT`
    /// / `-EPERM`.
    #[error("cannot fault page {page:?}: {reason:?}")]
    Fault {
        /// The first page that failed.
        page: PageIndex,
        /// Why.
        reason: FaultReason,
    },
    /// The range leaves the arena or the mirror's range.
    #[error("{range:?} is outside {limit:?}")]
    OutOfRange {
        /// What was asked.
        range: PageRange,
        /// What is allowed.
        limit: PageRange,
    },
    /// `pfns` does not have one entry per page.
    #[error("{pages} pages but {entries} entries")]
    LengthMismatch {
        /// Pages in the range.
        pages: u32,
        /// Entries given.
        entries: usize,
    },
    /// The address space was released.
    #[error("the address space was released")]
    Released,
}

/// Errors of the host-side operations of an [`AddressSpace`](crate::AddressSpace).
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpaceError {
    /// See [`Again`].
    #[error(transparent)]
    Again(#[from] Again),
    /// Non-blocking call, and a page of the range was in flight or the state
    /// lock was held.
    #[error("busy: a page of the range is in flight")]
    Busy,
    /// The range leaves the arena.
    #[error("{range:?} is outside the arena of {pages} pages")]
    OutOfRange {
        /// What was asked.
        range: PageRange,
        /// Arena size.
        pages: u32,
    },
    /// `alloc` over pages that are already allocated.
    #[error("page {0:?} is already allocated")]
    Overlap(PageIndex),
    /// A CPU fault on a page the host side does not allow.
    #[error("cannot fault page {page:?}: {reason:?}")]
    Fault {
        /// The first page that failed.
        page: PageIndex,
        /// Why.
        reason: FaultReason,
    },
    /// `mirror_unregister` of a mirror that still owns device-private pages:
    /// migrate them back first, or their contents would be lost.
    #[error("mirror {mirror:?} still owns {pages} device-private pages")]
    OwnsPages {
        /// The mirror.
        mirror: MirrorId,
        /// How many pages.
        pages: u32,
    },
    /// The mirror is not registered with this address space.
    #[error("mirror {0:?} is not registered here")]
    NotRegistered(MirrorId),
    /// A migration outcome that does not fit its target (a device frame for a
    /// migration to the host, or to another mirror).
    #[error("page {0:?}: outcome does not match the migration target")]
    BadOutcome(PageIndex),
    /// The address space was released.
    #[error("the address space was released")]
    Released,
}

/// `Result` with this crate's [`SpaceError`] by default.
pub type Result<T, E = SpaceError> = core::result::Result<T, E>;
