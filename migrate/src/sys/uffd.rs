//! `userfaultfd(2)` without bindgen: the few ioctls the arena needs, with the
//! structures of `include/uapi/linux/userfaultfd.h` written out.
//!
//! Mode used: **MINOR faults on shmem** (`UFFD_FEATURE_MINOR_SHMEM`). The
//! user view maps a memfd; a page the device owns has its PTE dropped there
//! while the page cache keeps a (stale) host copy, so a CPU touch raises a
//! minor fault. The handler refreshes the page cache through the alias view
//! and resolves with `UFFDIO_CONTINUE`, which maps the existing page: no copy
//! through the kernel.
//!
//! # Safety
//! The file descriptor lets its holder resolve faults of other threads; the
//! only resolution issued here is `UFFDIO_CONTINUE` / `UFFDIO_WAKE` on ranges
//! the caller checked are inside the registered user view. The ioctl
//! argument structures are `#[repr(C)]` copies of the kernel ABI.
#![allow(unsafe_code, reason = "this module wraps system calls; see its # Safety section")]

use std::os::fd::{AsRawFd, OwnedFd};

use rustix::io::Errno;

const UFFD_API: u64 = 0xAA;
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const fn ior(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_UNREGISTER: u64 = ior(0x01, 16);
const UFFDIO_WAKE: u64 = ior(0x02, 16);
const UFFDIO_CONTINUE: u64 = iowr(0x07, 32);
const UFFDIO_WRITEPROTECT: u64 = iowr(0x06, 24);
/// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`.
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write-protect on shmem (the memfd).
pub const FEATURE_WP_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED`: protect pages with no PTE too.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const MODE_WP: u64 = 2;
/// `UFFDIO_CONTINUE_MODE_WP`.
const CONTINUE_MODE_WP: u64 = 1 << 1;
/// `UFFD_PAGEFAULT_FLAG_WP`.
pub const PF_WP: u64 = 2;
const IOCTL_WRITEPROTECT_BIT: u64 = 1 << 0x06;

/// `UFFD_FEATURE_MINOR_SHMEM`.
pub const FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// `UFFD_FEATURE_THREAD_ID`.
pub const FEATURE_THREAD_ID: u64 = 1 << 8;
const MODE_MINOR: u64 = 4;
/// `UFFD_USER_MODE_ONLY`.
const USER_MODE_ONLY: u32 = 1;
const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PF_WRITE: u64 = 1;
/// `_UFFDIO_CONTINUE` bit of the ioctls a registration allows.
const IOCTL_CONTINUE_BIT: u64 = 1 << 0x07;

#[repr(C)]
struct Api {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
struct Range {
    start: u64,
    len: u64,
}
#[repr(C)]
struct Register {
    range: Range,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
struct WriteProtect {
    range: Range,
    mode: u64,
}
#[repr(C)]
struct Continue {
    range: Range,
    mode: u64,
    mapped: i64,
}

/// `struct uffd_msg` (32 bytes); only the page-fault arm is decoded.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Msg {
    event: u8,
    _r1: u8,
    _r2: u16,
    _r3: u32,
    a0: u64,
    a1: u64,
    a2: u64,
}

/// A page fault read from the descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// Faulting address (page aligned unless EXACT_ADDRESS).
    pub address: u64,
    /// `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
}

/// An open userfaultfd after the API handshake.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    wp: bool,
    /// Opened with `UFFD_USER_MODE_ONLY` (the full descriptor was refused).
    user_mode_only: bool,
}

fn ioctl<T>(fd: &OwnedFd, req: u64, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: `req` is one of the UFFDIO_* requests above, whose argument is
    // exactly `T` (a #[repr(C)] copy of the kernel structure); `arg` is a
    // valid exclusive reference for the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)))
    } else {
        Ok(())
    }
}

impl Uffd {
    /// Open a non-blocking userfaultfd with MINOR_SHMEM. Tries a full
    /// descriptor first and falls back to `UFFD_USER_MODE_ONLY`, which is all
    /// an unprivileged process gets under `vm.unprivileged_userfaultfd=0`
    /// (then faults taken inside system calls are not handled and the call
    /// fails with EFAULT).
    pub fn open() -> Result<Self, Errno> {
        use rustix::mm::UserfaultfdFlags as F;
        let base = F::CLOEXEC | F::NONBLOCK;
        let fd = || {
            // SAFETY: creating the descriptor is harmless; what it allows is
            // argued in the module doc.
            unsafe { rustix::mm::userfaultfd(base) }.map(|fd| (fd, false)).or_else(|_| {
                // SAFETY: as above.
                unsafe { rustix::mm::userfaultfd(base | F::from_bits_retain(USER_MODE_ONLY)) }.map(|fd| (fd, true))
            })
        };
        // UFFDIO_API may be called once per descriptor: ask for write-protect
        // on shmem too, and retry without it where the kernel refuses.
        let full = FEATURE_MINOR_SHMEM
            | FEATURE_THREAD_ID
            | FEATURE_PAGEFAULT_FLAG_WP
            | FEATURE_WP_SHMEM
            | FEATURE_WP_UNPOPULATED;
        for features in [full, FEATURE_MINOR_SHMEM] {
            let (fd, user_mode_only) = fd()?;
            let mut api = Api { api: UFFD_API, features, ioctls: 0 };
            if ioctl(&fd, UFFDIO_API, &mut api).is_err() {
                continue;
            }
            if api.features & FEATURE_MINOR_SHMEM == 0 {
                return Err(Errno::NOTSUP);
            }
            let wp_all = FEATURE_PAGEFAULT_FLAG_WP | FEATURE_WP_SHMEM | FEATURE_WP_UNPOPULATED;
            return Ok(Self { fd, wp: api.features & wp_all == wp_all, user_mode_only });
        }
        Err(Errno::NOTSUP)
    }

