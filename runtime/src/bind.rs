//! Bound access, the launch side: a launch's [`Binding`]s checked against
//! the kernel's own bindings (before anything changes), and the bind groups
//! built once their ranges are resident and placed (see
//! `runtime/bindable.rs` for the placement).

use crate::error::{BindError, LaunchError};
use crate::kernel::{AccessMode, BindTarget, Binding, BindingType, Kernel};

/// A launch binding that fits its kernel binding.
#[derive(Copy, Clone, Debug)]
pub(crate) enum Checked<'a> {
    /// A managed range; `write` when the launch may write it; `discard`
    /// when its whole pages need not be copied in.
    Managed { addr: usize, len: usize, write: bool, discard: bool },
    /// Bytes for a uniform buffer.
    Uniform(&'a [u8]),
}

/// Where a binding's bytes are on the device.
pub(crate) struct Placed {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
}

/// What every storage binding of a managed range needs from the device:
/// at most `max_storage_buffer_binding_size` bytes, starting at a multiple of
/// `min_storage_buffer_offset_alignment` (arena pages are 4 KiB aligned in
/// every view, so the address's alignment is the binding offset's).
pub(crate) fn check_storage_range(addr: usize, len: usize, limits: &wgpu::Limits) -> Result<(), BindError> {
    if len as u64 > limits.max_storage_buffer_binding_size {
        return Err(BindError::TooLarge {
            len: len as u64,
            limit: limits.max_storage_buffer_binding_size,
            limit_name: "max_storage_buffer_binding_size",
        });
    }
    let align = u64::from(limits.min_storage_buffer_offset_alignment);
    if !(addr as u64).is_multiple_of(align) {
        return Err(BindError::Misaligned { addr, align, why: "the device's min_storage_buffer_offset_alignment" });
    }
    Ok(())
}

/// The error for binding `index` of `kernel`.
pub(crate) fn error(kernel: &Kernel, index: usize, reason: BindError) -> LaunchError {
    let b = &kernel.bindings[index];
    LaunchError::Binding { index, name: b.name.clone(), group: b.group, binding: b.binding, reason }
}

/// Check `given` against the kernel's bindings: count, kind, mode, size,
/// alignment and device limits. Whether managed ranges lie in live
/// allocations is checked under the update lock, by the caller.
pub(crate) fn check<'a>(
    kernel: &Kernel,
    given: &[Binding<'a>],
    limits: &wgpu::Limits,
) -> Result<Vec<Checked<'a>>, LaunchError> {
    if given.len() != kernel.bindings.len() {
        return Err(LaunchError::BindingCount {
            kernel: kernel.label.clone(),
            expected: kernel.bindings.len(),
            given: given.len(),
            names: kernel.bindings.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", "),
        });
    }
    let mut out = Vec::with_capacity(given.len());
    for (i, (b, k)) in given.iter().zip(&kernel.bindings).enumerate() {
        let err = |reason| Err(error(kernel, i, reason));
        let (len, checked) = match (b.target, k.ty) {
            (BindTarget::Managed { addr, len, mode, discard }, BindingType::Storage { read_only }) => {
                if !read_only && mode == AccessMode::Read {
                    return err(BindError::NotWritable);
                }
                if let Err(why) = check_storage_range(addr, len, limits) {
                    return err(why);
                }
                if addr % k.align as usize != 0 {
                    return err(BindError::Misaligned {
                        addr,
                        align: u64::from(k.align),
                        why: "the WGSL type's alignment",
                    });
                }
                (len as u64, Checked::Managed { addr, len, write: mode == AccessMode::ReadWrite, discard })
            }
            (BindTarget::Uniform(bytes), BindingType::Uniform) => {
                if bytes.len() as u64 > limits.max_uniform_buffer_binding_size {
                    return err(BindError::TooLarge {
                        len: bytes.len() as u64,
                        limit: limits.max_uniform_buffer_binding_size,
                        limit_name: "max_uniform_buffer_binding_size",
                    });
                }
                // Uniform buffers are padded to 16 bytes, zeroed.
                (bytes.len().next_multiple_of(16) as u64, Checked::Uniform(bytes))
            }
            (BindTarget::Managed { .. }, BindingType::Uniform) => {
                return err(BindError::WrongKind { declared: "var<uniform>", given: "a managed range" })
            }
            (BindTarget::Uniform(_), BindingType::Storage { .. }) => {
                return err(BindError::WrongKind { declared: "var<storage>", given: "a uniform value" })
            }
        };
        if len % 4 != 0 {
            return err(BindError::Length { len });
        }
        if len < k.min_size {
            return err(BindError::TooSmall { len, min: k.min_size });
        }
        out.push(checked);
    }
    Ok(out)
}

/// The kernel's bind groups (index = group; `None` where it has none),
/// `placed[i]` bound to its binding `i`; uniform values are copied into new
/// buffers here.
pub(crate) fn groups(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    kernel: &Kernel,
    checked: &[Checked<'_>],
    placed: &[Option<Placed>],
) -> Vec<Option<wgpu::BindGroup>> {
    let resources: Vec<Placed> = checked
        .iter()
        .zip(placed)
        .map(|(c, p)| match (c, p) {
            (Checked::Managed { .. }, Some(p)) => Placed { buffer: p.buffer.clone(), offset: p.offset, size: p.size },
            (Checked::Uniform(bytes), _) => {
                let mut padded = bytes.to_vec();
                padded.resize(bytes.len().next_multiple_of(16).max(16), 0);
                let buffer = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("svm uniform binding"),
                    size: padded.len() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                queue.write_buffer(&buffer, 0, &padded);
                Placed { buffer, offset: 0, size: padded.len() as u64 }
            }
            (Checked::Managed { .. }, None) => unreachable!("every managed binding is placed before binding"),
        })
        .collect();
    kernel
        .group_layouts
        .iter()
        .enumerate()
        .map(|(g, layout)| {
            let layout = layout.as_ref()?;
            let entries: Vec<wgpu::BindGroupEntry<'_>> = kernel
                .bindings
                .iter()
                .zip(&resources)
                .filter(|(b, _)| b.group as usize == g)
                .map(|(b, r)| wgpu::BindGroupEntry {
                    binding: b.binding,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &r.buffer,
                        offset: r.offset,
                        size: wgpu::BufferSize::new(r.size),
                    }),
                })
                .collect();
            Some(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&kernel.label),
                layout,
                entries: &entries,
            }))
        })
        .collect()
}
