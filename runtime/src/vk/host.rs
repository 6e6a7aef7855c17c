//! [`HostImport`]: a page-aligned host range (an mmap, aligned heap memory)
//! imported as `VkDeviceMemory` with `VK_EXT_external_memory_host` and bound
//! to a plain `VkBuffer` that wgpu sees as a storage buffer. A kernel reads
//! and writes the host pages themselves: no staging copy either way.
//!
//! Sequence:
//!
//! 1. check `ptr`/`len` against `minImportedHostPointerAlignment`
//!    (`VUID-VkImportMemoryHostPointerInfoEXT-pHostPointer-01749`,
//!    `VUID-VkMemoryAllocateInfo-allocationSize-01745`);
//! 2. `vkGetMemoryHostPointerPropertiesEXT` → the memory types this pointer
//!    can be imported as;
//! 3. `vkCreateBuffer` with `VkExternalMemoryBufferCreateInfo`
//!    (`HOST_ALLOCATION_EXT`), intersect its `memoryTypeBits`, prefer a
//!    `HOST_COHERENT` type;
//! 4. `vkAllocateMemory` + `VkImportMemoryHostPointerInfoEXT`,
//!    `vkBindBufferMemory`;
//! 5. wrap as a wgpu buffer; the drop callback destroys the buffer, frees
//!    the memory, then drops the caller's `owner` (e.g. the mmap guard), so
//!    the host pages outlive every GPU use.
//!
//! Visibility: host writes made before `wgpu::Queue::submit` are visible to
//! that submission (Vulkan's host-write ordering guarantee at submit on
//! coherent memory). Device writes reach the host only through a memory
//! dependency with `HOST_READ` as its second scope — a fence or semaphore
//! wait alone is not one. Submit [`host_read_barrier`] after the work (in
//! the same or a later submission), wait for it (`Device::poll`), then read.
//! On a non-`HOST_COHERENT` type ([`HostImport::is_coherent`] false) the
//! runtime would also need `vkInvalidateMappedMemoryRanges`; lavapipe's
//! types are coherent.
//!
//! # Safety
//!
//! Importing gives the GPU the right to access the host pages until the
//! memory is freed; [`HostImport::new`] is `unsafe` because only the caller
//! can promise the pages stay mapped that long (and hands over an `owner`
//! that keeps them so). CPU accesses while a kernel uses the range are data
//! races on bytes the caller must avoid, as with any shared memory.

use std::sync::Arc;

use ash::vk;
use wgpu_hal::api::Vulkan;

use super::raw::RawDevice;
use super::VkError;

/// Host-import failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostImportError {
    /// The device was opened without `VK_EXT_external_memory_host`.
    #[error("VK_EXT_external_memory_host is not enabled on this device")]
    Unsupported,
    /// Zero-length range.
    #[error("zero-length host import")]
    ZeroSize,
    /// Pointer or length not a multiple of `minImportedHostPointerAlignment`.
    #[error("host {what} {value:#x} is not a multiple of minImportedHostPointerAlignment ({alignment})")]
    Misaligned {
        /// `"pointer"` or `"length"`.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The required alignment.
        alignment: u64,
    },
    /// No memory type is allowed by both the pointer and the buffer.
    #[error("no memory type fits: host pointer allows {host_bits:#b}, buffer allows {buffer_bits:#b}")]
    NoMemoryType {
        /// `vkGetMemoryHostPointerPropertiesEXT` bits.
        host_bits: u32,
        /// `vkGetBufferMemoryRequirements` bits.
        buffer_bits: u32,
    },
    /// The device failed (or refused the pointer).
    #[error(transparent)]
    Device(#[from] VkError),
}

/// wgpu usage of imported buffers.
pub const WGPU_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// An imported host range, usable as a wgpu storage buffer.
pub struct HostImport {
    raw: Arc<RawDevice>,
    buffer: wgpu::Buffer,
    /// Address of the range (an integer: the type makes no claim to own or
    /// dereference it).
    addr: usize,
    len: usize,
    memory_type_index: u32,
    coherent: bool,
}

impl core::fmt::Debug for HostImport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostImport")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("memory_type_index", &self.memory_type_index)
            .field("coherent", &self.coherent)
            .finish_non_exhaustive()
    }
}

