//! Creating the wgpu device through ash, with the Vulkan features wgpu does
//! not request: `sparseBinding`, `sparseResidencyBuffer`,
//! `VK_KHR_buffer_device_address`, `VK_EXT_external_memory_host`.
//!
//! Sequence ([`open`]):
//!
//! 1. instance from the environment (`WGPU_BACKEND`, default Vulkan), with
//!    `InstanceFlags::VALIDATION` when asked (`SVM_VALIDATION=1` or
//!    [`ValidationMode::On`]), and a [`ValidationCapture`] right after so
//!    that device creation is checked too (note: wgpu loads the layer in
//!    every debug build unless told otherwise; [`ValidationMode::Off`] is
//!    for timings);
//! 2. adapter: `WGPU_ADAPTER_NAME` substring (case-insensitive), else the
//!    first non-CPU adapter, else the first (the rules of `gpu.rs`);
//! 3. query what the physical device has (features, properties, the queue
//!    family wgpu uses);
//! 4. extensions = wgpu-hal's `required_device_extensions(features)` + ours;
//!    feature structs = wgpu-hal's `physical_device_features(exts, features)`
//!    (it adds the BDA struct itself once the BDA extension is listed), core
//!    struct copied and `sparseBinding`/`sparseResidencyBuffer` set;
//! 5. `vkCreateDevice` (family 0, queue 0: what wgpu-hal's `open` uses), then
//!    `device_from_raw` (wgpu-hal takes ownership of the `VkDevice`) and
//!    `create_device_from_hal`;
//! 6. measure the sparse block size: `vkGetBufferMemoryRequirements` of a
//!    throw-away sparse buffer (its `alignment`).
//!
//! When none of the extra features exists (or the adapter is not Vulkan, or
//! `vkCreateDevice` refuses), it falls back to plain `request_device` and
//! reports every capability false.
//!
//! # Safety
//!
//! The hal-level calls (`as_hal`, `device_from_raw`,
//! `create_device_from_hal`) are `unsafe` because wgpu trusts us to create
//! the device exactly as it would: from this adapter, with a superset of its
//! extensions and its own feature structs, on the family/queue we name. Each
//! block below argues that.

use std::ffi::CStr;
use std::sync::Arc;

use ash::vk;
use wgpu_hal::api::Vulkan;

use super::raw::RawDevice;
use super::validation::ValidationCapture;
use super::{Result, VkError};

/// What the device can do beyond core wgpu, as created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VkCaps {
    /// Sparse buffers are enabled (`sparseBinding` + `sparseResidencyBuffer`,
    /// `SPARSE_BINDING` on wgpu's queue family, timeline semaphores).
    pub sparse: bool,
    /// `VK_EXT_external_memory_host` is enabled.
    pub host_import: bool,
    /// `VK_KHR_buffer_device_address` + `bufferDeviceAddress` are enabled.
    pub buffer_device_address: bool,
    /// Bytes per sparse page (the `alignment` of a sparse buffer's memory
    /// requirements); 0 without `sparse`.
    pub sparse_block_size: u64,
    /// `sparseAddressSpaceSize`: the most bytes of sparse buffers at once.
    pub sparse_address_space_size: u64,
    /// Unbound pages read zero and drop writes (false on lavapipe: there
    /// they read zero but keep writes).
    pub residency_non_resident_strict: bool,
    /// `minImportedHostPointerAlignment` (0 without `host_import`).
    pub min_imported_host_pointer_alignment: u64,
    /// `maxStorageBufferRange`: the largest storage binding.
    pub max_storage_buffer_range: u32,
    /// `VkPhysicalDeviceProperties::apiVersion`.
    pub api_version: u32,
}

/// How to open the device.
#[derive(Clone, Debug)]
pub struct DeviceDescriptor<'a> {
    /// Debug label.
    pub label: Option<&'a str>,
    /// wgpu features (must be supported by the adapter).
    pub required_features: wgpu::Features,
    /// wgpu features enabled where the adapter has them.
    pub optional_features: wgpu::Features,
    /// wgpu limits; `None`: what the runtime requests in `gpu.rs` (default
    /// limits, raised to the adapter's storage-binding and buffer sizes).
    pub required_limits: Option<wgpu::Limits>,
    /// Enable sparse binding when the device has it.
    pub want_sparse: bool,
    /// Enable `VK_EXT_external_memory_host` when the device has it.
    pub want_host_import: bool,
    /// Enable buffer device addresses when the device has them.
    pub want_buffer_device_address: bool,
    /// Khronos validation layer and message capture.
    pub validation: ValidationMode,
}

