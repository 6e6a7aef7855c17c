//! Pipelined staged copies between the host copy and a device pool that the
//! CPU cannot map (discrete GPUs; `host_mapped_pool(false)`; sparse mode).
//!
//! ```text
//!  host → device (upload ring, MAP_WRITE | COPY_SRC, mapped while idle)
//!
//!   CPU:  memcpy c0→s0 | memcpy c1→s1 | memcpy c2→s2 | memcpy c3→s3 | wait s0, memcpy c4→s0 ...
//!   GPU:               | copy s0→pool | copy s1→pool | copy s2→pool | copy s3→pool ...
//!
//!  device → host (download ring, MAP_READ | COPY_DST)
//!
//!   GPU:  copy pool→s0 | copy pool→s1 | copy pool→s2 | ...
//!   CPU:               | wait s0, memcpy s0→host | wait s1, memcpy ... (overlaps the next copies)
//! ```
//!
//! Every chunk of a transfer is its own submission, and every staging
//! buffer is (re)mapped with `map_async` right after the submission that
//! uses it: the map completes when that copy has, so the CPU waits on a
//! slot only when it needs it again, while the copies of the other slots
//! run. Uploads go through a ring of [`UP_SLOTS`] slots of [`UP_CHUNK`]
//! bytes; downloads take slots of [`DOWN_CHUNK`] bytes from a free list,
//! enough for two spans in flight at once: the one being served and the
//! next one of a sequential CPU-fault stream, read ahead (the residency
//! policy decides what to read ahead and when the bytes are still valid;
//! this module only moves them).
//!
//! Downloads run under the runtime's update lock, except a CPU fault's,
//! which takes slots of the fault service's own and is waited for with the
//! lock released (its pages claimed); uploads run under it or,
//! for a launch's or prefetch's claimed pages, after it is released (a
//! prefetch's may then meet a launch's: each ring's mutex serialises them).
//! Submissions go through `Gpu::submit`, which orders them against sparse
//! binds on the one queue.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::DeviceError;
use crate::gpu::Gpu;

/// Bytes of one upload slot.
pub(crate) const UP_CHUNK: u64 = 2 << 20;
/// Upload slots: copies in flight while the CPU fills the next slot.
pub(crate) const UP_SLOTS: usize = 4;
/// Bytes of one download slot: one submission and one map per 2 MiB span
/// (`cargo bench -p svm-benches --bench migration`, against 512 KiB slots, four submissions a span: staged d2h
/// 0.45-0.48x -> 0.54x of an explicit readback at 256 MiB, sparse 0.50-0.52x
/// -> 0.59x; the read-ahead of the next span still overlaps the CPU's copy
/// out of this one).
pub(crate) const DOWN_CHUNK: u64 = 2 << 20;

/// Map state of a slot, set by the `map_async` callback.
const PENDING: u8 = 0;
const MAPPED: u8 = 1;
/// Not mapped and no map pending (also where a failed map ends).
const IDLE: u8 = 2;

struct Slot {
    buf: wgpu::Buffer,
    /// The current map request's state; a fresh flag per request, so a
    /// late callback of an aborted one changes nothing.
    flag: Arc<AtomicU8>,
    /// The submission that last used the slot, while its map is pending.
    sub: Option<wgpu::SubmissionIndex>,
}

impl Slot {
    fn new(device: &wgpu::Device, label: &str, size: u64, usage: wgpu::BufferUsages, mapped: bool) -> Self {
        let buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: mapped,
        });
        Self { buf, flag: Arc::new(AtomicU8::new(if mapped { MAPPED } else { IDLE })), sub: None }
    }

    /// Ask for the slot's first `len` bytes to be mapped once `sub` (which
    /// used the slot) completes.
    fn map_after(&mut self, mode: wgpu::MapMode, len: u64, sub: wgpu::SubmissionIndex) {
        let flag = Arc::new(AtomicU8::new(PENDING));
        let f2 = flag.clone();
        self.buf.map_async(mode, ..len, move |r| f2.store(if r.is_ok() { MAPPED } else { IDLE }, Ordering::Release));
        self.flag = flag;
        self.sub = Some(sub);
    }

    /// Wait until the pending map request completes.
    fn wait_mapped(&mut self, gpu: &Gpu) -> Result<(), DeviceError> {
        // The callback runs inside a poll once the submission is done; one
        // poll waiting for it normally suffices.
        for _ in 0..1000 {
            match self.flag.load(Ordering::Acquire) {
                MAPPED => {
                    self.sub = None;
                    return Ok(());
                }
                IDLE => {
                    self.sub = None;
                    gpu.check_lost()?;
                    return Err(DeviceError::Unexpected(
                        "map_async of a staging buffer failed (or none pending)".into(),
                    ));
                }
                _ => {
                    gpu.wait_submission(self.sub.clone())?;
                    gpu.settle_callback(|| self.flag.load(Ordering::Acquire) != PENDING)?;
                }
            }
        }
        Err(DeviceError::Unexpected("map_async of a staging buffer did not complete".into()))
    }
}

