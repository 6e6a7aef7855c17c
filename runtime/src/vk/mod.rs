//! # Vulkan interop: sparse device memory and imported host memory under wgpu
//!
//! wgpu does not expose two Vulkan facilities the runtime wants:
//!
//! * **sparse buffers** (`sparseBinding` + `sparseResidencyBuffer`): one large
//!   `VkBuffer` whose pages are bound to, and unbound from, blocks of device
//!   memory at run time with `vkQueueBindSparse`. Bound through a single
//!   wgpu storage binding, this is a *device page table in hardware*: a
//!   kernel indexes the buffer directly, and moving a page is a re-bind, not
//!   a translation in WGSL ([`sparse`]).
//! * **imported host memory** (`VK_EXT_external_memory_host`): an mmap'd
//!   host range becomes `VkDeviceMemory` behind a wgpu storage buffer; a
//!   kernel writes it and the CPU reads the result in place, with no copy
//!   ([`host`]).
//!
//! This module is the only place of the runtime that talks to Vulkan below
//! wgpu. It is *mechanism*: it creates the device, binds pages, imports
//! ranges. Which page goes where (the policy) stays with the runtime.
//!
//! ## The Vulkan sequence
//!
//! 1. [`device::open`] picks the adapter as `gpu.rs` does
//!    (`WGPU_ADAPTER_NAME` substring, else a non-CPU adapter first), asks
//!    wgpu-hal which extensions and feature structs wgpu itself needs
//!    (`required_device_extensions`, `physical_device_features`), adds
//!    `VK_EXT_external_memory_host` and `VK_KHR_buffer_device_address`, sets
//!    `sparseBinding`/`sparseResidencyBuffer` in the core feature struct,
//!    creates the `VkDevice` with ash, and hands it to wgpu
//!    (`Adapter::device_from_raw` → `wgpu::Adapter::create_device_from_hal`).
//!    `request_device` cannot do this: wgpu-hal's `open_with_callback` can
//!    add extensions and `pNext` structs, but the core
//!    `VkPhysicalDeviceFeatures` it passes are private and overwrite ours.
//! 2. A [`RawDevice`] keeps the ash handles (device, queue, memory
//!    properties) and one **timeline semaphore** that orders our raw queue
//!    operations against wgpu's submissions.
//! 3. Raw `VkBuffer`s become wgpu buffers through
//!    `wgpu_hal::vulkan::Buffer::from_raw_externally_owned` +
//!    `wgpu::Device::create_buffer_from_hal`. wgpu never destroys them; the
//!    drop callback we give wgpu-hal does (buffer first, then memory, then
//!    whatever keeps a host range alive), so a raw object lives exactly as
//!    long as wgpu may still use it, whoever holds the last clone.
//!
//! ## Ordering binds against wgpu: the timeline protocol
//!
//! wgpu uses queue family 0, queue 0; on lavapipe (and many GPUs) it is the
//! only queue with `SPARSE_BINDING`, so binds and wgpu's command buffers share
//! one `VkQueue`. Vulkan does **not** order `vkQueueBindSparse` against
//! `vkQueueSubmit` on the same queue (only semaphores and fences do), so a
//! bind could overtake a dispatch submitted before it, or a later dispatch
//! could run before the bind. The protocol, one semaphore `T` per device,
//! its value `v` kept under a mutex:
//!
//! ```text
//!   wgpu submits ... ──► flush: empty wgpu submit, signal T=v+1   (covers all earlier work:
//!                                                                   a signal's first scope is
//!                                                                   everything earlier in
//!                                                                   submission order)
//!                    ──► vkQueueBindSparse: wait T>=v+1, signal T=v+2
//!                    ──► stage "wait T>=v+2" on wgpu-hal's queue (add_wait_semaphore):
//!                        the *next* wgpu submission, whoever makes it, waits for the bind
//! ```
//!
//! Two binds in a row chain the same way (the second bind's flush consumes
//! the staged wait of the first). The host waits on `T` with
//! `vkWaitSemaphores` ([`RawDevice::wait`]); [`TimelinePoint`]s name values.
//! Writes queued with `wgpu::Queue::write_buffer` before a bind land before
//! it: the flush submit carries wgpu's pending writes.
//!
//! What the protocol cannot do is keep two threads off the `VkQueue` at the
//! same instant: a `vkQueueSubmit` inside `wgpu::Queue::submit` racing our
//! `vkQueueBindSparse` breaks Vulkan's external-synchronisation rule, and
//! wgpu exposes no lock we could take. That is why the bind entry points are
//! `unsafe`: the caller (the runtime, which has one state lock) promises no
//! concurrent submits.
//!
//! ## lavapipe (Mesa 25) caveats, measured
//!
//! * Sparse block = 4 KiB (the host page); `sparseAddressSpaceSize` 2 GiB; 128 MiB per
//!   storage binding, so a large arena is used through windows.
//! * `residencyNonResidentStrict` is false: an unbound page reads zero and
//!   keeps writes on lavapipe, but portable code must treat unbound pages
//!   as undefined.
//! * Imported host memory bound *into a sparse page* is silently ignored;
//!   [`host::HostImport`] binds imported memory to a plain buffer only.
//! * lavapipe accepts invalid use silently; run the tests with
//!   `SVM_VALIDATION=1` (the Khronos validation layer, [`validation`]).
//!
//! # Safety
//!
//! Everything here calls Vulkan through ash and wgpu-hal, whose functions
//! are `unsafe` and check almost nothing. Each `unsafe` block carries a
//! `// SAFETY:` argument. The invariants the module keeps:
//!
//! * every raw handle is created from the `VkDevice` wgpu owns, and wgpu
//!   keeps that device alive while any wgpu object (buffer, queue) of ours
//!   exists: we hold `wgpu::Device`/`wgpu::Queue` clones next to the ash
//!   handles;
//! * a raw object wrapped as a wgpu buffer is destroyed only by the drop
//!   callback wgpu-hal runs once wgpu no longer uses it, and a sparse arena
//!   waits for its last bind on the host before releasing its buffer;
//! * queue operations of ours are ordered against wgpu's by the timeline
//!   protocol above; the one thing the types cannot enforce (no concurrent
//!   `wgpu::Queue::submit` during a bind) is an `unsafe fn` contract.

