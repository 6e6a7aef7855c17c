//! Typed owners of managed memory.

use core::marker::PhantomData;
use core::ptr::NonNull;

use crate::runtime::Svm;

/// A fixed-length array of `T` in managed memory: derefs to `[T]` on the CPU,
/// and its address ([`ManagedVec::as_ptr`]) is what kernels use. Freed on
/// drop.
///
/// Elements are `bytemuck::Pod`: any bit pattern the GPU writes is a valid
/// value. Pointers stored inside are plain integers (`u64`), as the GPU sees
/// them.
pub struct ManagedVec<T: bytemuck::Pod> {
    svm: Svm,
    ptr: NonNull<T>,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: the memory is process-wide and the runtime is Send + Sync; the
// owner has unique access like a Vec<T>, and T: Pod is Send + Sync.
unsafe impl<T: bytemuck::Pod> Send for ManagedVec<T> {}
// SAFETY: shared access only hands out &[T], as for Vec<T>.
unsafe impl<T: bytemuck::Pod> Sync for ManagedVec<T> {}

impl<T: bytemuck::Pod> ManagedVec<T> {
    pub(crate) fn from_raw(svm: Svm, ptr: NonNull<u8>, len: usize) -> Self {
        // Allocations are page aligned; `alloc_vec` refuses types aligned
        // above a page.
        assert_eq!(ptr.as_ptr() as usize % core::mem::align_of::<T>(), 0, "misaligned managed allocation");
        Self { svm, ptr: ptr.cast(), len, _t: PhantomData }
    }
    /// Address of the first element (a managed pointer).
    pub fn as_ptr(&self) -> *const T {
        self.ptr.as_ptr()
    }
    /// Mutable address of the first element.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.ptr.as_ptr()
    }
    /// Address of element `i` as the u64 a kernel or a stored pointer uses.
    pub fn addr_of(&self, i: usize) -> u64 {
        assert!(i <= self.len, "index {i} out of {}", self.len);
        (self.ptr.as_ptr() as usize + i * core::mem::size_of::<T>()) as u64
    }
}

impl<T: bytemuck::Pod> core::ops::Deref for ManagedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` is a live allocation of `len` elements in the arena's
        // user view, owned by `self`; reading may fault and migrate pages
        // back, which the runtime serves transparently. Kernels write it only
        // through `Access::read_write`, which borrows `self` mutably.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Pod> core::ops::DerefMut for ManagedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, with unique access through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Pod> Drop for ManagedVec<T> {
    fn drop(&mut self) {
        if let Err(e) = self.svm.free_owned(self.ptr.as_ptr().cast()) {
            // The raw `free` cannot free an owned allocation, so only an OS
            // failure (e.g. the mapping limit) gets here: the memory stays
            // allocated (leaked), which is safe.
            tracing::error!("svm: ManagedVec drop could not free {:p}: {e}", self.ptr);
        }
    }
}

/// A managed pointer to a `T`, as stored in managed data and passed to
/// kernels: the CPU's 64-bit address (`#[repr(transparent)]` over `u64`,
/// `Pod`), which kernels see as `vec2<u32>` and follow with the prelude's
/// `svm_load_*`. Any value is representable (null, dangling, foreign):
/// kernels check every access, and the CPU-side [`ManagedPtr::read`] checks
/// the address before reading.
#[repr(transparent)]
pub struct ManagedPtr<T> {
    addr: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for ManagedPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ManagedPtr<T> {}
impl<T> PartialEq for ManagedPtr<T> {
    fn eq(&self, o: &Self) -> bool {
        self.addr == o.addr
    }
}
impl<T> Eq for ManagedPtr<T> {}
impl<T> Default for ManagedPtr<T> {
    fn default() -> Self {
        Self::NULL
    }
}
impl<T> core::fmt::Debug for ManagedPtr<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ManagedPtr({:#x})", self.addr)
    }
}
// SAFETY: `#[repr(transparent)]` over a `u64` (the PhantomData is a ZST of
// alignment 1): all-zero is a valid value (null).
unsafe impl<T: 'static> bytemuck::Zeroable for ManagedPtr<T> {}
// SAFETY: as above: no padding, every bit pattern is a valid `u64`, and the
// type is `Copy + 'static`.
unsafe impl<T: 'static> bytemuck::Pod for ManagedPtr<T> {}

/// Why [`ManagedPtr::read`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PtrError {
    /// The null pointer.
    #[error("null managed pointer")]
    Null,
    /// Not inside live allocations of this runtime.
    #[error("{addr:#x}+{len} is not inside live allocations of this runtime")]
    NotAllocated {
        /// The address.
        addr: u64,
        /// Bytes the read needs.
        len: usize,
    },
    /// Not aligned for `T`.
    #[error("{addr:#x} is not aligned to {align}")]
    Misaligned {
        /// The address.
        addr: u64,
        /// `T`'s alignment.
        align: usize,
    },
}

