//! The managed arena: the memfd views plus the fault backend that guards the
//! user view. Mechanism only: *which* pages to zap or restore, and when, is
//! the runtime's policy.

use crate::backend::FaultBackendKind;
use crate::error::{MigrateError, Result};
use crate::sys::mmap::{Views, VIEW_ALIGN};
use crate::sys::signals::{RegisterError, SegvRegistration};
use crate::sys::uffd::Uffd;

pub(crate) enum Guard {
    Uffd(Uffd),
    Mprotect,
}

/// A reserved, 2 MiB aligned range of virtual memory whose pages can be made
/// inaccessible to the CPU ([`Arena::zap`]) and given back
/// ([`Arena::restore`]) without losing their host copy, which the runtime
/// reads and writes through [`Arena::read_host`] / [`Arena::write_host`].
///
/// An arena belongs to the process that created it. In a `fork` child (which
/// has no managed memory: both views are `MADV_DONTFORK`) every method that
/// returns a `Result` fails with [`MigrateError::NotInherited`] without a
/// system call (the userfaultfd would act on the parent's registration),
/// dropping does nothing, and [`Arena::read_host`] and the other host-copy
/// accessors crash with a message, as touching the user view does.
pub struct Arena {
    // Drop order: the fault backend, then the registration with the
    // SIGSEGV handler, then the mappings.
    pub(crate) guard: Guard,
    /// Registration with the SIGSEGV handler: the mprotect backend's fault
    /// delivery; for uffd only its crash messages (and best effort: `None`
    /// when the handler's table is full).
    segv: Option<SegvRegistration>,
    views: Views,
    /// Byte ranges withheld from the program for good ([`Arena::withhold`]),
    /// sorted by offset. Read-locked across every change that could make a
    /// page accessible, write-locked across a withholding: the two never
    /// interleave.
    withheld: std::sync::RwLock<Vec<(usize, usize)>>,
}

impl core::fmt::Debug for Arena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Arena")
            .field("base", &format_args!("{:#x}", self.base()))
            .field("len", &self.len())
            .field("backend", &self.backend())
            .finish()
    }
}

/// Offsets and lengths are in bytes from the arena base and must be page
/// aligned; out-of-range or unaligned arguments are caller bugs and panic.
impl Arena {
    /// Reserve an arena of `len` bytes (rounded up to 2 MiB) guarded by the
    /// given backend.
    pub fn new(len: usize, backend: FaultBackendKind) -> Result<Self> {
        if len == 0 {
            return Err(MigrateError::Config("arena size must be positive".into()));
        }
        let len = len.next_multiple_of(VIEW_ALIGN);
        let views = Views::new(len).map_err(MigrateError::os("mmap arena"))?;
        let alias = views.alias_ptr(0) as usize;
        let (guard, segv) = match backend {
            FaultBackendKind::Uffd => {
                let mut uffd = Uffd::open().map_err(|e| MigrateError::Unsupported {
                    backend: "uffd",
                    why: format!("userfaultfd with MINOR_SHMEM: {e}"),
                })?;
                uffd.register_minor(views.user_base(), len).map_err(|e| MigrateError::Unsupported {
                    backend: "uffd",
                    why: format!("UFFDIO_REGISTER (MINOR) of the arena: {e}"),
                })?;
                (Guard::Uffd(uffd), SegvRegistration::new(views.user_base(), len, alias, false).ok())
            }
            FaultBackendKind::Mprotect => {
                let reg = SegvRegistration::new(views.user_base(), len, alias, true).map_err(|e| match e {
                    RegisterError::TooManyArenas => {
                        MigrateError::Unsupported { backend: "mprotect", why: "too many arenas in this process".into() }
                    }
                    RegisterError::Os(e) => MigrateError::Os { op: "sigaction(SIGSEGV)", source: e },
                })?;
                (Guard::Mprotect, Some(reg))
            }
        };
        let arena = Self { guard, segv, views, withheld: std::sync::RwLock::default() };
        // Nothing is allocated yet: every page is inaccessible.
        arena.protect_none(0, len)?;
        Ok(arena)
    }

    /// Make a range of unallocated pages usable by programs (zero-filled on
    /// first touch).
    pub fn allocate(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        self.each_not_withheld(offset, len, |o, l| {
            self.views.user_protect(o, l, true, true).map_err(MigrateError::os("mprotect(RW)"))
        })
    }