struct UpRing {
    slots: Vec<Slot>,
    next: usize,
}

struct DownRing {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

/// One download slot's share of a transfer: `(offset in the slot, host
/// byte offset, bytes)` per piece.
struct DownChunk {
    slot: usize,
    used: u64,
    pieces: Vec<(u64, usize, u64)>,
}

/// A device → host transfer in flight: its copies are submitted and its
/// slots' maps requested. Hand it to [`Staging::finish`] (to read the
/// bytes) or [`Staging::discard`]; dropping it leaks its slots.
#[must_use = "a download holds staging slots until finished or discarded"]
pub(crate) struct Download {
    chunks: Vec<DownChunk>,
    /// In the fault service's own slots.
    fault: bool,
}

/// Pages `[first, end)` of a sequential CPU-fault stream copied ahead of
/// the fault that will want them, with what made the copy valid: the
/// launch epoch and each page's frame then ([`u32::MAX`] where the page was
/// not device-owned). The residency policy checks both before using it.
pub(crate) struct Readahead {
    pub first: u32,
    pub end: u32,
    pub epoch: u32,
    pub frames: Vec<u32>,
    pub download: Download,
}

/// The staging buffers of one runtime (empty when the pool is host-mapped
/// or nothing migrates).
pub(crate) struct Staging {
    up: Mutex<UpRing>,
    down: Mutex<DownRing>,
    /// One span of download slots of the CPU-fault service's own: a
    /// fault's copy back is waited for with the update lock released
    /// (`residency::to_host`), while other paths download through `down`
    /// under the lock; one fault at a time (one service thread an arena).
    fault_down: Mutex<DownRing>,
    readahead: Mutex<Option<Readahead>>,
}

impl Staging {
    /// Rings for spans of up to `span_bytes` (two spans in flight one way).
    /// With `enabled` false no buffer is created.
    pub fn new(device: &wgpu::Device, enabled: bool, span_bytes: u64) -> Self {
        use wgpu::BufferUsages as U;
        let (up, down): (Vec<Slot>, Vec<u64>) = if enabled {
            let up = (0..UP_SLOTS)
                .map(|_| Slot::new(device, "svm h2d staging", UP_CHUNK, U::MAP_WRITE | U::COPY_SRC, true))
                .collect();
            (up, (0..3).map(|_| span_bytes.div_ceil(DOWN_CHUNK)).collect::<Vec<_>>())
        } else {
            (Vec::new(), vec![0; 3])
        };
        let ring = |spans: &[u64]| {
            let n: u64 = spans.iter().sum();
            let slots: Vec<Slot> = (0..n)
                .map(|_| Slot::new(device, "svm d2h staging", DOWN_CHUNK, U::MAP_READ | U::COPY_DST, false))
                .collect();
            let free = (0..slots.len()).rev().collect();
            Mutex::new(DownRing { slots, free })
        };
        Self {
            up: Mutex::new(UpRing { slots: up, next: 0 }),
            down: ring(&down[..2]),
            fault_down: ring(&down[2..]),
            readahead: Mutex::new(None),
        }
    }

    /// Copy `src` to `dst` at `dst_offset`, one submission per
    /// [`UP_CHUNK`]; returns when the last chunk is *submitted* (later
    /// submissions, e.g. the launch's kernel, run after the copies).
    /// Returns the number of copies.
    pub fn upload(&self, gpu: &Gpu, dst: &wgpu::Buffer, dst_offset: u64, src: &[u8]) -> Result<u64, DeviceError> {
        let mut ring = self.up.lock();
        let ring = &mut *ring;
        assert!(!ring.slots.is_empty(), "staged upload without staging buffers (host-mapped pool)");
        let mut copies = 0;
        for (i, chunk) in src.chunks(UP_CHUNK as usize).enumerate() {
            let k = ring.next;
            ring.next = (k + 1) % ring.slots.len();
            let slot = &mut ring.slots[k];
            slot.wait_mapped(gpu)?;
            let len = chunk.len() as u64;
            {
                let mut view = slot
                    .buf
                    .get_mapped_range_mut(..len)
                    .map_err(|e| DeviceError::Unexpected(format!("get_mapped_range_mut: {e}")))?;
                view.copy_from_slice(chunk);
            }
            slot.buf.unmap();
            let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm h2d") });
            enc.copy_buffer_to_buffer(&slot.buf, 0, dst, dst_offset + i as u64 * UP_CHUNK, len);
            let sub = gpu.submit([enc.finish()]);
            slot.map_after(wgpu::MapMode::Write, UP_CHUNK, sub);
            copies += 1;
        }
        Ok(copies)
    }

    /// Start copying `pieces` — `(source buffer, source offset, host byte
    /// offset, bytes)`, at most one span in all — into download slots.
    pub fn download(&self, gpu: &Gpu, pieces: &[(&wgpu::Buffer, u64, usize, u64)]) -> Result<Download, DeviceError> {
        self.download_in(gpu, pieces, false)
    }

