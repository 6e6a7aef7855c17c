//! Creation of a [`SparseArena`]: the sparse `VkBuffer`, the pool's memory
//! chunks (mapped when host-visible) and the wgpu buffer wrapping them, with
//! the drop callback that destroys them.

use std::sync::Arc;

use ash::vk;
use wgpu_hal::api::Vulkan;

use super::blocks::FreeRuns;
use super::{SparseArena, SparseArenaDescriptor, SparseError, NONE, UNBOUND, VK_USAGE, WGPU_USAGE};
use crate::vk::raw::RawDevice;
use crate::vk::VkError;

impl SparseArena {
    /// Create the sparse buffer (nothing bound) and allocate the pool.
    pub fn new(raw: &Arc<RawDevice>, desc: &SparseArenaDescriptor<'_>) -> Result<Self, SparseError> {
        let caps = *raw.caps();
        if !caps.sparse || caps.sparse_block_size == 0 {
            return Err(SparseError::Unsupported);
        }
        if desc.size == 0 || desc.pool_blocks == 0 || desc.chunk_blocks == 0 {
            return Err(SparseError::ZeroSize);
        }
        let page_size = caps.sparse_block_size;
        let size = desc.size.div_ceil(page_size) * page_size;
        let limit = caps.sparse_address_space_size.min(raw.device().limits().max_buffer_size);
        if size > limit {
            return Err(SparseError::TooLarge { size, limit });
        }
        let pages = u32::try_from(size / page_size).map_err(|_| SparseError::TooLarge { size, limit })?;
        let d = raw.raw_device().clone();

        let info = vk::BufferCreateInfo::default()
            .size(size)
            .flags(vk::BufferCreateFlags::SPARSE_BINDING | vk::BufferCreateFlags::SPARSE_RESIDENCY)
            .usage(VK_USAGE)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: sparse binding/residency are enabled (`caps.sparse`), and
        // `size` ≤ sparseAddressSpaceSize (checked above).
        let vk_buffer = unsafe { d.create_buffer(&info, None) }.map_err(VkError::vk("vkCreateBuffer(sparse)"))?;
        // From here on, `cleanup` releases what exists if a step fails.
        let cleanup = |chunks: &[vk::DeviceMemory]| {
            // SAFETY: nothing uses these objects yet (no bind, no wgpu
            // wrapper); they were created from `d`.
            unsafe {
                d.destroy_buffer(vk_buffer, None);
                for &m in chunks {
                    d.free_memory(m, None);
                }
            }
        };
        // SAFETY: `vk_buffer` is live.
        let req = unsafe { d.get_buffer_memory_requirements(vk_buffer) };
        debug_assert_eq!(req.alignment, page_size, "sparse block size differs between buffers");
        let host_flags = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
        let host_type = raw
            .find_memory_type(req.memory_type_bits, host_flags, vk::MemoryPropertyFlags::DEVICE_LOCAL)
            .filter(|_| desc.host_mapped);
        let Some(type_index) = host_type.or_else(|| {
            raw.find_memory_type(
                req.memory_type_bits,
                vk::MemoryPropertyFlags::empty(),
                vk::MemoryPropertyFlags::DEVICE_LOCAL,
            )
        }) else {
            cleanup(&[]);
            return Err(SparseError::NoMemoryType(req.memory_type_bits));
        };

        let mut chunks = Vec::new();
        let mut left = desc.pool_blocks;
        while left > 0 {
            let n = left.min(desc.chunk_blocks);
            let ai = vk::MemoryAllocateInfo::default()
                .allocation_size(u64::from(n) * page_size)
                .memory_type_index(type_index);
            // SAFETY: valid allocate info with a type the buffer allows.
            match unsafe { d.allocate_memory(&ai, None) } {
                Ok(m) => chunks.push(m),
                Err(e) => {
                    cleanup(&chunks);
                    return Err(VkError::Vulkan { op: "vkAllocateMemory(sparse pool)", result: e }.into());
                }
            }
            left -= n;
        }

        // Host-mapped pool: every chunk mapped once, for the arena's life
        // (unmapped implicitly when the memory is freed).
        let mut chunk_host = Vec::new();
        if host_type.is_some() {
            for &m in &chunks {
                // SAFETY: `m` is host-visible memory of this device, not mapped
                // yet; the whole range is mapped once and never unmapped
                // before `vkFreeMemory` (which unmaps it).
                match unsafe { d.map_memory(m, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) } {
                    Ok(p) => chunk_host.push(p as usize),
                    Err(e) => {
                        cleanup(&chunks);
                        return Err(VkError::Vulkan { op: "vkMapMemory(sparse pool)", result: e }.into());
                    }
                }
            }
        }
        let owned_chunks = chunks.clone();
        let dd = d.clone();
        let on_drop: wgpu_hal::DropCallback = Box::new(move || {
            // SAFETY: wgpu-hal runs this once wgpu's last use of the buffer
            // is over, and the arena waited for its last bind before letting
            // go (Drop). Buffer first, then the memory it maps.
            unsafe {
                dd.destroy_buffer(vk_buffer, None);
                for m in owned_chunks {
                    dd.free_memory(m, None);
                }
            }
        });
        // SAFETY: `vk_buffer` outlives the hal buffer (destroyed only in the
        // callback); it was created from this device with the usage
        // `WGPU_USAGE` maps to, `size` bytes, not mappable by wgpu; it is
        // "initialised" in wgpu's sense (unbound pages are the caller's
        // business, documented).
        let buffer = unsafe {
            let hal = wgpu_hal::vulkan::Buffer::from_raw_externally_owned(vk_buffer, on_drop);
            raw.device().create_buffer_from_hal::<Vulkan>(
                hal,
                &wgpu::BufferDescriptor { label: desc.label, size, usage: WGPU_USAGE, mapped_at_creation: false },
            )
        };
        let n = desc.pool_blocks as usize;
        Ok(Self {
            raw: raw.clone(),
            buffer: Some(buffer),
            page_size,
            pages,
            chunks,
            chunk_host,
            chunk_blocks: desc.chunk_blocks,
            pool_blocks: desc.pool_blocks,
            free: FreeRuns::new(desc.pool_blocks, desc.chunk_blocks),
            allocated: vec![false; n],
            bind_count: vec![0; n],
            page_block: vec![UNBOUND; pages as usize],
            pending: vec![NONE; pages as usize],
            pending_runs: Vec::new(),
            pending_pages: 0,
            outbox: Arc::new(super::BindOutbox::new(raw.clone(), vk_buffer)),
            scratch: Vec::new(),
        })
    }
}