    /// Register `[start, start + len)` for MINOR faults, and for
    /// write-protect faults when the kernel supports them on shmem; checks
    /// that `UFFDIO_CONTINUE` (and `UFFDIO_WRITEPROTECT`) are allowed there.
    pub fn register_minor(&mut self, start: usize, len: usize) -> Result<(), Errno> {
        let range = || Range { start: start as u64, len: len as u64 };
        let mode = if self.wp { MODE_MINOR | MODE_WP } else { MODE_MINOR };
        let mut r = Register { range: range(), mode, ioctls: 0 };
        if ioctl(&self.fd, UFFDIO_REGISTER, &mut r).is_err() && self.wp {
            self.wp = false;
            r = Register { range: range(), mode: MODE_MINOR, ioctls: 0 };
            ioctl(&self.fd, UFFDIO_REGISTER, &mut r)?;
        }
        if r.ioctls & IOCTL_CONTINUE_BIT == 0 {
            let _ = self.unregister(start, len);
            return Err(Errno::NOTSUP);
        }
        if self.wp && r.ioctls & IOCTL_WRITEPROTECT_BIT == 0 {
            self.wp = false;
        }
        Ok(())
    }

    /// Whether the descriptor is `UFFD_USER_MODE_ONLY`: faults the kernel
    /// takes inside system calls are not delivered (the call fails with
    /// `EFAULT`).
    pub fn user_mode_only(&self) -> bool {
        self.user_mode_only
    }

    /// Whether write-protect faults are available.
    pub fn has_wp(&self) -> bool {
        self.wp
    }

    /// Write-protect (`protect`) or unprotect a range; unprotecting wakes the
    /// threads waiting on write faults there.
    pub fn write_protect(&self, start: usize, len: usize, protect: bool) -> Result<(), Errno> {
        let mut w = WriteProtect { range: Range { start: start as u64, len: len as u64 }, mode: u64::from(protect) };
        ioctl(&self.fd, UFFDIO_WRITEPROTECT, &mut w)
    }

    /// Undo [`Self::register_minor`].
    pub fn unregister(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut r = Range { start: start as u64, len: len as u64 };
        ioctl(&self.fd, UFFDIO_UNREGISTER, &mut r)
    }

    /// Map the page-cache pages of `[start, start + len)` into the registered
    /// view and wake the threads waiting there. Returns the bytes mapped;
    /// `EEXIST` means some page was already mapped (the kernel stops there).
    pub fn continue_range(&self, start: usize, len: usize) -> Result<u64, (Errno, i64)> {
        self.continue_range_mode(start, len, false)
    }

    /// [`Self::continue_range`], mapping the pages write-protected when
    /// `wp` (`UFFDIO_CONTINUE_MODE_WP`).
    pub fn continue_range_mode(&self, start: usize, len: usize, wp: bool) -> Result<u64, (Errno, i64)> {
        let mode = if wp { CONTINUE_MODE_WP } else { 0 };
        let mut c = Continue { range: Range { start: start as u64, len: len as u64 }, mode, mapped: 0 };
        match ioctl(&self.fd, UFFDIO_CONTINUE, &mut c) {
            Ok(()) => Ok(c.mapped.max(0) as u64),
            Err(e) => Err((e, c.mapped)),
        }
    }

    /// Wake threads waiting on faults in a range without mapping anything
    /// (they retry the access).
    pub fn wake(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut r = Range { start: start as u64, len: len as u64 };
        ioctl(&self.fd, UFFDIO_WAKE, &mut r)
    }

    /// Read every pending page fault (non-blocking) into `out`; returns how
    /// many were read. Non-fault events are ignored (none are requested).
    pub fn read_faults(&self, out: &mut Vec<PageFault>) -> Result<usize, Errno> {
        let mut msgs = [Msg::default(); 64];
        let mut n = 0;
        loop {
            // SAFETY: `msgs` is a writable buffer of exactly the given length
            // in bytes; the kernel writes whole `uffd_msg` structures.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), msgs.as_mut_ptr().cast(), core::mem::size_of_val(&msgs)) };
            if r < 0 {
                let e = Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
                if e == Errno::AGAIN {
                    return Ok(n);
                }
                return Err(e);
            }
            let count = r as usize / core::mem::size_of::<Msg>();
            for m in &msgs[..count] {
                if m.event == EVENT_PAGEFAULT {
                    out.push(PageFault { address: m.a1, flags: m.a0 });
                    n += 1;
                }
            }
            if count < msgs.len() {
                return Ok(n);
            }
        }
    }

    /// The descriptor, for `poll`.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}