/// Whether to run under the Khronos validation layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValidationMode {
    /// `SVM_VALIDATION=1`: as `On`. Otherwise wgpu's own choice (its
    /// `InstanceFlags` from the build and `WGPU_VALIDATION`: debug builds
    /// load the layer and only log), with no capture.
    #[default]
    Auto,
    /// Load the layer and capture messages in [`OpenDevice::validation`].
    On,
    /// No layer, whatever the build (timings: the layer costs ~50 µs per
    /// sparse bind range on lavapipe).
    Off,
}

impl Default for DeviceDescriptor<'_> {
    fn default() -> Self {
        Self {
            label: Some("svm-vk"),
            required_features: wgpu::Features::empty(),
            optional_features: wgpu::Features::empty(),
            required_limits: None,
            want_sparse: true,
            want_host_import: true,
            want_buffer_device_address: true,
            validation: ValidationMode::Auto,
        }
    }
}

/// Environment switch for the validation layer.
pub const VALIDATION_ENV: &str = "SVM_VALIDATION";

/// An opened device.
///
/// Fields drop in order: the raw side first (it flushes and waits), the
/// validation capture last (it reports until the end).
#[non_exhaustive]
pub struct OpenDevice {
    /// Ash handles + ordering timeline (`None` only if the device is not
    /// Vulkan 1.2+).
    pub raw: Option<Arc<RawDevice>>,
    /// The wgpu device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// What was enabled.
    pub caps: VkCaps,
    /// Adapter description.
    pub info: wgpu::AdapterInfo,
    /// The adapter.
    pub adapter: wgpu::Adapter,
    /// Validation messages, when validation is on and the layer is present.
    pub validation: Option<ValidationCapture>,
    /// The instance.
    pub instance: wgpu::Instance,
}

impl core::fmt::Debug for OpenDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenDevice")
            .field("adapter", &self.info.name)
            .field("caps", &self.caps)
            .field("validation", &self.validation.is_some())
            .finish_non_exhaustive()
    }
}

pub use crate::gpu::runtime_limits;

/// Properties that need no device: limits, sparse properties, host-pointer
/// alignment, API version. `sparse`/`host_import`/BDA and the block size are
/// filled in by the caller.
pub(crate) fn query_static_caps(instance: &ash::Instance, physical: vk::PhysicalDevice) -> VkCaps {
    let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
    let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
    // SAFETY: `physical` belongs to `instance`; the chained struct is one
    // the 1.1 query accepts (unknown sTypes are ignored by drivers without
    // the extension, per the pNext rules of property queries).
    unsafe { instance.get_physical_device_properties2(physical, &mut props2) };
    let p = props2.properties;
    VkCaps {
        sparse: false,
        host_import: false,
        buffer_device_address: false,
        sparse_block_size: 0,
        sparse_address_space_size: p.limits.sparse_address_space_size,
        residency_non_resident_strict: p.sparse_properties.residency_non_resident_strict == vk::TRUE,
        min_imported_host_pointer_alignment: host.min_imported_host_pointer_alignment,
        max_storage_buffer_range: p.limits.max_storage_buffer_range,
        api_version: p.api_version,
    }
}

