//! # svm-pagetable
//!
//! The device page table of the svm runtime and (as it grows) the HMM mirror
//! protocol that keeps it in step with the host. Pure Rust, no unsafe.
//!
//! * [`pte`]: the 32-bit entry shared with the WGSL prelude.
//! * [`table`]: the host copy of the table, with per-leaf dirty tracking so that
//!   a launch uploads only what changed.
#![forbid(unsafe_code)]

pub mod pte;
pub mod table;

pub use pte::{FrameIndex, PageIndex, Pte, PAGE_SHIFT, PAGE_SIZE};
pub use table::{PageTable, UploadBatch, LEAF_PTES};