pub mod device;
pub mod host;
pub mod raw;
pub mod sparse;
pub mod validation;

pub use device::{open, DeviceDescriptor, OpenDevice, ValidationMode, VkCaps};
pub use host::{host_read_barrier, HostImport, HostImportError};
pub use raw::{RawDevice, TimelinePoint};
pub use sparse::{BindOutbox, BlockId, SparseArena, SparseArenaDescriptor, SparseError};
pub use validation::{KnownFalsePositive, ValidationCapture, ValidationMessage, KNOWN_FALSE_POSITIVES};

/// Result alias of this module.
pub type Result<T, E = VkError> = core::result::Result<T, E>;

/// Device-level failures of the Vulkan interop layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VkError {
    /// No adapter matched (`WGPU_ADAPTER_NAME`, `WGPU_BACKEND`).
    #[error("no GPU adapter found ({0})")]
    NoAdapter(String),
    /// The object does not come from the Vulkan backend.
    #[error("{0} is not a Vulkan object (this module needs the Vulkan backend)")]
    NotVulkan(&'static str),
    /// A Vulkan call failed.
    #[error("{op} failed: {result}")]
    Vulkan {
        /// The Vulkan entry point.
        op: &'static str,
        /// What it returned.
        #[source]
        result: ash::vk::Result,
    },
    /// wgpu-hal refused to adopt a raw object.
    #[error("wgpu-hal {op} failed: {source}")]
    Hal {
        /// The wgpu-hal entry point.
        op: &'static str,
        /// Its error.
        #[source]
        source: wgpu_hal::DeviceError,
    },
    /// wgpu refused the device.
    #[error("create_device_from_hal / request_device failed: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),
    /// A capability this operation needs is missing on this device.
    #[error("unsupported on this device: {0}")]
    Unsupported(&'static str),
    /// A host wait on the timeline ran out of time.
    #[error("timed out waiting for timeline value {0}")]
    Timeout(u64),
}

impl VkError {
    pub(crate) fn vk(op: &'static str) -> impl FnOnce(ash::vk::Result) -> Self {
        move |result| Self::Vulkan { op, result }
    }
}
