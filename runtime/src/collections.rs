//! Rust collections in managed memory: the runtime as an
//! [`allocator_api2::alloc::Allocator`] (stable Rust), so that
//! `allocator_api2::vec::Vec<T, Svm>`, `allocator_api2::boxed::Box<T, Svm>`
//! and `hashbrown::HashMap<K, V, S, Svm>` keep their buffers in the arena,
//! grow on the CPU, and hand them to kernels (`Access::read(&v)`,
//! `Binding::read_write(&mut v)`: a `Vec<T, Svm>` or `Box<T, Svm>` of `Pod`
//! elements is a [`crate::ManagedRange`], borrowed whole like a
//! [`crate::ManagedVec`]).
//!
//! Allocations are page-granular (each buffer takes whole 4 KiB pages):
//! access declarations and GPU checks are page-granular, so a kernel that
//! may write one buffer must not be able to reach another owner's bytes in
//! the same page.

use core::alloc::Layout;
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};
use svm_pagetable::PAGE_SIZE;

use crate::runtime::Svm;

// SAFETY: (the Allocator contract) a returned block is valid for reads and
// writes of its size until deallocated or until every clone of the runtime
// is gone (the arena lives as long as the last handle: clones share one
// `Arc`, so "any clone" frees what another allocated); blocks are aligned
// to the layout (page-aligned pages, or slab blocks aligned to their
// power-of-two class, at least the layout's size and alignment) and never
// overlap (the runtime's range and slab allocators); a block is
// freed only through `deallocate` (the raw `Svm::free` refuses blocks held
// this way).
unsafe impl Allocator for Svm {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.align() > PAGE_SIZE {
            return Err(AllocError);
        }
        if layout.size() == 0 {
            // A dangling, aligned, empty block (zero-size requests hold no
            // memory).
            let p = NonNull::new(layout.align() as *mut u8).ok_or(AllocError)?;
            return Ok(NonNull::slice_from_raw_parts(p, 0));
        }
        // Small blocks come from size-class slabs (a 16-byte node costs 16
        // bytes of arena, not a page); the rest are page allocations.
        let p = self.alloc_small_owned(layout.size(), layout.align()).map_err(|_| AllocError)?;
        let len = crate::slab::Slabs::class_of(layout.size(), layout.align())
            .unwrap_or_else(|| layout.size().next_multiple_of(PAGE_SIZE));
        Ok(NonNull::slice_from_raw_parts(p, len))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        if let Err(e) = self.free_owned(ptr.as_ptr()) {
            // Only an OS failure (the mapping limit): the block stays
            // allocated, which is safe.
            tracing::error!("svm: freeing a collection's block {ptr:p}: {e}");
        }
    }
}
