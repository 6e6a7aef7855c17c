//! `userfaultfd(2)`: the few ioctls the arena needs, with the structures,
//! request numbers and flags of `include/uapi/linux/userfaultfd.h` taken from
//! `linux-raw-sys` (the bindings rustix itself is built on) and issued through
//! `rustix::ioctl`.
//!
//! Mode used: **MINOR faults on shmem** (`UFFD_FEATURE_MINOR_SHMEM`). The
//! user view maps a memfd; a page the device owns has its PTE dropped there
//! while the page cache keeps a (stale) host copy, so a CPU touch raises a
//! minor fault. The handler refreshes the page cache through the alias view
//! and resolves with `UFFDIO_CONTINUE`, which maps the existing page: no copy
//! through the kernel.
//!
//! Two mode bits are still written out here because linux-raw-sys 0.12 does
//! not export them: `UFFDIO_WRITEPROTECT_MODE_WP` and
//! `UFFDIO_CONTINUE_MODE_WP` (`WRITEPROTECT_MODE_WP` and `CONTINUE_MODE_WP`
//! below). Every other number comes from the crate, and the
//! tests check that each request number matches the size of the structure
//! passed with it.
//!
//! # Safety
//! The file descriptor lets its holder resolve faults of other threads; the
//! only resolution issued here is `UFFDIO_CONTINUE` / `UFFDIO_WAKE` on ranges
//! the caller checked are inside the registered user view. Each ioctl is
//! issued with the linux-raw-sys structure its request number was defined
//! for (checked in `tests::requests_match_their_structures`).
#![allow(unsafe_code, reason = "this module wraps system calls; see its # Safety section")]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use linux_raw_sys::general::{
    uffd_msg, uffdio_api, uffdio_continue, uffdio_range, uffdio_register, uffdio_writeprotect, _UFFDIO_CONTINUE,
    _UFFDIO_WRITEPROTECT, UFFDIO_REGISTER_MODE_MINOR, UFFDIO_REGISTER_MODE_WP, UFFD_API, UFFD_EVENT_PAGEFAULT,
    UFFD_FEATURE_MINOR_SHMEM, UFFD_FEATURE_PAGEFAULT_FLAG_WP, UFFD_FEATURE_THREAD_ID, UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
    UFFD_FEATURE_WP_UNPOPULATED, UFFD_PAGEFAULT_FLAG_WP, UFFD_PAGEFAULT_FLAG_WRITE, UFFD_USER_MODE_ONLY,
};
use linux_raw_sys::ioctl as req;
use rustix::io::Errno;
use rustix::ioctl::{Opcode, Updater};

// Request numbers, in the type rustix's `ioctl` takes (`unsigned int` on the
// raw-syscall backend, `unsigned long` on glibc).
const UFFDIO_API: Opcode = req::UFFDIO_API as Opcode;
const UFFDIO_REGISTER: Opcode = req::UFFDIO_REGISTER as Opcode;
const UFFDIO_UNREGISTER: Opcode = req::UFFDIO_UNREGISTER as Opcode;
const UFFDIO_WAKE: Opcode = req::UFFDIO_WAKE as Opcode;
const UFFDIO_WRITEPROTECT: Opcode = req::UFFDIO_WRITEPROTECT as Opcode;
const UFFDIO_CONTINUE: Opcode = req::UFFDIO_CONTINUE as Opcode;

/// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`.
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = UFFD_FEATURE_PAGEFAULT_FLAG_WP as u64;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: write-protect on shmem (the memfd).
pub const FEATURE_WP_SHMEM: u64 = UFFD_FEATURE_WP_HUGETLBFS_SHMEM as u64;
/// `UFFD_FEATURE_WP_UNPOPULATED`: protect pages with no PTE too.
pub const FEATURE_WP_UNPOPULATED: u64 = UFFD_FEATURE_WP_UNPOPULATED as u64;
/// `UFFD_FEATURE_MINOR_SHMEM`.
pub const FEATURE_MINOR_SHMEM: u64 = UFFD_FEATURE_MINOR_SHMEM as u64;
/// `UFFD_FEATURE_THREAD_ID`.
pub const FEATURE_THREAD_ID: u64 = UFFD_FEATURE_THREAD_ID as u64;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const PF_WRITE: u64 = UFFD_PAGEFAULT_FLAG_WRITE as u64;
/// `UFFD_PAGEFAULT_FLAG_WP`.
pub const PF_WP: u64 = UFFD_PAGEFAULT_FLAG_WP as u64;

const MODE_MINOR: u64 = UFFDIO_REGISTER_MODE_MINOR as u64;
const MODE_WP: u64 = UFFDIO_REGISTER_MODE_WP as u64;
/// `_UFFDIO_CONTINUE` bit of the ioctls a registration allows.
const IOCTL_CONTINUE_BIT: u64 = 1 << _UFFDIO_CONTINUE;
/// `_UFFDIO_WRITEPROTECT` bit of the ioctls a registration allows.
const IOCTL_WRITEPROTECT_BIT: u64 = 1 << _UFFDIO_WRITEPROTECT;

