//! The arena's memory: one memfd mapped twice.
//!
//! ```text
//!           memfd (page cache: the host copy of every managed page)
//!          /                                              \
//!  user view (MAP_SHARED, 2 MiB aligned)           alias view (MAP_SHARED)
//!  what programs dereference; pages the            what the runtime reads and
//!  device owns are *zapped* here (no PTE /         writes; never zapped, never
//!  PROT_NONE), so a CPU touch faults               faults on a zapped page
//! ```
//!
//! Dropping the user view's mapping of a page (`MADV_DONTNEED` on a shared
//! mapping) keeps the page-cache page, so restoring it costs a minor fault and
//! no copy (`UFFDIO_CONTINUE`), the measured fast path of ANCHORS.md §4.
//!
//! # Safety
//! [`Views`] owns both mappings and unmaps them on drop. Its raw methods take
//! byte offsets checked against the length, so they cannot touch memory
//! outside the views; what they change is the *visibility* of arena pages to
//! other threads, which is the point of this crate and is argued at each
//! caller.
#![allow(unsafe_code, reason = "this module wraps system calls; see its # Safety section")]

use core::ffi::c_void;
use core::ptr::NonNull;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{FallocateFlags, MemfdFlags};
use rustix::mm::{Advice, MapFlags, MprotectFlags, ProtFlags};

/// Alignment of the user view (the largest migration chunk).
pub const VIEW_ALIGN: usize = 2 << 20;

/// The memfd and its two mappings.
#[derive(Debug)]
pub struct Views {
    memfd: OwnedFd,
    user: NonNull<u8>,
    alias: NonNull<u8>,
    len: usize,
    /// Process that mapped the views (see [`Views::is_owner`]).
    pid: rustix::process::Pid,
}

// SAFETY: `Views` holds addresses of process-wide mappings, which are valid
// from any thread; it has no thread-affine state.
unsafe impl Send for Views {}
// SAFETY: as for `Send`: every method takes `&self` and issues system calls
// that the kernel serialises; data races on the mapped bytes are the callers'
// protocol (the runtime's state lock), not this type's.
unsafe impl Sync for Views {}

