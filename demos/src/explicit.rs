//! The explicit-copy baseline: a plain wgpu device of its own, ordinary
//! WGSL over storage buffers, `queue.write_buffer` in and a copy to a
//! MAP_READ staging buffer out. No managed memory, no page table.
//!
//! The array demos, BFS-TD and the histogram run the bound-access kernels
//! of `svm_shaders::kernels` (`*_BOUND`) here unchanged: one kernel source,
//! two memory models. Every kernel takes its sizes and scalars in a uniform
//! at group 0, binding 0 ([`Explicit::uniform`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use wgpu::util::DeviceExt;

/// Explicit-only kernels: the bottom-up BFS level over CSR arrays (the
/// managed BFS follows CPU pointers instead, which plain buffers cannot).
/// Everything else runs the bound kernels of `svm_shaders::kernels`.
pub mod wgsl {
    pub const BFS: &str = include_str!("wgsl/bfs.wgsl");
    /// Every explicit-only kernel with its name (validated by a unit test).
    #[cfg_attr(not(test), allow(dead_code, reason = "used by the tests"))]
    pub const ALL: &[(&str, &str)] = &[("bfs", BFS)];
}

/// Marker error: no adapter matched (the caller turns it into a skip).
#[derive(Debug)]
pub struct NoAdapter(pub String);

impl core::fmt::Display for NoAdapter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "no GPU adapter found ({})", self.0)
    }
}
impl std::error::Error for NoAdapter {}

/// A wgpu device for the explicit-copy variants.
pub struct Explicit {
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// Adapter name and driver.
    pub info: String,
    /// First uncaptured device error.
    error: Arc<Mutex<Option<String>>>,
    _adapter: wgpu::Adapter,
}

