//! Raw Vulkan handles under a wgpu device, and the timeline semaphore that
//! orders our queue operations against wgpu's (see the module docs of
//! [`crate::vk`] for the protocol).
//!
//! # Safety
//!
//! The ash handles are clones of the ones wgpu-hal owns. They stay valid as
//! long as the `wgpu::Device`/`wgpu::Queue` clones stored next to them live,
//! because wgpu destroys the `VkDevice` only after the last of its objects.
//! The timeline semaphore is ours; [`Drop`] destroys it only after a host
//! wait proves no queued operation still references it.

use std::sync::Arc;
use std::time::Duration;

use ash::vk;
use parking_lot::Mutex;
use wgpu_hal::api::Vulkan;

use super::device::VkCaps;
use super::{Result, VkError};

/// A value of the device's timeline semaphore: reached once every queue
/// operation (wgpu submission or bind) issued before the signal was staged
/// has completed. A signal staged on wgpu's queue is carried by the next
/// wgpu submission, which is the caller's own only if no other thread
/// submits on that queue in between (see [`RawDevice::submit_signalled`]);
/// a bind's signal is always its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelinePoint(pub u64);

struct Timeline {
    raw: vk::Semaphore,
    /// The last value some queued operation signals.
    value: u64,
    /// The value the last sparse bind signals (0: none yet). Every wgpu
    /// submission waits for it ([`RawDevice::wait_for_binds`]): sparse
    /// binds are not ordered with command buffers by submission order, and
    /// a wait in one submission does not order the later ones.
    bind: u64,
    /// A wait for `bind` is staged on the next wgpu submission.
    bind_wait_staged: bool,
}

/// The ash side of a wgpu device: handles, memory properties, capabilities
/// and the ordering timeline. Shared (`Arc`) by every arena and import made
/// on the device.
pub struct RawDevice {
    instance: ash::Instance,
    device: ash::Device,
    physical: vk::PhysicalDevice,
    queue: vk::Queue,
    family_index: u32,
    memory_properties: vk::PhysicalDeviceMemoryProperties,
    host_memory: Option<ash::ext::external_memory_host::Device>,
    caps: VkCaps,
    timeline: Mutex<Timeline>,
    /// The device's submission lock ([`Self::poll_lock`]).
    poll_lock: Arc<Mutex<()>>,
    /// Set when the device is known lost: its timeline will never advance,
    /// so `Drop` must not wait for it.
    lost: core::sync::atomic::AtomicBool,
    // Declared last: dropped after the semaphore is destroyed in `Drop`.
    wgpu_queue: wgpu::Queue,
    wgpu_device: wgpu::Device,
}

