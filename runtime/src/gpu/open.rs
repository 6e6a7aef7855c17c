//! Opening the runtime's device: through `svm::vk` (host import, sparse
//! binding), a plain wgpu device as the fallback, or the application's own
//! ([`SharedDevice`]); and the optional kernel timestamps.

use super::*;

/// Pick the adapter: `WGPU_ADAPTER_NAME` (substring, case-insensitive) if
/// set, else the first hardware adapter of `WGPU_BACKEND` (default: Vulkan),
/// else the first software one.
///
/// Public so that explicit-copy baselines (demos, benchmarks) run on exactly
/// the adapter and limits the runtime uses.
pub fn create_wgpu_device() -> Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue, DeviceInfo), SvmError> {
    create_device(false)
}

pub(super) fn create_device(
    host_mapped_pool: bool,
) -> Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue, DeviceInfo), SvmError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if wgpu::Backends::from_env().is_none() {
        desc.backends = wgpu::Backends::VULKAN;
    }
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    let adapter = crate::vk::device::select_adapter(&instance, backends).map_err(|e| match e {
        crate::vk::VkError::NoAdapter(m) => SvmError::NoAdapter(m),
        other => SvmError::RequestDevice(other.to_string()),
    })?;
    let info = adapter.get_info();
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("svm"),
        required_features: if host_mapped_pool { mapped_pool_feature(&adapter) } else { wgpu::Features::empty() },
        required_limits: crate::vk::device::runtime_limits(&limits),
        ..Default::default()
    }))
    .map_err(|e| SvmError::RequestDevice(e.to_string()))?;
    let info = DeviceInfo {
        name: info.name,
        driver: format!("{} {}", info.driver, info.driver_info),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
    };
    Ok((adapter, device, queue, info))
}

/// Environment variable: `0` keeps the device pool out of host-mapped memory
/// even on unified-memory adapters (for comparisons).
pub const MAPPED_POOL_ENV: &str = "SVM_MAPPED_POOL";

/// Whether [`MAPPED_POOL_ENV`] allows the host-mapped pool.
pub(super) fn mapped_pool_allowed() -> bool {
    std::env::var(MAPPED_POOL_ENV).map_or(true, |v| v != "0")
}

/// On adapters whose memory *is* host memory (CPU drivers such as lavapipe,
/// integrated GPUs), the pool can be mapped by the CPU directly
/// (`MAPPABLE_PRIMARY_BUFFERS`): migrations then copy between the pool and
/// the host copy with no staging buffer and no queue round trip. Discrete
/// GPUs keep the pool in device-local memory.
fn mapped_pool_feature(adapter: &wgpu::Adapter) -> wgpu::Features {
    let unified = matches!(adapter.get_info().device_type, wgpu::DeviceType::Cpu | wgpu::DeviceType::IntegratedGpu);
    let allowed = mapped_pool_allowed();
    if unified && allowed && adapter.features().contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS) {
        wgpu::Features::MAPPABLE_PRIMARY_BUFFERS
    } else {
        wgpu::Features::empty()
    }
}

/// A kernel pass's GPU start and end times (`TIMESTAMP_QUERY`): the time
/// the kernel itself took, without the queue's latency.
pub(crate) struct Timestamps {
    pub set: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    /// Nanoseconds per tick.
    pub period: f32,
}

impl Timestamps {
    pub(super) fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Option<Self> {
        if !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("svm kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("svm kernel timestamps"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Self {
            set,
            resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            period: queue.get_timestamp_period(),
        })
    }
}

/// A device the application already has, for the runtime to use instead of
/// opening its own ([`crate::SvmDescriptor::device`]): managed memory then
/// lives on the application's device, and the application's own pipelines
/// and passes can use it ([`crate::Svm::with_bindings`]).
///
/// * [`SharedDevice::new`] takes any wgpu device: the software mapping mode
///   needs only storage buffers (binding arrays are used where the device
///   has them enabled; the mapped pool where it has
///   `MAPPABLE_PRIMARY_BUFFERS` on a unified-memory adapter).
/// * [`SharedDevice::from_vk`] takes a device opened through
///   [`crate::vk::open`]: the sparse and coherent modes, and `AccessedBy`,
///   need the Vulkan features that opens (`want_sparse`, `want_host_import`).
///
/// The runtime installs no device-lost or uncaptured-error callback on a
/// shared device (they are the application's).
#[derive(Clone)]
pub struct SharedDevice {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    raw: Option<std::sync::Arc<crate::vk::RawDevice>>,
    host_import: bool,
}