/// `UFFDIO_WRITEPROTECT_MODE_WP` (`(__u64)1<<0`): protect rather than
/// unprotect. Written by hand: linux-raw-sys 0.12 lacks the
/// `UFFDIO_WRITEPROTECT_MODE_*` constants.
const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_CONTINUE_MODE_WP` (`(__u64)1<<1`, Linux 6.4): map the pages
/// write-protected. Written by hand: linux-raw-sys 0.12 lacks the
/// `UFFDIO_CONTINUE_MODE_*` constants.
const CONTINUE_MODE_WP: u64 = 1 << 1;

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

/// Issue the userfaultfd request `OPCODE` with `arg` as its argument.
///
/// # Safety
/// `OPCODE` must be a userfaultfd request whose argument is a pointer to a
/// `T` (the linux-raw-sys structure the request number was defined with), and
/// the request must resolve no fault outside the registered user view.
unsafe fn ioctl<const OPCODE: Opcode, T>(fd: BorrowedFd<'_>, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: the caller guarantees that `OPCODE` takes a `*mut T`; `arg` is
    // a valid exclusive reference for the duration of the call, which is all
    // the kernel reads or writes.
    unsafe { rustix::ioctl::ioctl(fd, Updater::<OPCODE, T>::new(arg)) }
}

fn range(start: usize, len: usize) -> uffdio_range {
    uffdio_range { start: start as u64, len: len as u64 }
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
                unsafe { rustix::mm::userfaultfd(base | F::from_bits_retain(UFFD_USER_MODE_ONLY)) }.map(|fd| (fd, true))
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
            let mut api = uffdio_api { api: UFFD_API.into(), features, ioctls: 0 };
            // SAFETY: UFFDIO_API takes a `struct uffdio_api`; the handshake
            // resolves no fault.
            if unsafe { ioctl::<UFFDIO_API, _>(fd.as_fd(), &mut api) }.is_err() {
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
        let mode = if self.wp { MODE_MINOR | MODE_WP } else { MODE_MINOR };
        let mut r = uffdio_register { range: range(start, len), mode, ioctls: 0 };
        // SAFETY: UFFDIO_REGISTER takes a `struct uffdio_register`;
        // registering resolves no fault.
        if unsafe { ioctl::<UFFDIO_REGISTER, _>(self.fd.as_fd(), &mut r) }.is_err() && self.wp {
            self.wp = false;
            r = uffdio_register { range: range(start, len), mode: MODE_MINOR, ioctls: 0 };
            // SAFETY: as above.
            unsafe { ioctl::<UFFDIO_REGISTER, _>(self.fd.as_fd(), &mut r) }?;
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
        let mode = if protect { WRITEPROTECT_MODE_WP } else { 0 };
        let mut w = uffdio_writeprotect { range: range(start, len), mode };
        // SAFETY: UFFDIO_WRITEPROTECT takes a `struct uffdio_writeprotect`;
        // unprotecting only lets writers of the caller's range go on.
        unsafe { ioctl::<UFFDIO_WRITEPROTECT, _>(self.fd.as_fd(), &mut w) }
    }

    /// Undo [`Self::register_minor`].
    pub fn unregister(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut r = range(start, len);
        // SAFETY: UFFDIO_UNREGISTER takes a `struct uffdio_range`; the
        // kernel wakes the threads waiting there, which retry the access.
        unsafe { ioctl::<UFFDIO_UNREGISTER, _>(self.fd.as_fd(), &mut r) }
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
        let mut c = uffdio_continue { range: range(start, len), mode, mapped: 0 };
        // SAFETY: UFFDIO_CONTINUE takes a `struct uffdio_continue`; the range
        // is the caller's, inside the registered user view (module doc).
        match unsafe { ioctl::<UFFDIO_CONTINUE, _>(self.fd.as_fd(), &mut c) } {
            Ok(()) => Ok(c.mapped.max(0) as u64),
            Err(e) => Err((e, c.mapped)),
        }
    }

    /// Wake threads waiting on faults in a range without mapping anything
    /// (they retry the access).
    pub fn wake(&self, start: usize, len: usize) -> Result<(), Errno> {
        let mut r = range(start, len);
        // SAFETY: UFFDIO_WAKE takes a `struct uffdio_range`; waking maps
        // nothing, the woken threads retry their access.
        unsafe { ioctl::<UFFDIO_WAKE, _>(self.fd.as_fd(), &mut r) }
    }

    /// Read every pending page fault (non-blocking) into `out`; returns how
    /// many were read. Non-fault events are ignored (none are requested).
    pub fn read_faults(&self, out: &mut Vec<PageFault>) -> Result<usize, Errno> {
        const MSG: usize = core::mem::size_of::<uffd_msg>();
        const BATCH: usize = 64;
        let mut buf = [0u8; BATCH * MSG];
        let mut n = 0;
        loop {
            let count = match rustix::io::read(&self.fd, &mut buf) {
                Ok(r) => r / MSG,
                Err(Errno::AGAIN) => return Ok(n),
                Err(e) => return Err(e),
            };
            for bytes in buf.chunks_exact(MSG).take(count) {
                // SAFETY: `bytes` holds exactly one `uffd_msg` the kernel
                // wrote; the structure is plain integers (and unions of
                // them), so any bytes are a valid value, and the read is
                // unaligned.
                let m = unsafe { bytes.as_ptr().cast::<uffd_msg>().read_unaligned() };
                if u32::from(m.event) == UFFD_EVENT_PAGEFAULT {
                    // SAFETY: for UFFD_EVENT_PAGEFAULT the kernel fills the
                    // `pagefault` arm of the union (plain integers).
                    let pf = unsafe { m.arg.pagefault };
                    out.push(PageFault { address: pf.address, flags: pf.flags });
                    n += 1;
                }
            }
            if count < BATCH {
                return Ok(n);
            }
        }
    }

    /// The descriptor, for `poll`.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_raw_sys::general::{_UFFDIO_API, _UFFDIO_REGISTER, _UFFDIO_UNREGISTER, _UFFDIO_WAKE, UFFDIO};
    use rustix::ioctl::opcode;

    /// Each request number from linux-raw-sys encodes the size of the
    /// structure this module passes with it (and the `_IOR`/`_IOWR`
    /// direction of `userfaultfd.h`): a request paired with the wrong
    /// structure fails here instead of letting the kernel overrun it.
    #[test]
    fn requests_match_their_structures() {
        let g = UFFDIO as u8;
        assert_eq!(UFFDIO_API, opcode::read_write::<uffdio_api>(g, _UFFDIO_API as u8));
        assert_eq!(UFFDIO_REGISTER, opcode::read_write::<uffdio_register>(g, _UFFDIO_REGISTER as u8));
        assert_eq!(UFFDIO_UNREGISTER, opcode::read::<uffdio_range>(g, _UFFDIO_UNREGISTER as u8));
        assert_eq!(UFFDIO_WAKE, opcode::read::<uffdio_range>(g, _UFFDIO_WAKE as u8));
        assert_eq!(UFFDIO_WRITEPROTECT, opcode::read_write::<uffdio_writeprotect>(g, _UFFDIO_WRITEPROTECT as u8));
        assert_eq!(UFFDIO_CONTINUE, opcode::read_write::<uffdio_continue>(g, _UFFDIO_CONTINUE as u8));
    }

    /// The sizes `userfaultfd.h` gives (`struct uffd_msg` is packed to 32
    /// bytes; the kernel returns whole messages).
    #[test]
    fn structure_sizes() {
        use core::mem::size_of;
        assert_eq!(size_of::<uffd_msg>(), 32);
        assert_eq!(size_of::<uffdio_api>(), 24);
        assert_eq!(size_of::<uffdio_range>(), 16);
        assert_eq!(size_of::<uffdio_register>(), 32);
        assert_eq!(size_of::<uffdio_writeprotect>(), 24);
        assert_eq!(size_of::<uffdio_continue>(), 32);
    }

    /// The mode bits linux-raw-sys 0.12 lacks, against the installed
    /// `linux/userfaultfd.h` where it defines them (an older header may lack
    /// `UFFDIO_CONTINUE_MODE_WP`; that is reported, not failed). The
    /// `uffd_write_protect` integration test exercises both on the kernel.
    #[test]
    fn hand_written_mode_bits_match_the_uapi_header() {
        const HEADER: &str = "/usr/include/linux/userfaultfd.h";
        let Ok(text) = std::fs::read_to_string(HEADER) else {
            eprintln!("SKIP: {HEADER} not installed; mode bits not cross-checked");
            return;
        };
        let define = |name: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.split_whitespace().take(2).eq(["#define", name]))?;
            let value = line.split_whitespace().nth(2)?;
            let shift = value.strip_prefix("((__u64)1<<")?.strip_suffix(')')?;
            Some(1 << shift.parse::<u32>().ok()?)
        };
        for (name, ours) in
            [("UFFDIO_WRITEPROTECT_MODE_WP", WRITEPROTECT_MODE_WP), ("UFFDIO_CONTINUE_MODE_WP", CONTINUE_MODE_WP)]
        {
            match define(name) {
                Some(theirs) => assert_eq!(ours, theirs, "{name}"),
                None => eprintln!("SKIP: {HEADER} does not define {name}"),
            }
        }
        // Sanity of the parser: a constant both sides have.
        assert_eq!(define("UFFDIO_REGISTER_MODE_WP"), Some(MODE_WP));
    }
}
