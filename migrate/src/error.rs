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
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl MigrateError {
    pub(crate) fn os(op: &'static str) -> impl FnOnce(Errno) -> Self {
        move |source| Self::Os { op, source }
    }
}