    /// Take `[offset, offset + len)` from the program for good: made
    /// inaccessible now (`PROT_NONE`, with either backend: no
    /// `UFFDIO_CONTINUE` maps through it) and never made accessible again
    /// (`allocate`, `restore`, `restore_readonly`, `write_protect` and
    /// `write_unprotect` leave these pages out), so that no access of the
    /// program can see writes someone else may still make to the host copy
    /// (a device that cannot be stopped writing there). An access is a
    /// fatal fault (mprotect: served to the handler, which refuses it;
    /// uffd: a plain SIGSEGV, as on a freed page). On an error the range is
    /// withheld from every later change all the same, but may still be
    /// accessible now.
    pub fn withhold(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut w = self.withheld.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.push((offset, len));
        w.sort_unstable();
        // (Under the write lock: no restore of another thread maps the
        // range between the protection and the record.)
        self.protect_none(offset, len).or_else(|_| self.zap(offset, len))
    }

    /// Whether a page of `[offset, offset + len)` is withheld.
    pub fn is_withheld(&self, offset: usize, len: usize) -> bool {
        let w = self.withheld.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.iter().any(|&(o, l)| o < offset.saturating_add(len) && offset < o + l)
    }

    /// The withheld byte ranges (offset, length), sorted by offset; they
    /// may overlap.
    pub fn withheld(&self) -> Vec<(usize, usize)> {
        self.withheld.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// `f` over the parts of `[offset, offset + len)` that are not withheld,
    /// the list read-locked throughout.
    fn each_not_withheld(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(usize, usize) -> Result<()>,
    ) -> Result<()> {
        let w = self.withheld.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut at = offset;
        let end = offset + len;
        for &(o, l) in w.iter() {
            if o + l <= at || o >= end {
                continue;
            }
            if o > at {
                f(at, o - at)?;
            }
            at = at.max(o + l);
        }
        if at < end {
            f(at, end - at)?;
        }
        Ok(())
    }

    /// Return a range to the unallocated state: its host copy is zeroed and
    /// released, and any CPU access faults (use after free is caught, not
    /// silently served). The device must no longer use it.
    pub fn release(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        self.protect_none(offset, len)?;
        self.discard(offset, len)
    }

    /// [`Arena::release`] for memory a device imported in place (a host
    /// import pins the pages behind the alias view): the range is made
    /// inaccessible to the CPU and zeroed in place instead of punched, so
    /// the next allocation of it sees zeros through the same pages the
    /// device uses.
    pub fn release_in_place(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        self.protect_none(offset, len)?;
        self.views.zero_alias(offset, len);
        Ok(())
    }

    /// The fault backend guarding this arena.
    pub fn backend(&self) -> FaultBackendKind {
        match self.guard {
            Guard::Uffd(_) => FaultBackendKind::Uffd,
            Guard::Mprotect => FaultBackendKind::Mprotect,
        }
    }
    /// Address of the first byte, as programs see it.
    pub fn base(&self) -> usize {
        self.views.user_base()
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.views.len()
    }
    /// Never true.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Whether `addr` lies inside the arena.
    pub fn contains(&self, addr: usize) -> bool {
        addr.wrapping_sub(self.base()) < self.len()
    }

    /// `Err(NotInherited)` in a process other than the arena's (a fork
    /// child).
    pub(crate) fn check_owner(&self) -> Result<()> {
        if self.views.is_owner() {
            Ok(())
        } else {
            Err(MigrateError::NotInherited {
                owner: self.views.owner().as_raw_nonzero().get(),
                current: rustix::process::getpid().as_raw_nonzero().get(),
            })
        }
    }

    /// The arena's registration with the SIGSEGV handler.
    pub(crate) fn segv(&self) -> Option<&SegvRegistration> {
        self.segv.as_ref()
    }

    /// The checks of every method taking a range: this process owns the
    /// arena (else an error), and the range is page aligned (else a panic).
    fn check(&self, offset: usize, len: usize) -> Result<()> {
        self.check_owner()?;
        Self::check_aligned(offset, len);
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "arena range {offset:#x}+{len:#x} past the arena's {:#x} bytes",
            self.len()
        );
        Ok(())
    }

    fn check_aligned(offset: usize, len: usize) {
        let page = svm_page_size();
        assert!(offset.is_multiple_of(page) && len.is_multiple_of(page), "unaligned arena range {offset:#x}+{len:#x}");
    }

    /// Make `[offset, offset + len)` inaccessible to program threads; their
    /// next access faults to the service. The host copy is kept.
    pub fn zap(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        match &self.guard {
            Guard::Uffd(_) => {
                // Holes would come back as missing (zero-fill) faults that the
                // MINOR registration never sees: give them a page first.
                self.views.populate(offset, len).map_err(MigrateError::os("madvise(POPULATE_WRITE)"))?;
                self.views.user_dontneed(offset, len).map_err(MigrateError::os("madvise(DONTNEED)"))
            }
            Guard::Mprotect => {
                self.views.user_protect(offset, len, false, false).map_err(MigrateError::os("mprotect(NONE)"))
            }
        }
    }