impl Views {
    /// Create a memfd of `len` bytes (a multiple of [`VIEW_ALIGN`]) and map it
    /// twice: a 2 MiB aligned user view and an alias view.
    pub fn new(len: usize) -> rustix::io::Result<Self> {
        assert!(len > 0 && len.is_multiple_of(VIEW_ALIGN), "arena length must be a positive multiple of 2 MiB");
        let memfd = rustix::fs::memfd_create("svm-arena", MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&memfd, len as u64)?;

        // Reserve len + VIEW_ALIGN of address space, then map the memfd at the
        // aligned address inside it and give back the slop.
        let reserve = len + VIEW_ALIGN;
        // SAFETY: a fresh anonymous PROT_NONE reservation at an address of the
        // kernel's choosing; it cannot alias any existing mapping.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                core::ptr::null_mut(),
                reserve,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )?
        } as usize;
        let aligned = base.next_multiple_of(VIEW_ALIGN);
        // SAFETY: [aligned, aligned + len) lies inside our own reservation, so
        // MAP_FIXED replaces only memory we own.
        let user = unsafe {
            rustix::mm::mmap(
                aligned as *mut c_void,
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                &memfd,
                0,
            )
        };
        let head = aligned - base;
        let tail = reserve - head - len;
        // SAFETY: the head and tail slop are the parts of our reservation
        // outside the user view; nothing else refers to them.
        unsafe {
            if head > 0 {
                rustix::mm::munmap(base as *mut c_void, head)?;
            }
            if tail > 0 {
                rustix::mm::munmap((aligned + len) as *mut c_void, tail)?;
            }
        }
        let user = match user {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: unmapping our own (now only) reservation.
                let _ = unsafe { rustix::mm::munmap(aligned as *mut c_void, len) };
                return Err(e);
            }
        };
        // SAFETY: a new shared mapping of our own memfd at an address of the
        // kernel's choosing.
        let alias = unsafe {
            rustix::mm::mmap(
                core::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &memfd,
                0,
            )
        };
        let alias = match alias {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: the user view is ours and not yet handed out.
                let _ = unsafe { rustix::mm::munmap(user, len) };
                return Err(e);
            }
        };
        let views = Self {
            memfd,
            user: NonNull::new(user.cast()).expect("mmap returned null"),
            alias: NonNull::new(alias.cast()).expect("mmap returned null"),
            len,
            pid: rustix::process::getpid(),
        };
        // A forked child must not see managed memory: it would read the host
        // copy of pages the device owns, a silent wrong answer. With
        // MADV_DONTFORK the child has no mapping there and faults loudly.
        // SAFETY: both ranges are our own mappings.
        unsafe {
            rustix::mm::madvise(views.user.as_ptr().cast(), len, Advice::LinuxDontFork)?;
            rustix::mm::madvise(views.alias.as_ptr().cast(), len, Advice::LinuxDontFork)?;
        }
        Ok(views)
    }

    /// Whether this process mapped the views. In a forked child it did not:
    /// both views are `MADV_DONTFORK`, so nothing is mapped at their
    /// addresses there, and the memfd is the parent's.
    pub fn is_owner(&self) -> bool {
        rustix::process::getpid() == self.pid
    }
    /// The process that mapped the views.
    pub fn owner(&self) -> rustix::process::Pid {
        self.pid
    }

    /// Length of each view, in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Never true (an arena has at least 2 MiB).
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Address of byte `offset` of the alias view (for handing the host
    /// copy to a device that imports host memory).
    ///
    /// # Panics
    /// If `offset` is outside the arena.
    pub fn alias_ptr(&self, offset: usize) -> *mut u8 {
        self.check(offset, 0);
        self.alias.as_ptr().wrapping_add(offset)
    }
    /// Address of the user view (what programs dereference).
    pub fn user_base(&self) -> usize {
        self.user.as_ptr() as usize
    }
    /// The memfd.
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset:#x}+{len:#x} outside the arena of {:#x} bytes",
            self.len
        );
    }

    /// Copy `dst.len()` bytes of the host copy at `offset` into `dst`.
    ///
    /// # Panics
    /// If the range is outside the arena.
    ///
    /// # Safety
    /// No thread writes `[offset, offset + dst.len())` through either view
    /// (or a device through an import of it) while the copy runs.
    pub unsafe fn read_alias(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: the range is inside the alias view (checked), which is
        // always mapped read-write; `dst` is a distinct Rust buffer (a `&mut`
        // cannot point into the views' mappings, which no safe code
        // borrows); no writer of the source races the copy (the caller's
        // contract).
        unsafe {
            core::ptr::copy_nonoverlapping(self.alias.as_ptr().add(offset), dst.as_mut_ptr(), dst.len());
        }
    }

    /// Copy `src` into the host copy at `offset`.
    ///
    /// # Panics
    /// If the range is outside the arena.
    ///
    /// # Safety
    /// No other thread reads or writes `[offset, offset + src.len())`
    /// through either view (or a device through an import of it) while the
    /// copy runs, and `src` does not lie in the views' mappings.
    pub unsafe fn write_alias(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: inside the alias view (checked), always mapped read-write;
        // `src` lies elsewhere and nobody else accesses the destination
        // during the copy (the caller's contract).
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.alias.as_ptr().add(offset), src.len());
        }
    }

    /// Zero a range of the host copy in place (its pages stay: memory a
    /// device imported keeps backing it).
    ///
    /// # Panics
    /// If the range is outside the arena.
    pub fn zero_alias(&self, offset: usize, len: usize) {
        self.check(offset, len);
        // SAFETY: inside the alias view (checked), always mapped read-write;
        // the runtime zeroes only ranges being freed, whose user view is
        // already inaccessible (no program thread can observe the writes).
        unsafe {
            core::ptr::write_bytes(self.alias.as_ptr().add(offset), 0, len);
        }
    }

    /// Borrow the host copy of a range for the duration of `f` (zero-copy
    /// upload source).
    ///
    /// # Panics
    /// If the range is outside the arena.
    ///
    /// # Safety
    /// No thread writes `[offset, offset + len)` through either view (or a
    /// device through an import of it) while `f` runs: the `&[u8]` it gets
    /// asserts that the bytes do not change.
    pub unsafe fn with_alias<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        self.check(offset, len);
        // SAFETY: inside the alias view (checked), mapped for the lifetime of
        // `self`; the slice does not escape `f` (its lifetime is the
        // closure's argument's); nothing writes the range while `f` runs
        // (the caller's contract).
        let s = unsafe { core::slice::from_raw_parts(self.alias.as_ptr().add(offset), len) };
        f(s)
    }

    /// Zero a range of the host copy and give its memory back to the system
    /// (`fallocate(PUNCH_HOLE)`): the next reader sees zeros.
    pub fn punch_hole(&self, offset: usize, len: usize) -> rustix::io::Result<()> {
        self.check(offset, len);
        rustix::fs::fallocate(
            &self.memfd,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset as u64,
            len as u64,
        )
    }

    /// Drop the user view's page-table entries for a range, keeping the data
    /// (`madvise(MADV_DONTNEED)` on a shared mapping).
    pub fn user_dontneed(&self, offset: usize, len: usize) -> rustix::io::Result<()> {
        self.check(offset, len);
        // SAFETY: inside the user view (checked). On a MAP_SHARED mapping
        // DONTNEED only removes PTEs; the page cache keeps the bytes, so no
        // data is lost, and a later access faults them back in.
        unsafe { rustix::mm::madvise(self.user.as_ptr().add(offset).cast(), len, Advice::LinuxDontNeed) }
    }

    /// Make sure every page of a range exists in the page cache
    /// (`MADV_POPULATE_WRITE` on the alias view), allocating zeroed pages for
    /// holes. A hole would otherwise raise a *missing* fault in the user view,
    /// which the MINOR registration does not see: the program would read zeros.
    pub fn populate(&self, offset: usize, len: usize) -> rustix::io::Result<()> {
        self.check(offset, len);
        // SAFETY: inside the alias view (checked); populating only allocates
        // and maps pages, it does not change their contents.
        unsafe { rustix::mm::madvise(self.alias.as_ptr().add(offset).cast(), len, Advice::LinuxPopulateWrite) }
    }

    /// Change the protection of a range of the user view.
    pub fn user_protect(&self, offset: usize, len: usize, readable: bool, writable: bool) -> rustix::io::Result<()> {
        self.check(offset, len);
        let mut f = MprotectFlags::empty();
        if readable {
            f |= MprotectFlags::READ;
        }
        if writable {
            f |= MprotectFlags::WRITE;
        }
        // SAFETY: inside the user view (checked); protection changes cannot
        // invalidate Rust references because the runtime hands out no
        // references into the user view, only addresses.
        unsafe { rustix::mm::mprotect(self.user.as_ptr().add(offset).cast(), len, f) }
    }
}