impl<T> ManagedPtr<T> {
    /// The null pointer (what kernels test with `svm_is_null`).
    pub const NULL: Self = Self { addr: 0, _t: PhantomData };
    /// A pointer from an address (any value; checked when used).
    pub const fn from_addr(addr: u64) -> Self {
        Self { addr, _t: PhantomData }
    }
    /// The address.
    pub const fn addr(self) -> u64 {
        self.addr
    }
    /// Whether it is null.
    pub const fn is_null(self) -> bool {
        self.addr == 0
    }
    /// `self + count` elements (wrapping, like the kernels' arithmetic).
    pub const fn add(self, count: usize) -> Self {
        Self::from_addr(self.addr.wrapping_add((count as u64).wrapping_mul(core::mem::size_of::<T>() as u64)))
    }
    /// A pointer to another type at the same address.
    pub const fn cast<U>(self) -> ManagedPtr<U> {
        ManagedPtr::from_addr(self.addr)
    }
}

impl<T: bytemuck::Pod> ManagedPtr<T> {
    /// The address checked: non-null, aligned for `T`, and `[addr, addr +
    /// size_of::<T>())` inside live allocations of `svm`.
    pub fn check(self, svm: &Svm) -> Result<(), PtrError> {
        let (addr, len) = (self.addr, core::mem::size_of::<T>());
        if addr == 0 {
            return Err(PtrError::Null);
        }
        if addr % core::mem::align_of::<T>() as u64 != 0 {
            return Err(PtrError::Misaligned { addr, align: core::mem::align_of::<T>() });
        }
        match usize::try_from(addr) {
            Ok(a) if svm.is_allocated(a, len.max(1)) => Ok(()),
            _ => Err(PtrError::NotAllocated { addr, len }),
        }
    }

    /// Read the `T` it points to, after [`Self::check`]. Device-owned pages
    /// come back by CPU fault, as any CPU access.
    ///
    /// # Safety
    /// As for any raw pointer read: no other thread (nor a running kernel)
    /// writes these bytes during the read, and the allocation is not freed
    /// during it (the check cannot hold it for you). Reading memory that
    /// safe code only reads — e.g. nodes reached from a `&ManagedVec` — is
    /// fine.
    pub unsafe fn read(self, svm: &Svm) -> Result<T, PtrError> {
        self.check(svm)?;
        // SAFETY: checked above: non-null, aligned, inside live allocations
        // (mapped in the user view; the fault service serves device-owned
        // pages); no concurrent writer by the caller's contract. `T: Pod`
        // makes any bytes a valid `T`.
        Ok(unsafe { core::ptr::read_volatile(self.addr as usize as *const T) })
    }
}

impl<T> From<ManagedPtr<T>> for crate::kernel::Arg {
    fn from(p: ManagedPtr<T>) -> Self {
        crate::kernel::Arg::Ptr(p.addr)
    }
}