    /// Make `[offset, offset + len)` accessible again, showing the current
    /// host copy, and wake threads waiting on faults there.
    pub fn restore(&self, offset: usize, len: usize) -> Result<()> {
        self.restore_mode(offset, len, false)
    }

    /// [`Arena::restore`], but readable only: writes fault (a write-protect
    /// fault) until [`Arena::write_unprotect`].
    pub fn restore_readonly(&self, offset: usize, len: usize) -> Result<()> {
        self.restore_mode(offset, len, true)
    }

    fn restore_mode(&self, offset: usize, len: usize, readonly: bool) -> Result<()> {
        self.check(offset, len)?;
        self.each_not_withheld(offset, len, |o, l| self.restore_part(o, l, readonly))
    }

    fn restore_part(&self, offset: usize, len: usize, readonly: bool) -> Result<()> {
        /// How often a UFFDIO_CONTINUE interrupted by address-space changes
        /// is resumed before giving up.
        const RESTORE_RETRIES: usize = 10_000;
        match &self.guard {
            Guard::Uffd(u) => {
                use rustix::io::Errno;
                let start = self.base() + offset;
                // UFFDIO_CONTINUE from `at` to the end; EAGAIN (the address
                // space changed meanwhile) is retried from where it stopped,
                // as the kernel asks. Returns whether some page was mapped
                // already (EEXIST).
                let cont = |mut at: usize, end: usize| -> Result<bool> {
                    for _ in 0..RESTORE_RETRIES {
                        match u.continue_range_mode(at, end - at, readonly) {
                            Ok(_) => return Ok(false),
                            Err((Errno::EXIST, _)) => return Ok(true),
                            Err((Errno::AGAIN, mapped)) => {
                                at += usize::try_from(mapped).unwrap_or(0);
                                if at >= end {
                                    return Ok(false);
                                }
                                std::thread::yield_now();
                            }
                            Err((e, _)) => return Err(MigrateError::Os { op: "UFFDIO_CONTINUE", source: e }),
                        }
                    }
                    Err(MigrateError::Os { op: "UFFDIO_CONTINUE (retried)", source: Errno::AGAIN })
                };
                if !cont(start, start + len)? {
                    return Ok(());
                }
                // Some page was mapped already (its fault raced with
                // another): map the rest page by page.
                let page = svm_page_size();
                for p in (start..start + len).step_by(page) {
                    cont(p, p + page)?;
                }
                u.wake(start, len).map_err(MigrateError::os("UFFDIO_WAKE"))
            }
            Guard::Mprotect => {
                self.views.user_protect(offset, len, true, !readonly).map_err(MigrateError::os("mprotect"))
            }
        }
    }

    /// Wake threads waiting on faults in a range without changing anything
    /// (they retry the access). Nothing to do for the mprotect backend,
    /// whose waiters are woken by the fault service itself.
    pub fn wake(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        match &self.guard {
            Guard::Uffd(u) => u.wake(self.base() + offset, len).map_err(MigrateError::os("UFFDIO_WAKE")),
            Guard::Mprotect => Ok(()),
        }
    }

    /// Zero the host copy of a range and release its memory. The user view
    /// must be zapped or otherwise unused there by the caller's protocol.
    pub fn discard(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        self.views.punch_hole(offset, len).map_err(MigrateError::os("fallocate(PUNCH_HOLE)"))
    }

    pub(crate) fn protect_none(&self, offset: usize, len: usize) -> Result<()> {
        self.views.user_protect(offset, len, false, false).map_err(MigrateError::os("mprotect(NONE)"))
    }

    /// Write-protect a range of the user view: reads proceed, a write
    /// faults to the service (as a [`crate::CpuFault`] with `write:
    /// Some(true)`), which must call [`Arena::write_unprotect`]. uffd: a
    /// userfaultfd write-protect (no VMA split); mprotect: `PROT_READ`.
    pub fn write_protect(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        self.each_not_withheld(offset, len, |offset, len| match &self.guard {
            Guard::Uffd(u) if u.has_wp() => {
                u.write_protect(self.base() + offset, len, true).map_err(MigrateError::os("UFFDIO_WRITEPROTECT"))
            }
            Guard::Uffd(_) => Err(MigrateError::Unsupported {
                backend: "uffd",
                why: "this kernel has no userfaultfd write-protect on shmem".into(),
            }),
            Guard::Mprotect => {
                self.views.user_protect(offset, len, true, false).map_err(MigrateError::os("mprotect(READ)"))
            }
        })
    }

