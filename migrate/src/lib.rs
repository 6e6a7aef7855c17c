//! # svm-migrate
//!
//! Mechanism for moving managed pages between the host and a device, with
//! the policy (what to move, when, in what chunks) left to the runtime, as
//! HMM leaves it to the driver.
//!
//! * [`Arena`]: one memfd mapped twice. Programs dereference the *user view*;
//!   the runtime reads and writes the *alias view*, which never faults. Pages
//!   the device owns are zapped from the user view ([`Arena::zap`]) and come
//!   back with [`Arena::restore`] after the runtime refreshed their host copy.
//! * [`FaultBackendKind`]: how a CPU touch of a zapped page is caught —
//!   userfaultfd MINOR faults (default) or `PROT_NONE` + SIGSEGV (fallback),
//!   selectable by API and by the `SVM_FAULT_BACKEND` environment variable.
//! * [`FaultService`]: the per-arena thread that receives faults in batches
//!   and calls the runtime's [`FaultHandler`].
//!
//! All `unsafe` lives in [`sys`], one module per OS facility, each with a
//! `# Safety` note and a `// SAFETY:` argument on every block.
#![deny(unsafe_code)]

pub mod arena;
pub mod backend;
pub mod error;
pub mod service;
pub mod sys;

pub use arena::{svm_page_size, Arena};
pub use backend::{FaultBackendKind, FAULT_BACKEND_ENV};
pub use error::{MigrateError, Result};
pub use service::{CpuFault, FaultFatal, FaultHandler, FaultService, Kick, Served};