/// Open the device (see the module docs for the sequence).
pub fn open(desc: &DeviceDescriptor<'_>) -> Result<OpenDevice> {
    let env_on = std::env::var(VALIDATION_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    let mut idesc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if wgpu::Backends::from_env().is_none() {
        idesc.backends = wgpu::Backends::VULKAN;
    }
    let validation = match desc.validation {
        ValidationMode::On => true,
        ValidationMode::Auto => env_on,
        ValidationMode::Off => false,
    };
    if validation {
        idesc.flags |= wgpu::InstanceFlags::VALIDATION;
    } else if desc.validation == ValidationMode::Off {
        idesc.flags.remove(wgpu::InstanceFlags::VALIDATION | wgpu::InstanceFlags::GPU_BASED_VALIDATION);
    }
    let backends = idesc.backends;
    let instance = wgpu::Instance::new(idesc);
    let capture = if validation {
        match ValidationCapture::install(&instance) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("svm vk: validation requested but not capturing: {e}");
                None
            }
        }
    } else {
        None
    };
    let adapter = crate::gpu::select_adapter(&instance, backends).map_err(VkError::NoAdapter)?;
    let info = adapter.get_info();
    let limits = desc.required_limits.clone().unwrap_or_else(|| runtime_limits(&adapter.limits()));
    let wdesc = wgpu::DeviceDescriptor {
        label: desc.label,
        required_features: desc.required_features | (desc.optional_features & adapter.features()),
        required_limits: limits.clone(),
        ..Default::default()
    };

    let custom = if info.backend == wgpu::Backend::Vulkan { open_custom(&adapter, desc, &wdesc)? } else { None };
    let (device, queue, caps) = match custom {
        Some(x) => x,
        None => {
            let (device, queue) = pollster::block_on(adapter.request_device(&wdesc))?;
            (device, queue, VkCaps::default())
        }
    };
    let caps = measure_sparse_block(&device, caps)?;
    let (raw, caps) = match RawDevice::new(&device, &queue, caps) {
        Ok(r) => (Some(r), caps),
        Err(e) => {
            tracing::warn!("svm vk: no raw device: {e}");
            (None, VkCaps::default())
        }
    };
    Ok(OpenDevice { raw, device, queue, caps, info, adapter, validation: capture, instance })
}

/// The capabilities the physical device offers, and the extensions to add.
struct Plan {
    caps: VkCaps,
    extra_extensions: Vec<&'static CStr>,
}

fn plan(ha: &wgpu_hal::vulkan::Adapter, desc: &DeviceDescriptor<'_>) -> Plan {
    let instance = ha.shared_instance().raw_instance();
    let physical = ha.raw_physical_device();
    let phd = ha.physical_device_capabilities();
    let mut caps = query_static_caps(instance, physical);

    let mut bda = vk::PhysicalDeviceBufferDeviceAddressFeatures::default();
    let mut timeline = vk::PhysicalDeviceTimelineSemaphoreFeatures::default();
    let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut bda).push_next(&mut timeline);
    // SAFETY: `physical` belongs to `instance`; both chained structs are
    // core 1.2 feature structs (ignored by older drivers).
    unsafe { instance.get_physical_device_features2(physical, &mut f2) };
    let core = f2.features;
    // SAFETY: as above.
    let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
    // wgpu-hal's `open`/`device_from_raw` path uses family 0.
    let family_sparse = families.first().is_some_and(|f| f.queue_flags.contains(vk::QueueFlags::SPARSE_BINDING));
    let timeline_ok = caps.api_version >= vk::API_VERSION_1_2 && timeline.timeline_semaphore == vk::TRUE;

    caps.sparse = desc.want_sparse
        && core.sparse_binding == vk::TRUE
        && core.sparse_residency_buffer == vk::TRUE
        && family_sparse
        && timeline_ok;
    let mut extra_extensions = Vec::new();
    caps.host_import = desc.want_host_import && phd.supports_extension(ash::ext::external_memory_host::NAME);
    if caps.host_import {
        extra_extensions.push(ash::ext::external_memory_host::NAME);
    } else {
        caps.min_imported_host_pointer_alignment = 0;
    }
    caps.buffer_device_address = desc.want_buffer_device_address
        && bda.buffer_device_address == vk::TRUE
        && phd.supports_extension(ash::khr::buffer_device_address::NAME);
    if caps.buffer_device_address {
        // wgpu-hal then chains `VkPhysicalDeviceBufferDeviceAddressFeatures`
        // itself and lets its allocator use device addresses.
        extra_extensions.push(ash::khr::buffer_device_address::NAME);
    }
    Plan { caps, extra_extensions }
}