    /// [`Staging::download`] into the fault service's own slots (one span),
    /// to be finished with the update lock released.
    pub fn download_for_fault(
        &self,
        gpu: &Gpu,
        pieces: &[(&wgpu::Buffer, u64, usize, u64)],
    ) -> Result<Download, DeviceError> {
        self.download_in(gpu, pieces, true)
    }

    fn ring(&self, fault: bool) -> &Mutex<DownRing> {
        if fault {
            &self.fault_down
        } else {
            &self.down
        }
    }

    fn download_in(
        &self,
        gpu: &Gpu,
        pieces: &[(&wgpu::Buffer, u64, usize, u64)],
        fault: bool,
    ) -> Result<Download, DeviceError> {
        let mut ring = self.ring(fault).lock();
        let ring = &mut *ring;
        let mut chunks: Vec<DownChunk> = Vec::new();
        let mut enc: Option<wgpu::CommandEncoder> = None;
        let flush = |ring: &mut DownRing, enc: &mut Option<wgpu::CommandEncoder>, c: Option<&DownChunk>| {
            if let (Some(e), Some(c)) = (enc.take(), c) {
                let sub = gpu.submit([e.finish()]);
                ring.slots[c.slot].map_after(wgpu::MapMode::Read, c.used, sub);
            }
        };
        for &(buf, mut src, mut host, mut len) in pieces {
            while len > 0 {
                if chunks.last().is_none_or(|c| c.used == DOWN_CHUNK) {
                    flush(ring, &mut enc, chunks.last());
                    let Some(slot) = ring.free.pop() else {
                        // Unreachable by construction (two spans of slots);
                        // give back what this transfer took.
                        drop(enc);
                        self.release(ring, Download { chunks, fault });
                        return Err(DeviceError::Unexpected("d2h staging ring exhausted".into()));
                    };
                    chunks.push(DownChunk { slot, used: 0, pieces: Vec::new() });
                    enc = Some(
                        gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("svm d2h") }),
                    );
                }
                let c = chunks.last_mut().expect("a chunk was just ensured");
                let n = len.min(DOWN_CHUNK - c.used);
                let e = enc.as_mut().expect("an encoder per chunk");
                e.copy_buffer_to_buffer(buf, src, &ring.slots[c.slot].buf, c.used, n);
                c.pieces.push((c.used, host, n));
                c.used += n;
                src += n;
                host += n as usize;
                len -= n;
            }
        }
        flush(ring, &mut enc, chunks.last());
        Ok(Download { chunks, fault })
    }

    /// Wait for a download chunk by chunk and hand each piece to `f(host
    /// byte offset, bytes)` while the later chunks are still copying.
    pub fn finish(&self, gpu: &Gpu, d: Download, mut f: impl FnMut(usize, &[u8])) -> Result<(), DeviceError> {
        let fault = d.fault;
        let mut ring = self.ring(fault).lock();
        let ring = &mut *ring;
        let mut chunks = d.chunks.into_iter();
        while let Some(c) = chunks.next() {
            let slot = &mut ring.slots[c.slot];
            let read = slot.wait_mapped(gpu).and_then(|()| {
                let view = slot
                    .buf
                    .get_mapped_range(..c.used)
                    .map_err(|e| DeviceError::Unexpected(format!("get_mapped_range: {e}")))?;
                for &(at, host, n) in &c.pieces {
                    f(host, &view[at as usize..(at + n) as usize]);
                }
                Ok(())
            });
            if slot.flag.load(Ordering::Acquire) != IDLE {
                slot.buf.unmap();
            }
            slot.flag = Arc::new(AtomicU8::new(IDLE));
            ring.free.push(c.slot);
            if let Err(e) = read {
                self.release(ring, Download { chunks: chunks.collect(), fault });
                return Err(e);
            }
        }
        Ok(())
    }

    /// The read-ahead in flight, if any (taken: give it back with
    /// [`Staging::set_readahead`] or consume / discard its download).
    pub fn take_readahead(&self) -> Option<Readahead> {
        self.readahead.lock().take()
    }

    /// Keep `r` in flight until the next migration back (one at a time: a
    /// previous one is discarded).
    pub fn set_readahead(&self, r: Readahead) {
        if let Some(old) = self.readahead.lock().replace(r) {
            self.discard(old.download);
        }
    }

    /// Give a download's slots back without reading it (a pending map is
    /// aborted; a copy still running into a slot is ordered before any
    /// later use of it on the queue).
    pub fn discard(&self, d: Download) {
        let mut ring = self.ring(d.fault).lock();
        self.release(&mut ring, d);
    }

    fn release(&self, ring: &mut DownRing, d: Download) {
        for c in d.chunks {
            let slot = &mut ring.slots[c.slot];
            // Waiting or mapped: unmap (aborting a pending map). Idle (a
            // failed map ends there): unmap would be a validation error.
            if slot.flag.load(Ordering::Acquire) != IDLE {
                slot.buf.unmap();
            }
            slot.sub = None;
            slot.flag = Arc::new(AtomicU8::new(IDLE));
            ring.free.push(c.slot);
        }
    }
}
