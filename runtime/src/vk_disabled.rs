//! The cfg-off twin of `svm::vk` (built without the `vulkan` feature): the
//! names the rest of the runtime uses, as types with no values (each wraps
//! the empty [`Never`]; the field is private so that callers' code is not
//! flagged unreachable, and each method is `match self.0 {}`).
//!
//! Without `vk` there is no raw device, so no host import, no sparse arena,
//! no validation capture: `Option<Arc<RawDevice>>`, `Option<HostImport>`,
//! `Option<SparseArena>` and `Option<ValidationCapture>` are always `None`,
//! and the compiler proves every path that would use one dead. The runtime keeps its one code path; what
//! takes the place of each Vulkan facility is the path it already has for a
//! device opened without them:
//!
//! * device: a plain `request_device` (`gpu/open.rs`);
//! * host-mapped pool: no imported segments (`Gpu::pool_host` empty): a
//!   wgpu-mapped pool where the device has `MAPPABLE_PRIMARY_BUFFERS` on
//!   unified memory, staged copies elsewhere;
//! * completion thread: short `Device::poll`s under `Gpu::poll_lock` instead
//!   of host waits on the raw timeline;
//! * sparse and coherent mapping modes, `Advice::AccessedBy`: refused with a
//!   typed error naming the feature (`MappingMode::check_built`,
//!   `make_coherent`) before anything here would be reached;
//! * [`host_read_barrier`]: an empty command buffer (see there).

use std::sync::Arc;
use std::time::Duration;

/// The empty type every twin below wraps.
#[derive(Debug)]
pub(crate) enum Never {}

/// Never constructed: without the `vulkan` feature no operation fails with a
/// Vulkan error.
#[derive(Debug)]
pub(crate) struct VkError(Never);

impl core::fmt::Display for VkError {
    fn fmt(&self, _: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {}
    }
}

/// Capabilities of a raw device (never queried: there is none).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct VkCaps {
    pub sparse: bool,
    pub residency_non_resident_strict: bool,
    pub min_imported_host_pointer_alignment: u64,
}

/// No raw device exists in this build.
pub(crate) struct RawDevice(Never);

impl RawDevice {
    pub fn caps(&self) -> &VkCaps {
        match self.0 {}
    }
    pub fn mark_lost(&self) {
        match self.0 {}
    }
    pub fn is_lost(&self) -> bool {
        match self.0 {}
    }
    pub fn poll_lock(&self) -> &Arc<parking_lot::Mutex<()>> {
        match self.0 {}
    }
    pub fn wait_for(&self, _: raw::TimelinePoint, _: Duration) -> Result<bool, VkError> {
        match self.0 {}
    }
    pub fn submit_signalled<R>(&self, _: impl FnOnce() -> R) -> Result<(R, raw::TimelinePoint), VkError> {
        match self.0 {}
    }
    pub fn submit_exclusive<R>(&self, _: impl FnOnce() -> R) -> R {
        match self.0 {}
    }
}

pub(crate) mod raw {
    /// A timeline value (never produced: no raw device signals one).
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct TimelinePoint;
}

/// No host memory is imported in this build.
pub(crate) struct HostImport(Never);

impl HostImport {
    /// Unreachable: needs a [`RawDevice`].
    ///
    /// # Safety
    ///
    /// None needed (it cannot be called); `unsafe` as the real one.
    #[allow(unsafe_code, reason = "the twin keeps the real signature; its body is `match {}`")]
    pub unsafe fn new<O>(raw: &Arc<RawDevice>, _: Option<&str>, _: *mut u8, _: usize, _: O) -> Result<Self, VkError> {
        match raw.0 {}
    }
    pub fn zeroed(raw: &Arc<RawDevice>, _: Option<&str>, _: usize) -> Result<Self, VkError> {
        match raw.0 {}
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        match self.0 {}
    }
    pub fn as_ptr(&self) -> *mut u8 {
        match self.0 {}
    }
    pub fn len(&self) -> usize {
        match self.0 {}
    }
}

