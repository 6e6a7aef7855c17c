//! The coherent mode's device view of the arena: the arena's host memory
//! (its alias view), imported as allocations reach it.
//!
//! The view is one import of the arena's first `covered` bytes, cut into
//! the windows kernels bind (`seg_bytes` each; the prelude finds page `p`
//! in window `p >> segment_page_shift`), so that a bound range anywhere in
//! it is one binding of one buffer. When an allocation ends beyond
//! `covered`, the pages up to the new end (at least double the old one) are
//! populated (an import pins what is there) and imported again as one
//! buffer; passes in flight keep the old import alive (wgpu holds its
//! buffer) and the bind groups are made again. Windows past `covered` are
//! bound to a placeholder that no kernel reads: every page there is
//! unallocated, and the prelude refuses unallocated pages before the load.
//! So a coherent arena costs host memory and device imports for what has
//! been allocated (at most twice it, from [`MIN_COVERED`]), not for its
//! size. The same pages are then imported by two device memories while
//! an old import drains: Vulkan allows it (`VK_EXT_external_memory_host`
//! sets no exclusivity), and neither writes them by itself.

use std::borrow::Cow;

use parking_lot::Mutex;

use super::{Gpu, SegmentView};

/// The least a coherent view covers once anything is allocated.
const MIN_COVERED: u64 = 64 << 20;

/// The coherent mode's view: where the arena's host memory is, and the
/// current import with the bytes it covers.
pub(crate) struct CoherentView {
    /// The alias view's address. An integer, so that `Gpu` stays `Send +
    /// Sync`; [`Gpu::new`]'s contract keeps it mapped while the `Gpu` lives.
    host: usize,
    view_bytes: u64,
    seg_bytes: u64,
    import: Mutex<Option<(crate::vk::HostImport, u64)>>,
}

impl CoherentView {
    pub fn new(host: *mut u8, view_bytes: u64, seg_bytes: u64) -> Self {
        Self { host: host as usize, view_bytes, seg_bytes, import: Mutex::new(None) }
    }
}

impl Gpu {
    /// Bytes of the arena the coherent view covers (0 in the other modes):
    /// changes whenever the view is imported again.
    pub fn coherent_covered(&self) -> u64 {
        self.coherent_view.as_ref().and_then(|c| c.import.lock().as_ref().map(|i| i.1)).unwrap_or(0)
    }

    /// The coherent view's current buffer (arena byte `x` at offset `x`).
    pub fn coherent_buffer(&self) -> Option<wgpu::Buffer> {
        self.coherent_view.as_ref().and_then(|c| c.import.lock().as_ref().map(|i| i.0.buffer().clone()))
    }

    /// Make the coherent view cover the arena's first `bytes`, populating
    /// the newly covered host pages first with `populate(offset, len)`.
    /// Returns whether the view was imported again. Nothing to do in the
    /// other modes; on an error the old view stays.
    pub fn import_coherent(
        &self,
        bytes: u64,
        mut populate: impl FnMut(usize, usize) -> Result<(), String>,
    ) -> Result<bool, String> {
        let Some(c) = &self.coherent_view else { return Ok(false) };
        let raw = self.raw.as_ref().ok_or("the coherent mode without a raw Vulkan device")?;
        let mut import = c.import.lock();
        let old = import.as_ref().map_or(0, |i| i.1);
        if bytes <= old {
            return Ok(false);
        }
        // Sizes the device imports: multiples of its import alignment
        // (the view's end is one too: the whole arena was imported before).
        let align = raw.caps().min_imported_host_pointer_alignment.max(1);
        let fit = |x: u64| x.next_multiple_of(align).min(c.view_bytes);
        let to_usize = |x: u64| usize::try_from(x).map_err(|e| e.to_string());
        // Grow by doubling; if that much cannot be had, just what is needed.
        let mut tries = vec![fit(bytes.max(old * 2).max(MIN_COVERED))];
        if fit(bytes) < tries[0] {
            tries.push(fit(bytes));
        }
        let mut last = String::new();
        for covered in tries {
            let (at, len) = (to_usize(old)?, to_usize(covered - old)?);
            if let Err(e) = populate(at, len) {
                last = format!("populating the coherent view up to byte {covered}: {e}");
                continue;
            }
            // SAFETY: `host .. host + covered` lies inside the alias view
            // (`covered <= view_bytes`), which `Gpu::new`'s contract keeps
            // mapped read-write to the same pages while this `Gpu` (which
            // owns the import) lives, and under which the program's CPU
            // accesses race with kernels only as another CPU thread's would.
            #[allow(unsafe_code, reason = "the coherent view's host import; argued inline")]
            let new = unsafe {
                crate::vk::HostImport::new(
                    raw,
                    Some("svm coherent arena view"),
                    c.host as *mut u8,
                    to_usize(covered)?,
                    (),
                )
            };
            match new {
                Ok(new) => {
                    *import = Some((new, covered));
                    return Ok(true);
                }
                Err(e) => last = format!("importing the arena's first {covered} bytes for the coherent mode: {e}"),
            }
        }
        Err(last)
    }

    /// The windows as kernels bind them: the pool segments or the sparse
    /// view (fixed), or the coherent view's covered windows followed by
    /// placeholders. The last covered window may be shorter than the
    /// others: a load the prelude issues ahead of its check (speculative
    /// variants) past its end is clamped by the bounds checks naga keeps on
    /// every storage access (`create_shader_module`, not the unchecked
    /// variant), like any access to a placeholder.
    pub(crate) fn window_views(&self) -> Cow<'_, [SegmentView]> {
        let Some(c) = &self.coherent_view else { return Cow::Borrowed(&self.segments) };
        let import = c.import.lock();
        let Some((buf, covered)) = import.as_ref() else { return Cow::Borrowed(&self.segments) };
        let mut v = self.segments.clone();
        for (k, slot) in (0u64..).zip(v.iter_mut()) {
            let base = k * c.seg_bytes;
            if base >= *covered {
                break;
            }
            *slot = SegmentView { buffer: buf.buffer().clone(), base, size: c.seg_bytes.min(covered - base) };
        }
        Cow::Owned(v)
    }
}