impl Drop for Views {
    fn drop(&mut self) {
        if !self.is_owner() {
            // A forked child: the views were never mapped here (and the
            // addresses may hold the child's own mappings by now).
            return;
        }
        // SAFETY: both mappings are ours, created in `new`, and nothing can
        // use them once the owner is dropped (the runtime stops its fault
        // service and waits for the device first).
        unsafe {
            let _ = rustix::mm::munmap(self.user.as_ptr().cast(), self.len);
            let _ = rustix::mm::munmap(self.alias.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_alias_the_same_memory() {
        let v = Views::new(VIEW_ALIGN).expect("views");
        assert_eq!(v.user_base() % VIEW_ALIGN, 0);
        // SAFETY: one thread, nothing else maps or imports these views.
        unsafe { v.write_alias(4096, b"hello") };
        let mut buf = [0u8; 5];
        // SAFETY: as above.
        unsafe { v.read_alias(4096, &mut buf) };
        assert_eq!(&buf, b"hello");
        // DONTNEED on the user view keeps the page-cache copy.
        v.user_dontneed(0, VIEW_ALIGN).expect("dontneed");
        // SAFETY: as above.
        unsafe { v.read_alias(4096, &mut buf) };
        assert_eq!(&buf, b"hello");
        v.punch_hole(0, 8192).expect("punch");
        // SAFETY: as above.
        unsafe { v.read_alias(4096, &mut buf) };
        assert_eq!(buf, [0; 5]);
    }
}