impl core::fmt::Debug for RawDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RawDevice")
            .field("family_index", &self.family_index)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl RawDevice {
    /// Wrap a wgpu device made by any means (e.g. `request_device`).
    ///
    /// Capabilities are inferred from what can be seen: `host_import` and
    /// `buffer_device_address` when their extensions are enabled on the
    /// device; `sparse` stays false (core features enabled at creation
    /// cannot be queried back; use [`super::open`] for sparse).
    pub fn from_wgpu(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Arc<Self>> {
        // SAFETY: we only read handles out of the hal device; nothing is
        // destroyed, and the guard is dropped at the end of this block.
        let caps = unsafe {
            let hal = device.as_hal::<Vulkan>().ok_or(VkError::NotVulkan("device"))?;
            let exts = hal.enabled_device_extensions();
            let instance = hal.shared_instance().raw_instance();
            let mut caps = super::device::query_static_caps(instance, hal.raw_physical_device());
            caps.sparse = false;
            caps.sparse_block_size = 0;
            caps.host_import = exts.contains(&ash::ext::external_memory_host::NAME);
            caps.buffer_device_address = exts.contains(&ash::khr::buffer_device_address::NAME);
            caps
        };
        Self::new(device, queue, caps)
    }

    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue, caps: VkCaps) -> Result<Arc<Self>> {
        // SAFETY: as in `from_wgpu`: handles are cloned, not destroyed. The
        // clones stay valid because `Self` holds `device`/`queue` clones.
        let (instance, raw_device, physical, raw_queue, family_index) = unsafe {
            let hal = device.as_hal::<Vulkan>().ok_or(VkError::NotVulkan("device"))?;
            (
                hal.shared_instance().raw_instance().clone(),
                hal.raw_device().clone(),
                hal.raw_physical_device(),
                hal.raw_queue(),
                hal.queue_family_index(),
            )
        };
        // SAFETY: `physical` is the device's physical device, from the same
        // instance.
        let (memory_properties, props) = unsafe {
            (
                instance.get_physical_device_memory_properties(physical),
                instance.get_physical_device_properties(physical),
            )
        };
        if props.api_version < vk::API_VERSION_1_2 {
            // vkWaitSemaphores / timeline semaphores are core in 1.2; ash's
            // core 1.2 entry points are not loaded below that.
            return Err(VkError::Unsupported("Vulkan 1.2 (timeline semaphores)"));
        }
        let host_memory = caps.host_import.then(|| ash::ext::external_memory_host::Device::new(&instance, &raw_device));
        let mut ty =
            vk::SemaphoreTypeCreateInfo::default().semaphore_type(vk::SemaphoreType::TIMELINE).initial_value(0);
        let info = vk::SemaphoreCreateInfo::default().push_next(&mut ty);
        // SAFETY: valid create info; the device is alive (we hold `device`).
        // wgpu-hal enables `timelineSemaphore` on 1.2+ devices that have it
        // (it uses timeline semaphores for its own fences).
        let semaphore =
            unsafe { raw_device.create_semaphore(&info, None) }.map_err(VkError::vk("vkCreateSemaphore"))?;
        Ok(Arc::new(Self {
            instance,
            device: raw_device,
            physical,
            queue: raw_queue,
            family_index,
            memory_properties,
            host_memory,
            caps,
            timeline: Mutex::new(Timeline { raw: semaphore, value: 0, bind: 0, bind_wait_staged: false }),
            poll_lock: Arc::new(Mutex::new(())),
            lost: core::sync::atomic::AtomicBool::new(false),
            wgpu_queue: queue.clone(),
            wgpu_device: device.clone(),
        }))
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.wgpu_device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.wgpu_queue
    }

    /// What the device can do.
    pub fn caps(&self) -> &VkCaps {
        &self.caps
    }

    /// The ash device (a clone of wgpu-hal's; do not destroy it).
    pub fn raw_device(&self) -> &ash::Device {
        &self.device
    }

    /// The ash instance.
    pub fn raw_instance(&self) -> &ash::Instance {
        &self.instance
    }

    /// The physical device.
    pub fn raw_physical_device(&self) -> vk::PhysicalDevice {
        self.physical
    }

    /// Queue family wgpu submits to (and we bind on).
    pub fn queue_family_index(&self) -> u32 {
        self.family_index
    }

    pub(crate) fn host_memory_fns(&self) -> Option<&ash::ext::external_memory_host::Device> {
        self.host_memory.as_ref()
    }

    /// The first memory type in `type_bits` that has all of `required`,
    /// preferring one that also has `preferred`.
    pub(crate) fn find_memory_type(
        &self,
        type_bits: u32,
        required: vk::MemoryPropertyFlags,
        preferred: vk::MemoryPropertyFlags,
    ) -> Option<u32> {
        let types = self.memory_properties.memory_types_as_slice();
        let fits = |want: vk::MemoryPropertyFlags| {
            (0u32..)
                .zip(types)
                .find(|&(i, t)| type_bits & (1 << i) != 0 && t.property_flags.contains(required | want))
                .map(|(i, _)| i)
        };
        fits(preferred).or_else(|| fits(vk::MemoryPropertyFlags::empty()))
    }

    pub(crate) fn memory_type_flags(&self, index: u32) -> vk::MemoryPropertyFlags {
        self.memory_properties
            .memory_types_as_slice()
            .get(index as usize)
            .map_or(vk::MemoryPropertyFlags::empty(), |t| t.property_flags)
    }

    /// Stage a signal of `value + 1` on wgpu-hal's queue and make an empty
    /// wgpu submission carry it. Returns the new value.
    fn flush_locked(&self, t: &mut Timeline) -> Result<u64> {
        let next = t.value + 1;
        {
            // SAFETY: `add_signal_semaphore` only records the semaphore for
            // the next submit; the semaphore is ours and outlives that submit
            // (Drop waits for the last value before destroying it).
            let hal = unsafe { self.wgpu_queue.as_hal::<Vulkan>() }.ok_or(VkError::NotVulkan("queue"))?;
            hal.add_signal_semaphore(t.raw, Some(next));
        }
        // wgpu-core always reaches the hal submit, even with no command
        // buffer; it also carries pending `write_buffer` data and consumes any
        // wait staged by an earlier bind.
        self.wait_for_binds(t);
        self.wgpu_queue.submit(core::iter::empty());
        t.value = next;
        Ok(next)
    }

    /// The lock every wgpu submission and `Device::poll` on this device is
    /// made under (wgpu-core's `Queue::submit` polls the device itself, and
    /// two threads polling trip its assertions): the runtime's
    /// `Gpu::poll_lock`. [`Self::flush`] and the sparse binds, which submit
    /// through wgpu, take it themselves, before the queue lock; callers of
    /// [`Self::submit_signalled`] and [`Self::submit_exclusive`] hold it.
    pub fn poll_lock(&self) -> &Arc<Mutex<()>> {
        &self.poll_lock
    }

    /// Make the timeline reach a new value once everything submitted so far
    /// (wgpu work and binds) has completed. Costs one empty wgpu submission.
    pub fn flush(&self) -> Result<TimelinePoint> {
        let _polling = self.poll_lock.lock();
        let mut t = self.timeline.lock();
        self.flush_locked(&mut t).map(TimelinePoint)
    }

    /// Run `submit` (a `wgpu::Queue::submit`) with the queue to itself.
    /// Sparse binds and the timeline's signals are raw calls on the queue
    /// under this lock; wgpu's own queue lock does not cover them, and
    /// Vulkan requires a queue's calls to be externally synchronized.
    pub fn submit_exclusive<R>(&self, submit: impl FnOnce() -> R) -> R {
        let mut t = self.timeline.lock();
        self.wait_for_binds(&mut t);
        submit()
    }

    /// Stage, on the next wgpu submission (made right after, under the
    /// same lock), a wait for the last sparse bind, unless one is staged.
    /// A bind is ordered before later command buffers only by a semaphore
    /// wait in each (Vulkan orders sparse binds with nothing by submission
    /// order, and an earlier submission's wait does not carry over to the
    /// later ones). Once the timeline shows the bind done, no more waits.
    fn wait_for_binds(&self, t: &mut Timeline) {
        if t.bind > 0 && !t.bind_wait_staged {
            // SAFETY: `raw` is a live timeline semaphore of this device.
            let reached = unsafe { self.device.get_semaphore_counter_value(t.raw) }.is_ok_and(|v| v >= t.bind);
            if reached {
                // The bind is done: everything submitted from now on runs
                // after it anyway.
                t.bind = 0;
                return;
            }
            // SAFETY: staging a wait only records it for the next submit,
            // which the caller makes under the timeline lock; the semaphore
            // outlives it (see Drop).
            if let Some(hal) = unsafe { self.wgpu_queue.as_hal::<Vulkan>() } {
                hal.add_wait_semaphore(t.raw, Some(t.bind), vk::PipelineStageFlags::ALL_COMMANDS);
            }
        }
        // (Consumed by the submission the caller makes next.)
        t.bind_wait_staged = false;
    }

    /// Run `submit` (one `wgpu::Queue::submit`) with a signal of the
    /// timeline staged on it: the returned point is reached when that
    /// submission (and everything before it) has completed — provided no
    /// other thread submits on the wgpu queue between the staging and
    /// `submit` (an application sharing the queue may: its earlier
    /// submission then carries the signal). A host can then wait for the
    /// submission with [`Self::wait`], without `Device::poll`; the runtime
    /// takes that only as a hint and confirms with wgpu's own fence.
    pub fn submit_signalled<R>(&self, submit: impl FnOnce() -> R) -> Result<(R, TimelinePoint)> {
        let mut t = self.timeline.lock();
        let next = t.value + 1;
        {
            // SAFETY: as in `flush_locked`: the signal is only recorded for
            // the next submit, which `submit` makes; the semaphore outlives it.
            let hal = unsafe { self.wgpu_queue.as_hal::<Vulkan>() }.ok_or(VkError::NotVulkan("queue"))?;
            hal.add_signal_semaphore(t.raw, Some(next));
        }
        self.wait_for_binds(&mut t);
        let r = submit();
        t.value = next;
        Ok((r, TimelinePoint(next)))
    }

    /// The last value any queued operation will signal.
    pub fn last_point(&self) -> TimelinePoint {
        TimelinePoint(self.timeline.lock().value)
    }

    /// The value the GPU has reached.
    pub fn completed_point(&self) -> Result<TimelinePoint> {
        let raw = self.timeline.lock().raw;
        // SAFETY: `raw` is a live timeline semaphore of this device.
        unsafe { self.device.get_semaphore_counter_value(raw) }
            .map(TimelinePoint)
            .map_err(VkError::vk("vkGetSemaphoreCounterValue"))
    }

    /// Block until the timeline reaches `point` (or `timeout`).
    pub fn wait(&self, point: TimelinePoint, timeout: Duration) -> Result<()> {
        let raw = self.timeline.lock().raw;
        let semaphores = [raw];
        let values = [point.0];
        let info = vk::SemaphoreWaitInfo::default().semaphores(&semaphores).values(&values);
        let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: `raw` is live (destroyed only in Drop, which needs `&mut`
        // through the last Arc); host waits need no external sync.
        match unsafe { self.device.wait_semaphores(&info, ns) } {
            Ok(()) => Ok(()),
            Err(vk::Result::TIMEOUT) => Err(VkError::Timeout(point.0)),
            Err(e) => Err(VkError::Vulkan { op: "vkWaitSemaphores", result: e }),
        }
    }

    /// [`Self::wait`] with the timeout as an outcome: `Ok(true)` when the
    /// timeline reached `point`, `Ok(false)` when `timeout` ran out first.
    pub fn wait_for(&self, point: TimelinePoint, timeout: Duration) -> Result<bool> {
        match self.wait(point, timeout) {
            Ok(()) => Ok(true),
            Err(VkError::Timeout(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Flush, then wait on the host until all queued work has completed.
    pub fn wait_idle(&self) -> Result<()> {
        let p = self.flush()?;
        self.wait(p, Duration::from_secs(60))
    }

    /// Queue `binds` on `buffer` with `vkQueueBindSparse`, ordered after
    /// everything queued before and before everything queued after (the
    /// timeline protocol). Returns the value the bind signals.
    ///
    /// # Safety
    ///
    /// * No other thread may use the `VkQueue` during the call: no
    ///   `wgpu::Queue::submit` (nor another bind) on this device concurrently.
    /// * `buffer` is a live sparse buffer of this device, each bind's
    ///   `memory` is null or live memory of a type the buffer allows, and
    ///   offsets/sizes are multiples of the sparse block size within the
    ///   buffer and the memory (the VUIDs of `VkSparseMemoryBind`).
    pub(crate) unsafe fn bind_sparse(
        &self,
        buffer: vk::Buffer,
        binds: &[vk::SparseMemoryBind],
    ) -> Result<TimelinePoint> {
        if self.is_lost() {
            return Err(VkError::Unsupported("the device is lost: no more sparse binds"));
        }
        let _polling = self.poll_lock.lock();
        let mut t = self.timeline.lock();
        let before = self.flush_locked(&mut t)?;
        let after = before + 1;
        let buffer_binds = [vk::SparseBufferMemoryBindInfo::default().buffer(buffer).binds(binds)];
        let semaphores = [t.raw];
        let wait_values = [before];
        let signal_values = [after];
        let mut timeline_info = vk::TimelineSemaphoreSubmitInfo::default()
            .wait_semaphore_values(&wait_values)
            .signal_semaphore_values(&signal_values);
        let info = vk::BindSparseInfo::default()
            .wait_semaphores(&semaphores)
            .buffer_binds(&buffer_binds)
            .signal_semaphores(&semaphores)
            .push_next(&mut timeline_info);
        // SAFETY: the caller guarantees exclusive use of the queue and valid
        // binds; the semaphore is live, its wait value was signalled by the
        // flush just submitted (earlier in submission order) and its signal
        // value is greater than any value queued before.
        unsafe { self.device.queue_bind_sparse(self.queue, &[info], vk::Fence::null()) }
            .map_err(VkError::vk("vkQueueBindSparse"))?;
        t.value = after;
        // SAFETY: staging a wait only records it for the next wgpu submit;
        // the semaphore outlives that submit (see Drop).
        let hal = unsafe { self.wgpu_queue.as_hal::<Vulkan>() }.ok_or(VkError::NotVulkan("queue"))?;
        hal.add_wait_semaphore(t.raw, Some(after), vk::PipelineStageFlags::ALL_COMMANDS);
        t.bind = after;
        t.bind_wait_staged = true;
        Ok(TimelinePoint(after))
    }
}

impl RawDevice {
    /// Record that the device is lost (destroyed, reset): dropping this
    /// then skips the final wait on a timeline that will never advance, and
    /// leaks the semaphore instead.
    pub fn mark_lost(&self) {
        self.lost.store(true, core::sync::atomic::Ordering::Release);
    }

    /// Whether [`Self::mark_lost`] was called.
    pub fn is_lost(&self) -> bool {
        self.lost.load(core::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for RawDevice {
    fn drop(&mut self) {
        // A flush consumes any staged wait and signals after every earlier
        // submission (including user submissions that consumed a wait on our
        // semaphore); once the host sees it, nothing references the semaphore.
        // A healthy device gets there at once; a lost one never does.
        let done = if self.lost.load(core::sync::atomic::Ordering::Acquire) {
            Err(VkError::Unsupported("device lost: not waiting for its timeline"))
        } else {
            self.flush().and_then(|p| self.wait(p, Duration::from_secs(5)))
        };
        let raw = self.timeline.get_mut().raw;
        match done {
            // SAFETY: no queued or staged operation references `raw` any more
            // (argued above), and it was created from this device.
            Ok(()) => unsafe { self.device.destroy_semaphore(raw, None) },
            Err(e) => {
                // SAFETY: un-staging is always allowed.
                if let Some(hal) = unsafe { self.wgpu_queue.as_hal::<Vulkan>() } {
                    hal.remove_wait_semaphore(raw);
                    hal.remove_signal_semaphore(raw);
                }
                tracing::warn!("svm vk: leaking the timeline semaphore, final wait failed: {e}");
            }
        }
    }
}
