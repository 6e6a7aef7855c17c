//! How device pages are mapped ([`MappingMode`]), and which modes this
//! build has.

use crate::error::SvmError;

/// How device pages are mapped.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MappingMode {
    /// Device pages live in a pool of frames; the page table names the frame
    /// of each page (any device, any wgpu backend).
    Software,
    /// The arena's device view is a sparse buffer: arena page `p` is device
    /// page `p`, backed by memory bound with `vkQueueBindSparse` while
    /// resident; the page table's frame is the page itself. Needs
    /// `sparseBinding` + `sparseResidencyBuffer` (Vulkan, through
    /// `svm::vk`: the `vulkan` feature), and an arena of at most
    /// as many storage bindings as the prelude has windows (32 with
    /// binding arrays, else 4).
    Sparse,
    /// The arena's host memory *is* the device view (imported with
    /// `VK_EXT_external_memory_host`): nothing migrates, kernels read and
    /// write the pages the CPU uses, in place (CUDA's ATS / HMM's
    /// DEVICE_PUBLIC, for the whole arena). The page table still maps
    /// exactly what a launch declares. Needs host import (Vulkan, through
    /// `svm::vk`: the `vulkan` feature) and an arena of at
    /// most as many storage bindings as the prelude has windows; the CPU
    /// must not touch memory a running kernel writes.
    Coherent,
}

/// Environment variable choosing the mapping mode (`software`, `sparse`,
/// `coherent`).
pub const MAPPING_MODE_ENV: &str = "SVM_MAPPING_MODE";

impl MappingMode {
    /// The mode named by [`MAPPING_MODE_ENV`], if set.
    pub fn from_env() -> Result<Option<Self>, SvmError> {
        match std::env::var(MAPPING_MODE_ENV).as_deref() {
            Ok("software") => Ok(Some(Self::Software)),
            Ok("sparse") => Ok(Some(Self::Sparse)),
            Ok("coherent") => Ok(Some(Self::Coherent)),
            Ok("") | Err(_) => Ok(None),
            Ok(other) => {
                Err(SvmError::Config(format!("{MAPPING_MODE_ENV}={other:?}: expected software, sparse or coherent")))
            }
        }
    }

    /// Whether this build has the mode: sparse and coherent need the
    /// Vulkan layer below wgpu (`svm::vk`, the `vulkan` feature); a build
    /// without it refuses them here, before any device is opened.
    pub(crate) fn check_built(self) -> Result<(), SvmError> {
        match self {
            Self::Sparse | Self::Coherent if !cfg!(feature = "vulkan") => Err(SvmError::Config(format!(
                "the {self:?} mapping mode needs the `vulkan` feature of svm-runtime (Vulkan below wgpu: {}); \
                 this build has the software mode only",
                if self == Self::Sparse { "sparse binding" } else { "host memory import" }
            ))),
            _ => Ok(()),
        }
    }
}
