//! Creation parameters of a runtime: arena and pool sizes, fault backend
//! and chunk, mapping mode, the application's device, serving in place.

use svm_migrate::FaultBackendKind;

use crate::gpu::MappingMode;

/// Creation parameters of an [`Svm`](crate::Svm).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SvmDescriptor {
    /// Bytes of managed address space (rounded up to 2 MiB), at most 1 TiB
    /// and at most what a page table in the device's largest binding maps
    /// (4 bytes a page: 128 GiB where a binding holds 128 MiB, as on
    /// lavapipe and with wgpu's default limits; refused at creation above).
    /// Reserved, not committed: memory is used as allocations touch it,
    /// and the runtime's per-page state and device tables grow with what is
    /// allocated. Default [`Self::DEFAULT_ARENA_SIZE`] (64 GiB) in the
    /// software mode; the sparse and coherent modes give the whole arena a
    /// device view at creation and so take [`Self::DEFAULT_VIEW_ARENA_SIZE`]
    /// (1 GiB) when this is left at the default (set with
    /// [`Self::arena_size`], it is taken as given, up to the device's
    /// sparse address space / what it can import).
    pub arena_size: usize,
    /// Bytes of device page pool. Default 512 MiB, at most as many storage
    /// bindings' worth as the prelude has windows (32 with binding arrays,
    /// else 4) and at most 64 GiB (a PTE's frame field); 0 is refused.
    pub pool_size: u64,
    /// CPU fault backend; `None`: `SVM_FAULT_BACKEND` if set, else uffd.
    pub fault_backend: Option<FaultBackendKind>,
    /// Bytes brought back per CPU fault: a power of two from 4 KiB to 2 MiB,
    /// aligned. Default 64 KiB.
    pub fault_chunk: usize,
    /// Grow CPU-fault migrations like UVM's tree prefetcher (see
    /// `fault_span`). Default on.
    pub fault_prefetch: bool,
    /// On unified-memory adapters (CPU drivers such as lavapipe, integrated
    /// GPUs), keep the device pool in CPU-mapped memory (the software
    /// mode's segments, the sparse mode's blocks) and migrate by copying it
    /// with the CPU, with no staging copy and no queue round trip. Default on;
    /// `SVM_MAPPED_POOL=0` also turns it off. Discrete GPUs never use it.
    pub host_mapped_pool: bool,
    /// How device pages are mapped; `None`: `SVM_MAPPING_MODE` if set, else
    /// [`MappingMode::Software`].
    pub mapping: Option<MappingMode>,
    /// The application's device to use; `None`: the runtime opens its own.
    pub device: Option<crate::gpu::SharedDevice>,
    /// Where the device imports host memory: serve a range of a launch in
    /// place from host memory (the coherent window) when the launch is
    /// larger than the pool, and while the pool thrashes instead of
    /// evicting (UVM's remote mapping). Default on; off: such launches are
    /// `PoolExhausted`, and thrashing is met by eviction alone.
    pub serve_in_place: bool,
    /// `arena_size` was set with [`Self::arena_size`]: the sparse and
    /// coherent modes take it as given, also when it equals the default.
    pub(crate) arena_size_set: bool,
}

impl Default for SvmDescriptor {
    fn default() -> Self {
        Self {
            arena_size: Self::DEFAULT_ARENA_SIZE,
            pool_size: 512 << 20,
            fault_backend: None,
            fault_chunk: 64 << 10,
            fault_prefetch: true,
            host_mapped_pool: true,
            mapping: None,
            device: None,
            serve_in_place: true,
            arena_size_set: false,
        }
    }
}

impl SvmDescriptor {
    /// The default arena reservation (64 GiB).
    pub const DEFAULT_ARENA_SIZE: usize = 64 << 30;
    /// The sparse and coherent modes' arena when `arena_size` is left at
    /// the default (1 GiB).
    pub const DEFAULT_VIEW_ARENA_SIZE: usize = 1 << 30;
    /// The largest arena of the sparse and coherent modes (64 GiB: a PTE
    /// names a page of the view in its 24-bit frame field). In practice
    /// also what the device's windows bind (32 × its largest binding with
    /// binding arrays, 4 × without: 4 GiB on lavapipe), its sparse address
    /// space (sparse; 2 GiB on lavapipe) or what it can import (coherent);
    /// creation says which one refused.
    pub const MAX_VIEW_ARENA_SIZE: usize = 64 << 30;
    /// The largest arena (1 TiB).
    pub const MAX_ARENA_SIZE: usize = 1 << 40;

    /// Set the arena size.
    pub fn arena_size(mut self, bytes: usize) -> Self {
        self.arena_size = bytes;
        self.arena_size_set = true;
        self
    }
    /// Set the device pool size.
    pub fn pool_size(mut self, bytes: u64) -> Self {
        self.pool_size = bytes;
        self
    }
    /// Choose the fault backend.
    pub fn fault_backend(mut self, kind: FaultBackendKind) -> Self {
        self.fault_backend = Some(kind);
        self
    }
    /// Turn the CPU-fault prefetcher on or off.
    pub fn fault_prefetch(mut self, on: bool) -> Self {
        self.fault_prefetch = on;
        self
    }
    /// Choose the mapping mode.
    pub fn mapping(mut self, mode: MappingMode) -> Self {
        self.mapping = Some(mode);
        self
    }
    /// Allow or forbid the host-mapped pool.
    pub fn host_mapped_pool(mut self, on: bool) -> Self {
        self.host_mapped_pool = on;
        self
    }
    /// Use the application's device ([`crate::SharedDevice`]) instead of
    /// opening one: [`Svm::device`](crate::Svm::device) and [`Svm::queue`](crate::Svm::queue) are then the
    /// application's, and its own pipelines can use managed ranges
    /// ([`Svm::with_bindings`](crate::Svm::with_bindings)).
    pub fn device(mut self, shared: crate::gpu::SharedDevice) -> Self {
        self.device = Some(shared);
        self
    }
    /// Allow or forbid serving ranges in place when the pool is too small
    /// ([`Self::serve_in_place`]).
    pub fn serve_in_place(mut self, on: bool) -> Self {
        self.serve_in_place = on;
        self
    }
    /// Set the fault chunk.
    pub fn fault_chunk(mut self, bytes: usize) -> Self {
        self.fault_chunk = bytes;
        self
    }
}
