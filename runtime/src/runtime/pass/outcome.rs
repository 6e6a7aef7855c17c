//! What a finished pass reported: its log read back, a refused access
//! classified, its GPU faults listed (from the log's list, or from its
//! fault bitmaps when they overflowed the list).

use super::super::flight::{FaultBitmaps, InFlight};
use super::super::*;

/// What one kernel pass produced: the error of a refused access, if any, and
/// the GPU faults as (page, write) pairs.
pub(in crate::runtime) type PassOutcome = (Option<LaunchError>, Vec<(u32, bool)>);

impl Inner {
    /// What a pass the GPU finished produced: the error of a refused
    /// access (if any) and its faults as (page, write) pairs.
    pub(in crate::runtime) fn read_outcome(
        &self,
        st: &mut State,
        f: &mut InFlight,
    ) -> Result<PassOutcome, LaunchError> {
        let gpu = &self.gpu;
        let c = &self.stats;
        let lost = f.shared.lost.lock().clone();
        if let Some(m) = lost {
            if let Some(rb) = f.readback.take() {
                drop(rb);
            }
            return Err(DeviceError::Lost(m).into());
        }
        Counters::add(&c.kernel_ns, f.submitted.elapsed().as_nanos() as u64);
        if f.stamps {
            st.stamps_busy = false;
            if let Some(t) = &gpu.timestamps {
                let ticks: [u64; 2] =
                    gpu.read_after(&t.readback, 16, f.shared.submission()?, bytemuck::pod_read_unaligned)?;
                let ns = (ticks[1].saturating_sub(ticks[0]) as f64 * f64::from(t.period)) as u64;
                Counters::add(&c.kernel_gpu_ns, ns);
                tracing::debug!(target: "svm", kernel = %f.label, gpu_ns = ns, "svm_kernel_gpu");
            }
        }
        let Some(rb) = f.readback.take() else {
            // Bound access only: no log, nothing refused in software.
            Counters::add(&c.bound_passes, 1);
            return Ok((None, Vec::new()));
        };
        let log = gpu.read_after(
            &rb,
            Gpu::log_read_bytes(),
            f.shared.submission()?,
            bytemuck::pod_collect_to_vec::<u8, u32>,
        )?;
        // (A buffer whose map failed is not reused.)
        gpu.give_log_readback(rb);
        Counters::add(&c.pt_upload_bytes, f.pt_bytes);
        Counters::add(if f.extents { &c.extent_passes } else { &c.page_table_passes }, 1);
        let total = log[0];
        if total != 0 {
            let records: Vec<(KernelFault, bool)> = (0..total.min(ERROR_RECORDS) as usize)
                .map(|i| {
                    let addr = u64::from(log[2 + i * 4]) | (u64::from(log[3 + i * 4]) << 32);
                    let write = log[4 + i * 4] != 0;
                    let kind = match log[1 + i * 4] {
                        // The extent path only knows that no extent admitted
                        // the access; what the pass mapped says why.
                        svm_shaders::err::REFUSED => self.classify(st, &f.busy, addr, write),
                        code => KernelFaultKind::from_code(code),
                    };
                    (KernelFault { addr, kind }, write)
                })
                .collect();
            // A replayable extent pass: refused accesses to allocated pages
            // are GPU faults, unless a real error is among them.
            let is_fault = |k: KernelFaultKind| matches!(k, KernelFaultKind::NotDeclared | KernelFaultKind::ReadOnly);
            if f.replayable && f.extents && records.iter().all(|(x, _)| is_fault(x.kind)) {
                let mut pages: Vec<(u32, bool)> =
                    records.iter().map(|&(x, write)| (page_of(x.addr as usize - self.arena.base()), write)).collect();
                pages.sort_unstable();
                pages.dedup();
                return Ok((None, pages));
            }
            let faults = records.into_iter().map(|(x, _)| x).collect();
            return Ok((Some(LaunchError::Kernel { faults, total }), Vec::new()));
        }
        // Faults count only in a replayable launch (the prelude records
        // none otherwise; anything there was not written by it). The
        // launch checks each one against what it may do.
        if !f.replayable {
            return Ok((None, Vec::new()));
        }
        let lf = svm_shaders::LOG_FAULTS as usize;
        let n = log[lf].min(FAULT_CAP) as usize;
        let mut faults: Vec<(u32, bool)> = match f.fault_bitmaps.take().filter(|_| log[lf] > FAULT_CAP) {
            // More faults than the list holds: every one of them is in the
            // bitmaps (read back now, once), so that one replay serves them
            // all and their chunks merge into long copies, instead of a
            // replay per FAULT_CAP faults.
            Some(bitmaps) => self.read_fault_bitmaps(&bitmaps)?,
            None => log[lf + 1..lf + 1 + n].iter().map(|&e| (e & 0x7fff_ffff, e & 0x8000_0000 != 0)).collect(),
        };
        faults.sort_unstable();
        faults.dedup();
        Ok((None, faults))
    }

