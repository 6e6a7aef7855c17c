//! Opening the runtime's device: through `svm::vk` (host import, sparse
//! binding), a plain wgpu device as the fallback (and the only way without
//! the `vulkan` feature), or the application's own ([`SharedDevice`]); and
//! the optional kernel timestamps.

use super::*;

/// Pick the adapter: `WGPU_ADAPTER_NAME` (substring, case-insensitive) if
/// set, else the first hardware adapter of `WGPU_BACKEND` (default: Vulkan;
/// every backend this build has without the `vulkan` feature), else the
/// first software one.
///
/// Public so that explicit-copy baselines (demos, benchmarks) run on exactly
/// the adapter and limits the runtime uses.
pub fn create_wgpu_device() -> Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue, DeviceInfo), SvmError> {
    create_device(false, wgpu::Features::empty())
}

/// The backends the runtime looks at: `WGPU_BACKEND`, else Vulkan (the
/// backend `svm::vk` works below), else, without the `vulkan` feature,
/// whichever backends wgpu is built with.
fn backends_from_env() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(if cfg!(feature = "vulkan") {
        wgpu::Backends::VULKAN
    } else {
        wgpu::Backends::all()
    })
}

/// A plain wgpu device (`request_device`) with `optional` features where
/// the adapter has them.
pub(super) fn create_device(
    host_mapped_pool: bool,
    optional: wgpu::Features,
) -> Result<(wgpu::Adapter, wgpu::Device, wgpu::Queue, DeviceInfo), SvmError> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends_from_env();
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    let adapter = select_adapter(&instance, backends).map_err(SvmError::NoAdapter)?;
    let info = adapter.get_info();
    let limits = adapter.limits();
    let mapped = if host_mapped_pool { mapped_pool_feature(&adapter) } else { wgpu::Features::empty() };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("svm"),
        required_features: mapped | (optional & adapter.features()),
        required_limits: runtime_limits(&limits),
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

/// The limits the runtime requests: the adapter's storage-binding and
/// buffer sizes (pool segments are as large as a binding allows), at least
/// 8 storage buffers per stage, and its binding-array size; wgpu's defaults
/// otherwise.
pub fn runtime_limits(adapter: &wgpu::Limits) -> wgpu::Limits {
    wgpu::Limits {
        max_storage_buffer_binding_size: adapter.max_storage_buffer_binding_size,
        max_buffer_size: adapter.max_buffer_size,
        max_storage_buffers_per_shader_stage: adapter.max_storage_buffers_per_shader_stage.max(8),
        max_binding_array_elements_per_shader_stage: adapter.max_binding_array_elements_per_shader_stage,
        ..wgpu::Limits::default()
    }
}

/// The adapter the runtime uses: `WGPU_ADAPTER_NAME` (substring,
/// case-insensitive) if set, else the first hardware adapter of `backends`,
/// else the first software one. The error says what was looked for.
pub(crate) fn select_adapter(instance: &wgpu::Instance, backends: wgpu::Backends) -> Result<wgpu::Adapter, String> {
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let wanted = std::env::var("WGPU_ADAPTER_NAME").ok().map(|s| s.to_lowercase());
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    match &wanted {
        Some(w) => adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(w.as_str())),
        None => {
            let mut a = adapters;
            a.sort_by_key(|x| x.get_info().device_type == wgpu::DeviceType::Cpu);
            a.into_iter().next()
        }
    }
    .ok_or_else(|| {
        let built = wgpu::Instance::enabled_backend_features();
        match &wanted {
            _ if !built.intersects(backends) => format!(
                "WGPU_BACKEND asks for {backends:?}; this build has {built:?} (svm-runtime's `vulkan` and `gl` features)"
            ),
            Some(w) => format!("WGPU_ADAPTER_NAME={w:?} matches none of {names:?}"),
            None => format!("no adapter for backends {backends:?}"),
        }
    })
}

/// Environment variable: `0` keeps the device pool out of host-mapped memory
/// even on unified-memory adapters (for comparisons).
pub const MAPPED_POOL_ENV: &str = "SVM_MAPPED_POOL";

/// Whether [`MAPPED_POOL_ENV`] allows the host-mapped pool (unset, `1`,
/// `true`, `on`: yes; `0`, `false`, `off`: no); anything else is refused.
pub(super) fn mapped_pool_env() -> Result<bool, SvmError> {
    match std::env::var(MAPPED_POOL_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(true),
        Ok(v) if matches!(v.as_str(), "" | "1" | "true" | "on") => Ok(true),
        Ok(v) if matches!(v.as_str(), "0" | "false" | "off") => Ok(false),
        Ok(v) => Err(SvmError::Config(format!("{MAPPED_POOL_ENV}={v:?}: expected 0 or 1"))),
        Err(e) => Err(SvmError::Config(format!("{MAPPED_POOL_ENV}: {e}"))),
    }
}

/// [`mapped_pool_env`], checked at the runtime's creation (`Gpu::new`).
pub(super) fn mapped_pool_allowed() -> bool {
    mapped_pool_env().unwrap_or(true)
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
/// * `SharedDevice::from_vk` (the `vulkan` feature) takes a device opened
///   through `svm::vk::open`: the sparse and coherent modes, and
///   `AccessedBy`, need the Vulkan features that opens (`want_sparse`,
///   `want_host_import`).
///
/// The runtime installs no device-lost or uncaptured-error callback on a
/// shared device (they are the application's). In the sparse mode the
/// runtime binds memory with raw `vkQueueBindSparse` calls on the queue,
/// which wgpu's own queue lock does not cover: while a runtime on the
/// device lives, submit from threads that may run beside its operations
/// with [`crate::Svm::submit_commands`] (Vulkan requires a queue's calls to
/// be externally synchronized). The other modes make no raw queue call.
///
/// wgpu-core 30 asserts inside a `Device::poll` that waits for a submission
/// with a timeout when another thread's poll (or submit, which polls) empties
/// the queue meanwhile. The runtime makes its own polls and submissions
/// under one lock; an application thread polling or submitting on the
/// shared device beside the runtime's waits (a staged migration, the end of
/// `with_bindings`, a plain device's launch completion) can still meet it
/// (a panic in that wait). Launch completion on a Vulkan device opened
/// through [`crate::vk::open`] is clear of it; those other waits are not
/// yet (they would have to confirm with non-blocking polls too).
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
    #[cfg(feature = "vulkan")]
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
#[cfg(feature = "vulkan")]
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
    let (adapter, device, queue, info) = create_device(host_mapped_pool, wgpu::Features::empty())?;
    Ok(Opened { adapter, device, queue, info, raw: None, host_import: false, validation: None, instance: None })
}

/// Without the `vulkan` feature: a plain wgpu device on any backend, with
/// the optional features the Vulkan path asks for (binding arrays,
/// timestamps) where the adapter has them, and the mappable pool where it
/// helps. (`sparse` was refused before: [`MappingMode::check_built`].)
#[cfg(not(feature = "vulkan"))]
pub(super) fn open_device(host_mapped_pool: bool, _sparse: bool) -> Result<Opened, SvmError> {
    let optional = BINDING_ARRAY_FEATURES | wgpu::Features::TIMESTAMP_QUERY;
    let (adapter, device, queue, info) = create_device(host_mapped_pool, optional)?;
    Ok(Opened { adapter, device, queue, info, raw: None, host_import: false, validation: None, instance: None })
}