impl<T: bytemuck::Pod> ManagedVec<T> {
    /// A managed pointer to element `i` (`i == len` gives the end).
    pub fn ptr_at(&self, i: usize) -> ManagedPtr<T> {
        ManagedPtr::from_addr(self.addr_of(i))
    }
}

impl<T: bytemuck::Pod> ManagedVec<T> {
    /// Name the vector's allocation in errors and traces ([`Svm::set_label`]).
    pub fn set_label(&self, label: &str) {
        // (Live as long as `self`: it cannot fail.)
        let _ = self.svm.set_label(self.ptr.as_ptr().cast(), label);
    }
    /// The vector's label, if it has one.
    pub fn label(&self) -> Option<String> {
        self.svm.label(self.ptr.as_ptr().cast())
    }
    /// Start migrating the vector's pages to `to` ([`Svm::prefetch`]).
    pub fn prefetch(&self, to: crate::advise::Location) -> crate::advise::Prefetch {
        // (An empty vector still has its byte: it moves that page.)
        self.svm.prefetch(self.ptr.as_ptr().cast(), (self.len * core::mem::size_of::<T>()).max(1), to)
    }
    /// Advice for the vector's pages ([`Svm::advise`]).
    pub fn advise(&self, advice: crate::advise::Advice) -> Result<(), crate::advise::AdviseError> {
        self.svm.advise(self.ptr.as_ptr().cast(), (self.len * core::mem::size_of::<T>()).max(1), advice)
    }
}

/// One `T` in managed memory (a [`ManagedVec`] of one element that derefs
/// to the element): [`Svm::alloc_box`].
pub struct ManagedBox<T: bytemuck::Pod>(ManagedVec<T>);

impl<T: bytemuck::Pod> ManagedBox<T> {
    pub(crate) fn new(v: ManagedVec<T>) -> Self {
        assert_eq!(v.len, 1);
        Self(v)
    }
    /// Its address as a managed pointer.
    pub fn ptr(&self) -> ManagedPtr<T> {
        self.0.ptr_at(0)
    }
    /// The vector of one element it is.
    pub fn as_vec(&self) -> &ManagedVec<T> {
        &self.0
    }
}
impl<T: bytemuck::Pod> core::ops::Deref for ManagedBox<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0[0]
    }
}
impl<T: bytemuck::Pod> core::ops::DerefMut for ManagedBox<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0[0]
    }
}
impl<T: bytemuck::Pod> sealed::Sealed for ManagedBox<T> {}
impl<T: bytemuck::Pod> ManagedRange for ManagedBox<T> {
    fn byte_range(&self) -> (usize, usize) {
        self.0.byte_range()
    }
}
impl<T: bytemuck::Pod + core::fmt::Debug> core::fmt::Debug for ManagedBox<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("ManagedBox").field(&**self).finish()
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A range of managed memory a launch can bind or declare: a
/// [`ManagedVec`], or a [`ManagedSlice`] / [`ManagedSliceMut`] of one.
/// Sealed: only this crate's owners implement it, so the range is always
/// one the owner holds.
pub trait ManagedRange: sealed::Sealed {
    /// Start address and length in bytes.
    fn byte_range(&self) -> (usize, usize);
}

// Collections in managed memory (their allocator is the runtime) are
// ranges like vectors: borrowing the collection borrows its whole buffer,
// so no other reference can sit in the pages a kernel reaches. (Plain
// slices are not: `split_at_mut` could leave another `&mut` in the same
// page, which page-granular declarations would let a kernel write.)
impl<T: bytemuck::Pod> sealed::Sealed for allocator_api2::vec::Vec<T, Svm> {}
impl<T: bytemuck::Pod> ManagedRange for allocator_api2::vec::Vec<T, Svm> {
    fn byte_range(&self) -> (usize, usize) {
        (self.as_ptr() as usize, core::mem::size_of_val(&self[..]))
    }
}
impl<T: bytemuck::Pod> sealed::Sealed for allocator_api2::boxed::Box<T, Svm> {}
impl<T: bytemuck::Pod> ManagedRange for allocator_api2::boxed::Box<T, Svm> {
    fn byte_range(&self) -> (usize, usize) {
        (&**self as *const T as usize, core::mem::size_of::<T>())
    }
}