    /// Every (page, write) fault a finished replayable pass recorded in its
    /// log's bitmaps (a bit per page of the table's coverage, read faults
    /// then write faults).
    fn read_fault_bitmaps(&self, b: &FaultBitmaps) -> Result<Vec<(u32, bool)>, LaunchError> {
        let gpu = &self.gpu;
        let bytes = 2 * u64::from(b.words) * 4;
        let from = (u64::from(svm_shaders::LOG_FAULTS) + 1 + u64::from(FAULT_CAP)) * 4;
        let rb = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("svm fault bitmaps read back"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm faults") });
        enc.copy_buffer_to_buffer(&b.log, from, &rb, 0, bytes);
        let sub = gpu.submit([enc.finish()]);
        let words = gpu.read_after(&rb, bytes, &sub, bytemuck::pod_collect_to_vec::<u8, u32>)?;
        let (read, write) = words.split_at(b.words as usize);
        let mut faults = Vec::new();
        for (bitmap, is_write) in [(read, false), (write, true)] {
            for (i, &w) in bitmap.iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    let bit = w.trailing_zeros();
                    w &= w - 1;
                    // (i < words = pages / 32 rounded up: fits in u32.)
                    #[allow(clippy::cast_possible_truncation, reason = "a page index of the table's coverage")]
                    faults.push((i as u32 * 32 + bit, is_write));
                }
            }
        }
        Ok(faults)
    }

    /// Why the access at `addr` was refused, from what the pass mapped
    /// (`busy`: its ranges and whether it may write them) and the order
    /// of the page-table path's checks. (The page table may have changed
    /// since: other launches map their pages while this one runs.)
    fn classify(&self, st: &State, busy: &[(u32, u32, bool)], addr: u64, write: bool) -> KernelFaultKind {
        let off = addr.wrapping_sub(self.arena.base() as u64);
        if off >= self.arena.len() as u64 {
            return KernelFaultKind::OutOfArena;
        }
        if !off.is_multiple_of(4) {
            return KernelFaultKind::Misaligned;
        }
        #[allow(clippy::cast_possible_truncation, reason = "off < arena length: pages fit u32")]
        let page = (off / PAGE_SIZE as u64) as u32;
        if !st.table.get(PageIndex(page)).is_allocated() {
            return KernelFaultKind::Unallocated;
        }
        let i = busy.partition_point(|r| r.1 <= page);
        match busy.get(i).filter(|r| r.0 <= page) {
            None => KernelFaultKind::NotDeclared,
            Some(&(_, _, false)) if write => KernelFaultKind::ReadOnly,
            // A slab page is writable only in the bytes declared read-write.
            Some(_) if write && st.slabs.is_slab(page) => KernelFaultKind::ReadOnly,
            // The extents were built from what the pass mapped:
            // unreachable unless the log is corrupt.
            Some(_) => KernelFaultKind::Unknown(svm_shaders::err::REFUSED),
        }
    }
}