impl HostImport {
    /// Import `len` bytes at `ptr`. `owner` is dropped after the device
    /// memory is freed (when wgpu's last use of the buffer is over).
    ///
    /// # Safety
    ///
    /// * `ptr..ptr + len` is mapped readable and writable host memory
    ///   (anonymous or shared mmap, or aligned heap memory), and stays mapped
    ///   to the same pages for as long as `owner` is alive;
    /// * the caller does not access the range while GPU work using the
    ///   buffer runs (byte-level data races are the caller's to avoid).
    pub unsafe fn new<O: Send + Sync + 'static>(
        raw: &Arc<RawDevice>,
        label: Option<&str>,
        ptr: *mut u8,
        len: usize,
        owner: O,
    ) -> Result<Self, HostImportError> {
        let caps = raw.caps();
        let Some(fns) = raw.host_memory_fns().filter(|_| caps.host_import) else {
            return Err(HostImportError::Unsupported);
        };
        if len == 0 {
            return Err(HostImportError::ZeroSize);
        }
        let alignment = caps.min_imported_host_pointer_alignment.max(1);
        let addr = ptr as usize;
        for (what, value) in [("pointer", addr as u64), ("length", len as u64)] {
            if value % alignment != 0 {
                return Err(HostImportError::Misaligned { what, value, alignment });
            }
        }
        let d = raw.raw_device().clone();
        let handle = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;

        let mut props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: `ptr` is aligned (checked) host memory the caller vouches
        // for; the extension is enabled (`fns` exists only then).
        unsafe { (fns.fp().get_memory_host_pointer_properties_ext)(d.handle(), handle, ptr.cast(), &mut props) }
            .result()
            .map_err(VkError::vk("vkGetMemoryHostPointerPropertiesEXT"))?;

        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
        let info = vk::BufferCreateInfo::default()
            .size(len as u64)
            .usage(super::sparse::VK_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut external);
        // SAFETY: valid create info on a live device.
        let buffer = unsafe { d.create_buffer(&info, None) }.map_err(VkError::vk("vkCreateBuffer(host import)"))?;
        // SAFETY: `buffer` is live.
        let req = unsafe { d.get_buffer_memory_requirements(buffer) };
        let bits = props.memory_type_bits & req.memory_type_bits;
        let coherent_flags = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let Some(type_index) = raw
            .find_memory_type(bits, vk::MemoryPropertyFlags::empty(), coherent_flags)
            .filter(|_| req.size <= len as u64)
        else {
            // SAFETY: unused, created above.
            unsafe { d.destroy_buffer(buffer, None) };
            return Err(HostImportError::NoMemoryType {
                host_bits: props.memory_type_bits,
                buffer_bits: req.memory_type_bits,
            });
        };
        let coherent = raw.memory_type_flags(type_index).contains(coherent_flags);

        let mut import = vk::ImportMemoryHostPointerInfoEXT::default().handle_type(handle).host_pointer(ptr.cast());
        let ai = vk::MemoryAllocateInfo::default()
            .allocation_size(len as u64)
            .memory_type_index(type_index)
            .push_next(&mut import);
        // SAFETY: pointer and size are aligned (checked), the type is one
        // the pointer allows (`props`), the range is valid host memory (the
        // caller's contract).
        let memory = match unsafe { d.allocate_memory(&ai, None) } {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: unused, created above.
                unsafe { d.destroy_buffer(buffer, None) };
                return Err(VkError::Vulkan { op: "vkAllocateMemory(import host pointer)", result: e }.into());
            }
        };
        // SAFETY: the type is in the buffer's `memoryTypeBits`, offset 0,
        // `req.size <= len`; the buffer was never bound.
        if let Err(e) = unsafe { d.bind_buffer_memory(buffer, memory, 0) } {
            // SAFETY: both unused.
            unsafe {
                d.destroy_buffer(buffer, None);
                d.free_memory(memory, None);
            }
            return Err(VkError::Vulkan { op: "vkBindBufferMemory(host import)", result: e }.into());
        }

        let dd = d.clone();
        let on_drop: wgpu_hal::DropCallback = Box::new(move || {
            // SAFETY: wgpu-hal calls this once wgpu no longer uses the
            // buffer; buffer first, then its memory, then the host pages'
            // owner (the import must not outlive the mapping).
            unsafe {
                dd.destroy_buffer(buffer, None);
                dd.free_memory(memory, None);
            }
            drop(owner);
        });
        // SAFETY: `buffer` lives until the callback; it was created from this
        // device, `len` bytes, with the usage `WGPU_USAGE` maps to, and is
        // bound to memory (initialised: it holds the host bytes).
        let wbuf = unsafe {
            let hal = wgpu_hal::vulkan::Buffer::from_raw_externally_owned(buffer, on_drop);
            raw.device().create_buffer_from_hal::<Vulkan>(
                hal,
                &wgpu::BufferDescriptor { label, size: len as u64, usage: WGPU_USAGE, mapped_at_creation: false },
            )
        };
        Ok(Self { raw: raw.clone(), buffer: wbuf, addr, len, memory_type_index: type_index, coherent })
    }

    /// `len` bytes of zeroed, page-aligned heap memory of its own, imported:
    /// device memory the CPU reaches through [`Self::as_ptr`] at any time,
    /// with no map call that waits for the GPU (the runtime's host-mapped
    /// pool). The memory is freed after the device memory, with the buffer.
    pub fn zeroed(raw: &Arc<RawDevice>, label: Option<&str>, len: usize) -> Result<Self, HostImportError> {
        if len == 0 {
            return Err(HostImportError::ZeroSize);
        }
        let align = usize::try_from(raw.caps().min_imported_host_pointer_alignment.max(4096)).unwrap_or(4096);
        let len = len.next_multiple_of(align);
        let pages = HeapPages::new(len, align).ok_or(HostImportError::ZeroSize)?;
        let ptr = pages.ptr.as_ptr();
        // SAFETY: `ptr..ptr + len` is a live, aligned, zeroed allocation of
        // our own, freed only when `pages` (the owner) drops, which the
        // import does after freeing the device memory; races on its bytes
        // are the users' of `as_ptr` to avoid.
        unsafe { Self::new(raw, label, ptr, len, pages) }
    }

    /// The wgpu storage buffer over the host range.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Start of the host range.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true (zero-length imports are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The Vulkan memory type it was imported as.
    pub fn memory_type_index(&self) -> u32 {
        self.memory_type_index
    }

    /// `HOST_VISIBLE | HOST_COHERENT`: no flush/invalidate needed.
    pub fn is_coherent(&self) -> bool {
        self.coherent
    }

    /// The device side.
    pub fn raw(&self) -> &Arc<RawDevice> {
        &self.raw
    }
}

