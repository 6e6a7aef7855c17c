//! # svm-pagetable
//!
//! The device page table of the svm runtime and the HMM mirror protocol that
//! keeps it in step with the host. Pure Rust, no unsafe.
//!
//! * [`pte`]: the 32-bit entry shared with the WGSL prelude.
//! * [`table`]: the host copy of the table, two levels, with per-leaf dirty
//!   tracking so that a launch uploads only what changed.
//! * [`space`], [`mirror`], [`snapshot`]: the protocol, described below.
//! * [`outbox`]: device updates sealed under the update lock, sent in
//!   order outside it.
#![doc = include_str!("../PROTOCOL.md")]
#![forbid(unsafe_code)]
#![warn(clippy::cast_possible_truncation)]

pub mod again;
pub mod error;
pub mod lease;
mod loom;
pub mod mirror;
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod outbox;
pub mod pte;
pub mod range;
pub mod snapshot;
pub mod space;
pub mod table;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
#[allow(clippy::cast_possible_truncation, reason = "small test constants")]
mod tests;

pub use again::AgainGate;
pub use error::{Again, FaultReason, RangeError, SpaceError};
pub use lease::{Leases, Member, LOST};
pub use mirror::{IntervalNotifier, InvalidateEvent, Mirror, MirrorId, MirrorOps, Seq, Update, UpdateGuard};
pub use outbox::{Outbox, SendError};
pub use pte::{FrameIndex, PageIndex, Pte, PAGE_SHIFT, PAGE_SIZE};
pub use range::{ChunkOrder, PageRange};
pub use snapshot::{Encoding, RangeRequest, SnapshotEntry};
pub use space::{
    AddressSpace, AllocDescriptor, MigrateOutcome, MigrateTarget, Migration, MigrationId, PageState, Prot,
};
pub use table::{PageTable, UploadBatch, LEAF_PTES};