/// Steps 3–5; `None` when nothing extra is wanted/available or the driver
/// refuses the device (then the caller falls back to `request_device`).
fn open_custom(
    adapter: &wgpu::Adapter,
    desc: &DeviceDescriptor<'_>,
    wdesc: &wgpu::DeviceDescriptor<'_>,
) -> Result<Option<(wgpu::Device, wgpu::Queue, VkCaps)>> {
    // SAFETY: the guard is only read from, and dropped before
    // `create_device_from_hal` (which needs the adapter itself).
    let opened = unsafe {
        let ha = adapter.as_hal::<Vulkan>().ok_or(VkError::NotVulkan("adapter"))?;
        let Plan { caps, extra_extensions } = plan(&ha, desc);
        if !caps.sparse && !caps.host_import && !caps.buffer_device_address {
            return Ok(None);
        }
        let features = wdesc.required_features;
        let mut exts = ha.required_device_extensions(features);
        for e in extra_extensions {
            if !exts.contains(&e) {
                exts.push(e);
            }
        }
        let mut phd = ha.physical_device_features(&exts, features);
        let mut core = phd.get_core();
        if caps.sparse {
            core.sparse_binding = vk::TRUE;
            core.sparse_residency_buffer = vk::TRUE;
        }
        let ext_ptrs: Vec<*const core::ffi::c_char> = exts.iter().map(|e| e.as_ptr()).collect();
        let priorities = [1.0f32];
        let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(0).queue_priorities(&priorities)];
        let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues).enabled_extension_names(&ext_ptrs);
        // wgpu-hal's pNext chain (timeline, descriptor indexing, BDA, ...),
        // then our core struct replaces the one it set: a superset of it.
        let info = phd.add_to_device_create(info).enabled_features(&core);
        let instance = ha.shared_instance().raw_instance();
        // SAFETY (vkCreateDevice): every extension is supported (wgpu-hal's
        // list is filtered to supported ones, ours were checked in `plan`),
        // every feature set is supported (`plan` read them), family 0 exists.
        let raw = match instance.create_device(ha.raw_physical_device(), &info, None) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("svm vk: vkCreateDevice with sparse/host-import features failed ({e}); falling back");
                return Ok(None);
            }
        };
        // SAFETY (device_from_raw): `raw` was created from this adapter's
        // physical device with `exts` ⊇ `required_device_extensions` and
        // `physical_device_features(exts, features)` (plus two core bits),
        // family 0 / queue 0; `None` hands ownership of the VkDevice to
        // wgpu-hal, which destroys it after its last object.
        let open = ha
            .device_from_raw(raw, None, &exts, features, &wdesc.required_limits, &wdesc.memory_hints, 0, 0)
            .map_err(|source| VkError::Hal { op: "device_from_raw", source })?;
        (open, caps)
    };
    let (open, caps) = opened;
    // SAFETY: `open` was created from this adapter (above), and
    // `wdesc.required_features` is exactly the set it was opened with.
    let (device, queue) = unsafe { adapter.create_device_from_hal::<Vulkan>(open, wdesc) }?;
    Ok(Some((device, queue, caps)))
}

/// Step 6: the sparse block size is the memory alignment of a sparse buffer.
fn measure_sparse_block(device: &wgpu::Device, mut caps: VkCaps) -> Result<VkCaps> {
    if !caps.sparse {
        caps.sparse_block_size = 0;
        return Ok(caps);
    }
    let info = vk::BufferCreateInfo::default()
        .size(1 << 20)
        .flags(vk::BufferCreateFlags::SPARSE_BINDING | vk::BufferCreateFlags::SPARSE_RESIDENCY)
        .usage(super::sparse::VK_USAGE)
        .sharing_mode(vk::SharingMode::EXCLUSIVE);
    // SAFETY: sparse features are enabled on this device (`caps.sparse` is
    // only set when `open_custom` enabled them); the probe buffer is
    // destroyed right after the query and never used; the guard only lends
    // the ash device.
    let req = unsafe {
        let hal = device.as_hal::<Vulkan>().ok_or(VkError::NotVulkan("device"))?;
        let d = hal.raw_device();
        let b = d.create_buffer(&info, None).map_err(VkError::vk("vkCreateBuffer(sparse probe)"))?;
        let req = d.get_buffer_memory_requirements(b);
        d.destroy_buffer(b, None);
        req
    };
    caps.sparse_block_size = req.alignment;
    Ok(caps)
}