/// No Vulkan barrier is recorded in this build: an empty command buffer.
///
/// The barrier makes device writes visible to the CPU where the CPU reads
/// device memory *behind wgpu's back*: imported host memory (coherent mode,
/// `AccessedBy`, the imported pool segments) and mapped sparse blocks. None
/// of those exists without `vk`. What remains is the wgpu-mapped pool
/// (`MAPPABLE_PRIMARY_BUFFERS` on unified memory; never on GL, which lacks
/// the feature), read through `map_async`: its visibility is wgpu's job,
/// with exactly the guarantee of any wgpu read-back (on GL the map
/// synchronises implicitly; on Vulkan wgpu-core 30 records no `HOST_READ`
/// barrier for maps, its own TODO, gfx-rs/wgpu#9306). The cost: one empty
/// command buffer where a pass would have had its barrier.
pub(crate) fn host_read_barrier(device: &wgpu::Device) -> Result<wgpu::CommandBuffer, VkError> {
    let encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm no barrier") });
    Ok(encoder.finish())
}

/// The sparse device view (never created: needs a [`RawDevice`]).
pub(crate) struct SparseArena(Never);

/// A sparse-binding failure (never constructed).
pub(crate) type SparseError = VkError;

/// Parameters of [`SparseArena::new`].
#[allow(dead_code, reason = "the runtime fills it in; nothing here reads it")]
pub(crate) struct SparseArenaDescriptor<'a> {
    pub label: Option<&'a str>,
    pub size: u64,
    pub pool_blocks: u32,
    pub chunk_blocks: u32,
    pub host_mapped: bool,
}

/// A sparse block (never handed out).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockId;

impl SparseArena {
    pub fn new(raw: &Arc<RawDevice>, _: &SparseArenaDescriptor<'_>) -> Result<Self, SparseError> {
        match raw.0 {}
    }
    pub fn buffer(&self) -> &wgpu::Buffer {
        match self.0 {}
    }
    pub fn page_size(&self) -> u64 {
        match self.0 {}
    }
    pub fn pool_blocks(&self) -> u32 {
        match self.0 {}
    }
    pub fn free_blocks(&self) -> u32 {
        match self.0 {}
    }
    pub fn pending_pages(&self) -> u32 {
        match self.0 {}
    }
    pub fn host_mapped(&self) -> bool {
        match self.0 {}
    }
    /// # Safety
    ///
    /// None needed (it cannot be called); `unsafe` as the real one.
    #[allow(unsafe_code, reason = "the twin keeps the real signature; its body is `match {}`")]
    pub unsafe fn host_runs(&self, _: u32, _: u32, _: impl FnMut(u32, *mut u8, usize)) -> bool {
        match self.0 {}
    }
    pub fn bound(&self, _: u32) -> Option<BlockId> {
        match self.0 {}
    }
    pub fn alloc_run(&mut self, _: u32) -> Option<(BlockId, u32)> {
        match self.0 {}
    }
    pub fn queue_bind_run(&mut self, _: u32, _: BlockId, _: u32) -> Result<(), SparseError> {
        match self.0 {}
    }
    pub fn queue_release(&mut self, _: u32, _: u32) -> Result<(), SparseError> {
        match self.0 {}
    }
    /// # Safety
    ///
    /// None needed (it cannot be called); `unsafe` as the real one.
    #[allow(unsafe_code, reason = "the twin keeps the real signature; its body is `match {}`")]
    pub unsafe fn flush(&mut self) -> Result<raw::TimelinePoint, SparseError> {
        match self.0 {}
    }
    pub fn seal(&mut self) {
        match self.0 {}
    }
    pub fn outbox(&self) -> &Arc<BindOutbox> {
        match self.0 {}
    }
}

/// Sealed sparse bind batches (never created: needs a [`SparseArena`]).
#[derive(Debug)]
pub(crate) struct BindOutbox(Never);

impl BindOutbox {
    /// # Safety
    ///
    /// None needed (it cannot be called); `unsafe` as the real one.
    #[allow(unsafe_code, reason = "the twin keeps the real signature; its body is `match {}`")]
    pub unsafe fn send(&self) -> Result<raw::TimelinePoint, SparseError> {
        match self.0 {}
    }
}

/// Validation-layer capture (never installed: the layer is a Vulkan one).
pub(crate) struct ValidationCapture(Never);

impl ValidationCapture {
    pub fn check(&self) -> Result<(), String> {
        match self.0 {}
    }
    pub fn layer_present(&self) -> bool {
        match self.0 {}
    }
}
