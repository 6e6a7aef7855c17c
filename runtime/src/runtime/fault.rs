//! The CPU-fault service: what the fault thread calls for each CPU access
//! to a page the CPU may not use now (device-owned, kept copy, stale).

use super::*;

impl FaultHandler for Inner {
    fn arena(&self) -> &Arena {
        &self.arena
    }

    fn handle_fault(&self, fault: CpuFault) -> Result<(), FaultFatal> {
        self.serve_fault(fault, false).map(drop)
    }

    fn try_fault(&self, fault: CpuFault) -> Result<Served, FaultFatal> {
        self.serve_fault(fault, true)
    }

    fn set_kick(&self, kick: svm_migrate::Kick) {
        self.signals.set_kick(kick);
    }
}

impl Inner {
    /// Serve a CPU fault on a page whose lease this runtime holds (`None`:
    /// it holds it no more; see `mirror.rs`). A page a launch in flight uses: with `park`, the
    /// answer is [`Served::Again`] (the fault service parks the fault and
    /// serves others; the flight's settling kicks it: HMM's non-blockable
    /// invalidation), without, the fault waits for that launch (blockable;
    /// the update lock released meanwhile); either way it is decided again
    /// after. Faults on other pages are served while kernels run.
    pub(super) fn serve_fault_held(&self, fault: CpuFault, park: bool) -> Result<Option<Served>, FaultFatal> {
        let page = page_of(fault.offset);
        let addr = self.arena.base() + fault.offset;
        let _span =
            tracing::debug_span!("svm_cpu_fault", page, write = ?fault.write, label = %crate::label::trace_label(addr))
                .entered();
        let mut st = self.state.lock();
        while let Some(f) = self.flight_on(&mut st, page) {
            if !park {
                self.wait_pages(&mut st, page, page + 1);
                break;
            }
            if !self.signals.settled_or_kick_later(&f) {
                tracing::trace!(page, "CPU fault parked on a launch in flight");
                return Ok(Some(Served::Again));
            }
            // Settled on the GPU but not retired yet: retire it and look
            // again (no wait: its owner or the next check retires it).
            self.wait_settled(&mut st, &f);
        }
        if !self.holds(page) {
            // Given to another mirror while this fault waited.
            return Ok(None);
        }
        Counters::add(&self.stats.cpu_faults, 1);
        self.serve_page(&mut st, fault, page, addr).map(|()| Some(Served::Done))
    }

    /// Serve a CPU fault on `page` (at `addr`), which no launch in flight
    /// uses. (The guard: a staged copy back is waited for with the update
    /// lock released, see `migrate_back`.)
    fn serve_page(
        &self,
        guard: &mut parking_lot::MutexGuard<'_, State>,
        fault: CpuFault,
        page: u32,
        addr: usize,
    ) -> Result<(), FaultFatal> {
        let st = &mut **guard;
        if self.withheld(page, page + 1) {
            return Err(FaultFatal(format!(
                "page {addr:#x} was being written in place by a kernel when the device was declared lost (launch timeout)"
            )));
        }
        if !st.table.get(PageIndex(page)).is_allocated() {
            if self.arena.backend() == FaultBackendKind::Uffd {
                // Freed pages are PROT_NONE: a real access to one raises
                // SIGSEGV, never a userfault. This message is stale: its
                // thread was woken by an earlier resolution of the same page
                // (before the page was freed). Wake again, change nothing.
                return self.arena.wake(fault.offset, PAGE_SIZE).map_err(|e| FaultFatal(e.to_string()));
            }
            return Err(FaultFatal(format!(
                "CPU access to managed address {addr:#x}, which is not allocated (never allocated, or freed)"
            )));
        }
        if st.dup[page as usize] {
            // A kept read-only copy (ReadMostly). A write (or a fault whose
            // kind the backend cannot tell) drops the device copy first; a
            // read of a page with no PTE maps it, still write-protected.
            return if fault.write != Some(false) {
                self.drop_copy(st, page).map_err(|e| FaultFatal(e.to_string()))
            } else {
                self.arena.restore_readonly(fault.offset, PAGE_SIZE).map_err(|e| FaultFatal(e.to_string()))
            };
        }
        let device_owned = st.owned(page);
        self.migrate_back(guard, page).map_err(|e| {
            FaultFatal(format!("page {addr:#x} is owned by the device and cannot be brought back: {e}"))
        })?;
        if !device_owned {
            // A host page that simply is not mapped yet, or a stale message
            // (a fault that raced with another on the same page, possibly
            // freed and reallocated since, hence maybe a hole): give it a
            // page-cache page and map it.
            self.arena
                .populate_host(fault.offset, PAGE_SIZE)
                .and_then(|()| self.arena.restore(fault.offset, PAGE_SIZE))
                .map_err(|e| FaultFatal(e.to_string()))?;
        }
        Ok(())
    }
}