    /// Undo [`Arena::write_protect`] and wake writers waiting there.
    pub fn write_unprotect(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        self.each_not_withheld(offset, len, |offset, len| match &self.guard {
            Guard::Uffd(u) => {
                u.write_protect(self.base() + offset, len, false).map_err(MigrateError::os("UFFDIO_WRITEPROTECT(off)"))
            }
            Guard::Mprotect => {
                self.views.user_protect(offset, len, true, true).map_err(MigrateError::os("mprotect(RW)"))
            }
        })
    }

    /// Whether faults the kernel takes on managed memory inside system calls
    /// (`read(2)` into device-owned pages, ...) are served like CPU faults.
    /// False for the mprotect backend (the kernel raises no signal for its
    /// own accesses) and for a userfaultfd opened `UFFD_USER_MODE_ONLY`
    /// (unprivileged, `vm.unprivileged_userfaultfd=0`): such calls fail
    /// with `EFAULT`; `prefetch` the range to the host first.
    pub fn syscall_faults_served(&self) -> bool {
        match &self.guard {
            Guard::Uffd(u) => !u.user_mode_only(),
            Guard::Mprotect => false,
        }
    }

    /// Whether [`Arena::write_protect`] works with this backend here.
    pub fn has_write_protect(&self) -> bool {
        match &self.guard {
            Guard::Uffd(u) => u.has_wp(),
            Guard::Mprotect => true,
        }
    }

    /// Map the host copy of a range into the alias view in one system call
    /// (`MADV_POPULATE_WRITE`) before a bulk copy, instead of taking one
    /// minor fault per page during it.
    pub fn populate_host(&self, offset: usize, len: usize) -> Result<()> {
        self.check(offset, len)?;
        self.views.populate(offset, len).map_err(MigrateError::os("madvise(POPULATE_WRITE)"))
    }

    /// Address of the host copy of byte `offset`, in the alias view: it
    /// never faults and stays mapped as long as the arena lives.
    pub fn host_ptr(&self, offset: usize) -> *mut u8 {
        self.views.alias_ptr(offset)
    }

    /// Copy host bytes out (never faults).
    ///
    /// # Safety
    /// No one writes `[offset, offset + dst.len())` while the copy runs:
    /// not a program thread through the user view (the runtime zaps or
    /// write-protects the range, or the program's borrows exclude writers),
    /// not the device through an import of the alias view, not another
    /// caller of these methods (the runtime holds its update lock).
    #[allow(unsafe_code, reason = "an unsafe fn over the alias view; the contract is the caller's")]
    pub unsafe fn read_host(&self, offset: usize, dst: &mut [u8]) {
        // SAFETY: the caller's contract is `read_alias`'s.
        unsafe { self.views.read_alias(offset, dst) }
    }

    /// Copy bytes into the host copy (never faults).
    ///
    /// # Safety
    /// No one else reads or writes `[offset, offset + src.len())` while the
    /// copy runs (program threads: the range is zapped from the user view or
    /// not yet shown to them; the device: not imported there; the runtime:
    /// under its update lock), and `src` is not memory of this arena.
    #[allow(unsafe_code, reason = "an unsafe fn over the alias view; the contract is the caller's")]
    pub unsafe fn write_host(&self, offset: usize, src: &[u8]) {
        // SAFETY: the caller's contract is `write_alias`'s.
        unsafe { self.views.write_alias(offset, src) }
    }

    /// Borrow the host copy of a range (never faults).
    ///
    /// # Safety
    /// No one writes `[offset, offset + len)` while `f` runs: the `&[u8]`
    /// asserts the bytes do not change (see [`Arena::read_host`] for who
    /// could).
    #[allow(unsafe_code, reason = "an unsafe fn over the alias view; the contract is the caller's")]
    pub unsafe fn with_host<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: the caller's contract is `with_alias`'s.
        unsafe { self.views.with_alias(offset, len, f) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if !self.views.is_owner() {
            // A fork child: UFFDIO_UNREGISTER would unregister the parent's
            // arena (the descriptor acts on the mm that opened it). The
            // fields' drops do nothing here either but close descriptors.
            return;
        }
        if let Guard::Uffd(u) = &self.guard {
            let _ = u.unregister(self.views.user_base(), self.views.len());
        }
    }
}

/// The managed page size (4 KiB).
pub const fn svm_page_size() -> usize {
    4096
}
