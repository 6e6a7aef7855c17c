//! Choice of CPU fault backend.

use crate::error::MigrateError;

/// Environment variable that overrides the fault backend: `uffd` or
/// `mprotect`.
pub const FAULT_BACKEND_ENV: &str = "SVM_FAULT_BACKEND";

/// How CPU accesses to pages the device owns are caught.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FaultBackendKind {
    /// userfaultfd MINOR faults on the memfd, resolved with
    /// `UFFDIO_CONTINUE` by a handler thread (default).
    Uffd,
    /// `PROT_NONE` + SIGSEGV, forwarded to a service thread, resolved with
    /// `mprotect` (fallback; works without userfaultfd).
    Mprotect,
}

impl FaultBackendKind {
    /// Short name (`"uffd"`, `"mprotect"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Uffd => "uffd",
            Self::Mprotect => "mprotect",
        }
    }

    /// Parse a name as [`Self::name`] writes it.
    pub fn parse(s: &str) -> Result<Self, MigrateError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uffd" | "userfaultfd" => Ok(Self::Uffd),
            "mprotect" | "sigsegv" | "segv" => Ok(Self::Mprotect),
            other => Err(MigrateError::Config(format!(
                "unknown fault backend {other:?} (expected \"uffd\" or \"mprotect\")"
            ))),
        }
    }

    /// The backend named by [`FAULT_BACKEND_ENV`], if set.
    pub fn from_env() -> Result<Option<Self>, MigrateError> {
        match std::env::var(FAULT_BACKEND_ENV) {
            Ok(v) if !v.is_empty() => Self::parse(&v).map(Some),
            _ => Ok(None),
        }
    }
}

impl core::fmt::Display for FaultBackendKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}
