//! Errors of the migration mechanism.

use rustix::io::Errno;

/// Result alias of this crate.
pub type Result<T, E = MigrateError> = core::result::Result<T, E>;

/// What went wrong below the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation, e.g. `"userfaultfd"`.
        op: &'static str,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// The kernel or the process lacks something this backend needs.
    #[error("fault backend {backend} unavailable: {why}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What is missing.
        why: String,
    },
    /// The arena (or its fault service) belongs to another process: this one
    /// is a `fork` child of it, and managed memory is not inherited across
    /// `fork` (both views are `MADV_DONTFORK`; the userfaultfd and the
    /// service's descriptors act on the parent).
    #[error("managed memory is not inherited across fork: the arena belongs to process {owner}, this is {current}")]
    NotInherited {
        /// The process that created the arena.
        owner: i32,
        /// This process.
        current: i32,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl MigrateError {
    pub(crate) fn os(op: &'static str) -> impl FnOnce(Errno) -> Self {
        move |source| Self::Os { op, source }
    }
}