impl<T: bytemuck::Pod> sealed::Sealed for ManagedVec<T> {}
impl<T: bytemuck::Pod> ManagedRange for ManagedVec<T> {
    fn byte_range(&self) -> (usize, usize) {
        (self.ptr.as_ptr() as usize, self.len * core::mem::size_of::<T>())
    }
}

impl<T: bytemuck::Pod> ManagedVec<T> {
    fn sub(&self, range: impl core::ops::RangeBounds<usize>) -> (NonNull<T>, usize) {
        use core::ops::Bound;
        let a = match range.start_bound() {
            Bound::Included(&a) => a,
            Bound::Excluded(&a) => a.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let b = match range.end_bound() {
            Bound::Included(&b) => b.saturating_add(1),
            Bound::Excluded(&b) => b,
            Bound::Unbounded => self.len,
        };
        assert!(a <= b && b <= self.len, "range {a}..{b} out of a ManagedVec of {}", self.len);
        // SAFETY: a <= len, so the offset stays inside (or one past) the
        // allocation, and the result is non-null.
        (unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(a)) }, b - a)
    }
    /// Elements `range` as a slice that launches accept wherever a whole
    /// vector is (`Binding::read(&v.slice(10..20))`). Panics when out of
    /// bounds, as slicing does.
    pub fn slice(&self, range: impl core::ops::RangeBounds<usize>) -> ManagedSlice<'_, T> {
        let (ptr, len) = self.sub(range);
        ManagedSlice { ptr, len, _v: PhantomData }
    }
    /// Elements `range`, mutably (`Binding::read_write(&mut v.slice_mut(..n))`).
    pub fn slice_mut(&mut self, range: impl core::ops::RangeBounds<usize>) -> ManagedSliceMut<'_, T> {
        let (ptr, len) = self.sub(range);
        ManagedSliceMut { ptr, len, _v: PhantomData }
    }
}

/// A shared sub-range of a [`ManagedVec`] ([`ManagedVec::slice`]).
pub struct ManagedSlice<'a, T: bytemuck::Pod> {
    ptr: NonNull<T>,
    len: usize,
    _v: PhantomData<&'a [T]>,
}

/// An exclusive sub-range of a [`ManagedVec`] ([`ManagedVec::slice_mut`]).
pub struct ManagedSliceMut<'a, T: bytemuck::Pod> {
    ptr: NonNull<T>,
    len: usize,
    _v: PhantomData<&'a mut [T]>,
}

impl<T: bytemuck::Pod> sealed::Sealed for ManagedSlice<'_, T> {}
impl<T: bytemuck::Pod> ManagedRange for ManagedSlice<'_, T> {
    fn byte_range(&self) -> (usize, usize) {
        (self.ptr.as_ptr() as usize, self.len * core::mem::size_of::<T>())
    }
}
impl<T: bytemuck::Pod> sealed::Sealed for ManagedSliceMut<'_, T> {}
impl<T: bytemuck::Pod> ManagedRange for ManagedSliceMut<'_, T> {
    fn byte_range(&self) -> (usize, usize) {
        (self.ptr.as_ptr() as usize, self.len * core::mem::size_of::<T>())
    }
}

impl<T: bytemuck::Pod> core::ops::Deref for ManagedSlice<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: a sub-range of a live ManagedVec borrowed shared for 'a
        // (the vector cannot be freed or written meanwhile).
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}
impl<T: bytemuck::Pod> core::ops::Deref for ManagedSliceMut<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: a sub-range of a live ManagedVec borrowed exclusively.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}
impl<T: bytemuck::Pod> core::ops::DerefMut for ManagedSliceMut<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, with unique access through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Pod + core::fmt::Debug> core::fmt::Debug for ManagedVec<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ManagedVec").field("addr", &self.ptr).field("len", &self.len).finish()
    }
}
