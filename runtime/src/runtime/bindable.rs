//! Bound access, the residency side: where a bound range's bytes are on the
//! device, and making them one contiguous run first where they are not.
//!
//! * Sparse and coherent modes: arena page p is view page p, so a range is
//!   already contiguous in the one view buffer; it binds at its arena offset.
//! * Software mode: a range's pages must sit in consecutive frames of one
//!   pool segment. Uploads take whole free runs where they can (so a range
//!   migrated at once usually is); a range whose pages came in pieces is
//!   moved together by a device-side copy into a free run.
//! * A range advised `AccessedBy` binds in its host import.

use svm_pagetable::{FrameIndex, PageIndex, Pte, PAGE_SIZE};

use super::{advice, page_of, Frames, Inner, State, HOST};
use crate::bind::{Checked, Placed};
use crate::error::{BindError, DeviceError, LaunchError};
use crate::gpu::MappingMode;

impl Inner {
    /// Place every managed binding of a launch whose pages are resident and
    /// mapped (software mode: moving them together where needed).
    /// `error(i, why)`: the error for binding `i`.
    pub(super) fn place_bindings(
        &self,
        st: &mut State,
        error: &dyn Fn(usize, BindError) -> LaunchError,
        checked: &[Checked<'_>],
    ) -> Result<Vec<Option<Placed>>, LaunchError> {
        let base = self.arena.base();
        let pages = |addr: usize, len: usize| {
            let off = addr - base;
            (page_of(off), page_of((off + len).next_multiple_of(PAGE_SIZE)))
        };
        // AccessedBy ranges bind in their import, whole or not at all.
        for (i, c) in checked.iter().enumerate() {
            if let Checked::Managed { addr, len, .. } = *c {
                let (a, b) = pages(addr, len);
                let n = (a..b).filter(|&p| st.advice[p as usize] & advice::COHERENT != 0).count();
                if n != 0 && n != (b - a) as usize {
                    return Err(error(i, BindError::StraddlesCoherent));
                }
            }
        }
        if self.gpu.mode == MappingMode::Software {
            // Overlapping bound ranges are made contiguous as one (a range
            // inside a contiguous run is contiguous).
            let mut runs: Vec<(u32, u32)> = checked
                .iter()
                .filter_map(|c| match *c {
                    Checked::Managed { addr, len, .. } => Some(pages(addr, len)),
                    Checked::Uniform(_) => None,
                })
                .filter(|&(a, _)| st.advice[a as usize] & advice::COHERENT == 0)
                .collect();
            runs.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::new();
            for (a, b) in runs {
                match merged.last_mut() {
                    Some(l) if a < l.1 => l.1 = l.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            for (a, b) in merged {
                if !self.contiguous(st, a, b) {
                    self.move_together(st, a, b)?;
                }
            }
        }
        let mut out = Vec::with_capacity(checked.len());
        for c in checked {
            let Checked::Managed { addr, len, .. } = *c else {
                out.push(None);
                continue;
            };
            let off = addr - base;
            let (a, _) = pages(addr, len);
            let (buffer, offset) = match (&st.coherent, self.gpu.mode) {
                (Some(c), _) if st.advice[a as usize] & advice::COHERENT != 0 => {
                    (c._import.buffer().clone(), (off - c.first as usize * PAGE_SIZE) as u64)
                }
                (_, MappingMode::Sparse) => {
                    // One buffer holds the whole view; its windows start at 0.
                    (self.gpu.segments[0].buffer.clone(), off as u64)
                }
                (_, MappingMode::Coherent) => {
                    // The view's current import covers every allocation.
                    let view = self.gpu.coherent_buffer().ok_or(LaunchError::Device(DeviceError::Unexpected(
                        "a bound range in the coherent mode before any import".into(),
                    )))?;
                    (view, off as u64)
                }
                (_, MappingMode::Software) => {
                    let (seg, at) = self.gpu.frame_location(st.frames_of.get(a as usize));
                    let (buf, seg_base) = self.gpu.segment(seg);
                    (buf.clone(), seg_base + at + (off % PAGE_SIZE) as u64)
                }
            };
            out.push(Some(Placed { buffer, offset, size: len as u64 }));
        }
        Ok(out)
    }

    /// Pages `[a, b)` sit in consecutive frames of one segment.
    pub(super) fn contiguous(&self, st: &State, a: u32, b: u32) -> bool {
        let f0 = st.frames_of.get(a as usize);
        f0 != HOST
            && (b - a) <= self.gpu.frames_left_in_segment(f0)
            && (a..b).all(|p| st.frames_of.get(p as usize) == f0 + (p - a))
    }

    /// Move the resident pages `[a, b)` into one free run of frames of one
    /// segment: device-side copies through a scratch buffer (wgpu copies
    /// never go from a buffer to itself), then the PTEs name the new frames
    /// and the old ones are freed. With no such run free, every device page
    /// the running launch does not use is evicted first.
    fn move_together(&self, st: &mut State, a: u32, b: u32) -> Result<(), LaunchError> {
        // Frames of the range may be waiting for their copies in (a launch
        // defers them): the move reads them.
        self.flush_copies(st)?;
        let gpu = &self.gpu;
        let n = b - a;
        if n > gpu.frames_per_segment {
            // (Bound ranges are at most one binding long, and a segment is
            // the largest power of two of pages one binding holds.)
            return Err(LaunchError::PoolExhausted {
                needed: n as usize,
                free: st.frames.free_count() as usize,
                total: gpu.frames_per_segment as usize,
            });
        }
        // The range's frames now (every page is resident: mapped before).
        let old: Vec<u32> = (a..b).map(|p| st.frames_of.get(p as usize)).collect();
        let start = match self.contiguous_run(st, n) {
            Some(s) => s,
            None => {
                let pinned = |p: usize| st.pinned.iter().any(|&(x, y)| (x as usize..y as usize).contains(&p));
                let others = (0..st.top as usize)
                    .filter(|&p| st.frames_of.get(p) != HOST && !pinned(p) && !Self::busy(st, p as u32))
                    .count();
                self.evict(st, others, &[])?;
                match self.contiguous_run(st, n) {
                    Some(s) => s,
                    // The range's own frames are in the way: let the run
                    // reuse them (the copies go through the scratch buffer,
                    // old frames first). Those outside the run are taken
                    // back until the copies ran.
                    None => {
                        st.frames.free_many(&old);
                        let run = self.contiguous_run(st, n);
                        let pool = st.frames.pool_mut().expect("software mode");
                        for &f in &old {
                            if run.is_none_or(|s| !(s..s + n).contains(&f)) {
                                let retaken = pool.take(f);
                                debug_assert!(retaken, "frame {f} freed just above");
                            }
                        }
                        run.ok_or(LaunchError::PoolExhausted {
                            needed: n as usize,
                            free: st.frames.free_count() as usize,
                            total: st.frames.total() as usize,
                        })?
                    }
                }
            }
        };
        let _span = tracing::debug_span!("svm_bind_compact", first_page = a, pages = n).entered();
        let bytes = u64::from(n) * PAGE_SIZE as u64;
        let scratch = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("svm bind compaction"),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc =
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm bind compaction") });
        self.for_each_frame_piece(st, a, b, |p, seg, off, k| {
            let (buf, base) = gpu.segment(seg);
            enc.copy_buffer_to_buffer(
                buf,
                base + off,
                &scratch,
                u64::from(p - a) * PAGE_SIZE as u64,
                u64::from(k) * PAGE_SIZE as u64,
            );
        });
        let (seg, off) = gpu.frame_location(start);
        let (buf, base) = gpu.segment(seg);
        enc.copy_buffer_to_buffer(&scratch, 0, buf, base + off, bytes);
        gpu.submit([enc.finish()]);
        for p in a..b {
            let f = start + (p - a);
            st.set_frame(p, f);
            let pte = st.table.get(PageIndex(p));
            let frame = FrameIndex::new(f).ok_or_else(|| DeviceError::Unexpected(format!("frame {f} out of range")))?;
            st.table.set(PageIndex(p), if pte.is_valid() { Pte::resident(frame, pte.is_writable()) } else { pte });
        }
        // The copies out of the old frames are queued behind the launches in
        // flight: the frames are free only once the launch that moved them
        // is done (the host-mapped pool is written by the CPU at once).
        // (Old frames inside the new run are the run's now.)
        st.deferred_free.extend(old.into_iter().filter(|&f| !(start..start + n).contains(&f)));
        crate::stats::Counters::add(&self.stats.bind_moves, u64::from(n));
        Ok(())
    }

    /// A free run of `n` frames inside one segment, taken.
    fn contiguous_run(&self, st: &mut State, n: u32) -> Option<u32> {
        match &mut st.frames {
            Frames::Pool(pool) => pool.alloc_contiguous(n, self.gpu.frames_per_segment),
            Frames::Sparse(_) => None,
        }
    }
}