impl core::fmt::Debug for SharedDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedDevice")
            .field("adapter", &self.adapter.get_info().name)
            .field("vulkan", &self.raw.is_some())
            .field("host_import", &self.host_import)
            .finish_non_exhaustive()
    }
}

impl SharedDevice {
    /// Any wgpu device (software mapping mode).
    pub fn new(adapter: &wgpu::Adapter, device: &wgpu::Device, queue: &wgpu::Queue) -> Self {
        Self { adapter: adapter.clone(), device: device.clone(), queue: queue.clone(), raw: None, host_import: false }
    }
    /// A device opened through [`crate::vk::open`] (every mode its features
    /// allow).
    pub fn from_vk(d: &crate::vk::OpenDevice) -> Self {
        Self {
            adapter: d.adapter.clone(),
            device: d.device.clone(),
            queue: d.queue.clone(),
            raw: d.raw.clone(),
            host_import: d.caps.host_import && d.raw.is_some(),
        }
    }

    pub(super) fn opened(&self, mode: MappingMode) -> Result<Opened, SvmError> {
        let need = |what: &str| {
            SvmError::Config(format!(
                "the {mode:?} mapping mode on a shared device needs {what}: open the device with svm::vk::open"
            ))
        };
        match mode {
            MappingMode::Sparse if !self.raw.as_ref().is_some_and(|r| r.caps().sparse) => {
                return Err(need("sparse binding (DeviceDescriptor::want_sparse)"))
            }
            MappingMode::Coherent if !self.host_import => {
                return Err(need("host import (DeviceDescriptor::want_host_import)"))
            }
            _ => {}
        }
        let i = self.adapter.get_info();
        Ok(Opened {
            info: DeviceInfo {
                name: i.name.clone(),
                driver: format!("{} {}", i.driver, i.driver_info),
                backend: format!("{:?}", i.backend),
                device_type: format!("{:?}", i.device_type),
            },
            adapter: self.adapter.clone(),
            device: self.device.clone(),
            queue: self.queue.clone(),
            raw: self.raw.clone(),
            host_import: self.host_import,
            validation: None,
            instance: None,
        })
    }
}

pub(super) struct Opened {
    pub(super) adapter: wgpu::Adapter,
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) info: DeviceInfo,
    pub(super) raw: Option<std::sync::Arc<crate::vk::RawDevice>>,
    pub(super) host_import: bool,
    pub(super) validation: Option<crate::vk::ValidationCapture>,
    pub(super) instance: Option<wgpu::Instance>,
}

/// Open the runtime's device through [`crate::vk::open`] (so that host
/// memory can be imported for the coherent mode), asking for the mappable
/// pool feature where it helps; fall back to a plain wgpu device.
pub(super) fn open_device(host_mapped_pool: bool, sparse: bool) -> Result<Opened, SvmError> {
    use crate::vk::{DeviceDescriptor, ValidationMode, VkError};
    let allowed = mapped_pool_allowed();
    let mut tries = vec![wgpu::Features::empty()];
    if host_mapped_pool && allowed {
        tries.insert(0, wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
    }
    let mut last = None;
    for features in tries {
        let desc = DeviceDescriptor {
            label: Some("svm"),
            required_features: features,
            optional_features: BINDING_ARRAY_FEATURES | wgpu::Features::TIMESTAMP_QUERY,
            required_limits: None,
            want_sparse: sparse,
            want_host_import: true,
            want_buffer_device_address: false,
            validation: ValidationMode::Auto,
        };
        match crate::vk::open(&desc) {
            Ok(d) => {
                let i = &d.info;
                let info = DeviceInfo {
                    name: i.name.clone(),
                    driver: format!("{} {}", i.driver, i.driver_info),
                    backend: format!("{:?}", i.backend),
                    device_type: format!("{:?}", i.device_type),
                };
                let host_import = d.caps.host_import && d.raw.is_some();
                return Ok(Opened {
                    adapter: d.adapter,
                    device: d.device,
                    queue: d.queue,
                    info,
                    raw: d.raw,
                    host_import,
                    validation: d.validation,
                    instance: Some(d.instance),
                });
            }
            Err(VkError::NoAdapter(m)) => return Err(SvmError::NoAdapter(m)),
            Err(e) => last = Some(e),
        }
    }
    tracing::warn!("svm: opening the device through ash failed ({last:?}); using a plain wgpu device");
    let (adapter, device, queue, info) = create_device(host_mapped_pool)?;
    Ok(Opened { adapter, device, queue, info, raw: None, host_import: false, validation: None, instance: None })
}