impl Explicit {
    /// The runtime's own adapter choice and limits
    /// ([`svm::create_wgpu_device`]).
    pub fn new() -> Result<Self> {
        let (adapter, device, queue, info) = match svm::create_wgpu_device() {
            Ok(x) => x,
            Err(svm::SvmError::NoAdapter(m)) => return Err(NoAdapter(m).into()),
            Err(e) => return Err(anyhow::Error::new(e).context("explicit-copy device")),
        };
        // Validation errors become `Err` at the next wait instead of a panic.
        let error = Arc::new(Mutex::new(None));
        let e2 = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut g = e2.lock().expect("not poisoned");
            if g.is_none() {
                *g = Some(e.to_string());
            }
        }));
        Ok(Self { device, queue, info: format!("{} ({})", info.name, info.driver), error, _adapter: adapter })
    }

    /// Compile a compute pipeline (layout from the shader).
    pub fn pipeline(&self, label: &str, source: &str, entry_point: &str) -> Result<wgpu::ComputePipeline> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let p = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some(entry_point),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            bail!("explicit kernel {label}: {e}");
        }
        Ok(p)
    }

    /// A storage buffer holding `data` (created mapped: no queue copy).
    pub fn buffer<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let pad;
        let contents = if bytes.is_empty() {
            pad = [0u8; 4];
            &pad[..]
        } else {
            bytes
        };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        })
    }

    /// A uniform buffer holding `value` (padded to 16 bytes, as the kernels'
    /// `var<uniform>` structs are), written by `queue.write_buffer`.
    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let bytes = bytemuck::bytes_of(value);
        let b = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).next_multiple_of(16).max(16),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&b, 0, bytes);
        b
    }

    /// Overwrite a uniform buffer made by [`Self::uniform`].
    pub fn write_uniform<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, value: &T) {
        self.queue.write_buffer(buf, 0, bytemuck::bytes_of(value));
    }

    /// An uninitialised (zeroed) storage buffer of `bytes`.
    pub fn empty(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer of `data`'s size, filled by `queue.write_buffer`
    /// (the explicit host→device copy).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let b = self.empty(label, core::mem::size_of_val(data) as u64);
        self.write(&b, data);
        b
    }

    /// `queue.write_buffer` at offset 0.
    pub fn write<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, data: &[T]) {
        if !data.is_empty() {
            self.queue.write_buffer(buf, 0, bytemuck::cast_slice(data));
        }
    }

    /// Bind `buffers` to bindings 0, 1, … of group 0 and dispatch; waits.
    pub fn dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let at: Vec<(u32, &wgpu::Buffer)> = buffers.iter().enumerate().map(|(i, &b)| (i as u32, b)).collect();
        self.dispatch_at(pipeline, &at, workgroups)
    }

    /// Bind `(binding, buffer)` pairs of group 0 (the pipeline's layout
    /// holds only the bindings its entry point uses) and dispatch; waits.
    pub fn dispatch_at(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
            .collect();
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bg, &[]);
            let [x, y, z] = workgroups;
            pass.dispatch_workgroups(x, y, z);
        }
        self.queue.submit([enc.finish()]);
        self.wait()
    }

    /// Dispatch once on dummy buffers with the uniform `params` at binding
    /// 0 (chosen so that the kernel touches nothing): keeps the driver's
    /// first-dispatch compilation out of the timings.
    pub fn warm_up<P: bytemuck::Pod>(
        &self,
        pipeline: &wgpu::ComputePipeline,
        bindings: &[u32],
        params: &P,
    ) -> Result<std::time::Duration> {
        let t = Instant::now();
        let p = self.uniform("warm-up params", params);
        let dummies: Vec<wgpu::Buffer> = bindings.iter().map(|_| self.empty("warm-up", 16)).collect();
        let mut at = vec![(0, &p)];
        at.extend(bindings.iter().zip(&dummies).map(|(&b, d)| (b, d)));
        self.dispatch_at(pipeline, &at, [1, 1, 1])?;
        Ok(t.elapsed())
    }

    /// Wait for everything submitted (and queued writes) to finish.
    pub fn wait(&self) -> Result<()> {
        self.queue.submit([]);
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("explicit device: {e}"))?;
        if let Some(e) = self.error.lock().expect("not poisoned").clone() {
            bail!("explicit device: {e}");
        }
        Ok(())
    }

    /// Copy the first `len` elements of `buf` to a MAP_READ staging buffer
    /// and read them (the explicit device→host copy).
    pub fn read<T: bytemuck::Pod>(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
        let bytes = (len * core::mem::size_of::<T>()) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("explicit staging"),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes.next_multiple_of(4));
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let status = Arc::new(Mutex::new(None));
        let s2 = status.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| *s2.lock().expect("not poisoned") = Some(r));
        self.wait()?;
        match status.lock().expect("not poisoned").take() {
            Some(Ok(())) => {}
            Some(Err(e)) => bail!("map_async: {e}"),
            None => bail!("map_async did not complete"),
        }
        let out = {
            let view = slice.get_mapped_range().map_err(|e| anyhow!("get_mapped_range: {e}"))?;
            bytemuck::pod_collect_to_vec(&view[..bytes as usize])
        };
        staging.unmap();
        Ok(out)
    }
}

/// Timings of one explicit-copy run.
#[derive(Copy, Clone, Debug, Default)]
pub struct Timing {
    pub upload_ms: f64,
    pub kernel_ms: f64,
    pub download_ms: f64,
}

impl Timing {
    pub fn total_ms(&self) -> f64 {
        self.upload_ms + self.kernel_ms + self.download_ms
    }
}

impl core::fmt::Display for Timing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:.1} ms (upload {:.1} ms, kernel {:.1} ms, download {:.1} ms)",
            self.total_ms(),
            self.upload_ms,
            self.kernel_ms,
            self.download_ms
        )
    }
}

/// Milliseconds since `t`.
pub fn since_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    #[test]
    fn explicit_kernels_validate() {
        for (name, src) in super::wgsl::ALL {
            let m = naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
                .validate(&m)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(src)));
        }
    }
}