/// Zeroed heap memory aligned for import, freed on drop.
struct HeapPages {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: a plain allocation with no thread affinity; this owner only frees it.
unsafe impl Send for HeapPages {}
// SAFETY: as above; `&HeapPages` gives no access to the bytes.
unsafe impl Sync for HeapPages {}

impl HeapPages {
    fn new(len: usize, align: usize) -> Option<Self> {
        let layout = std::alloc::Layout::from_size_align(len, align).ok()?;
        // SAFETY: `layout` has a non-zero size (callers refuse zero).
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(Self { ptr, layout })
    }
}

impl Drop for HeapPages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A command buffer holding one global memory barrier
/// (shader/transfer writes → host reads). Submit it after the work whose
/// results the CPU reads, then wait for the submission.
///
/// It is a command buffer of its own because wgpu forbids mixing raw and
/// wgpu encoding in one encoder; barriers apply across command-buffer
/// boundaries within the queue's submission order.
pub fn host_read_barrier(device: &wgpu::Device) -> Result<wgpu::CommandBuffer, VkError> {
    let mut encoder =
        device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm host-read barrier") });
    let d = {
        // SAFETY: only the ash device is cloned out of the guard.
        let hal = unsafe { device.as_hal::<Vulkan>() }.ok_or(VkError::NotVulkan("device"))?;
        hal.raw_device().clone()
    };
    let barrier = vk::MemoryBarrier::default()
        .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
        .dst_access_mask(vk::AccessFlags::HOST_READ);
    // SAFETY: the encoder is fresh and only this closure records into it
    // (nothing through wgpu: mixing is forbidden); a pipeline barrier is
    // valid anywhere outside a render pass; we neither end nor destroy the
    // command buffer (wgpu does at `finish`).
    let recorded = unsafe {
        encoder.as_hal_mut::<Vulkan, _, _>(|enc| {
            enc.map(|enc| {
                d.cmd_pipeline_barrier(
                    enc.raw_handle(),
                    vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::HOST,
                    vk::DependencyFlags::empty(),
                    &[barrier],
                    &[],
                    &[],
                );
            })
        })
    };
    recorded.ok_or(VkError::NotVulkan("command encoder"))?;
    Ok(encoder.finish())
}
