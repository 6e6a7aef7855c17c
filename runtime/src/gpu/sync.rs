//! Submitting to the device's queue and waiting for it: the poll lock,
//! device loss, buffer maps and readbacks (`Gpu`'s methods that talk to the
//! queue; the device's construction and pool are `gpu.rs`'s).

use std::sync::Arc;

use parking_lot::Mutex;

use super::{Gpu, LOG_READ_WORDS};
use crate::error::DeviceError;

impl Gpu {
    /// Submit `cmds` on the device's queue, under [`Self::poll_lock`]
    /// (wgpu-core's submit ends with a poll of its own, which must not race
    /// another thread's poll: the completion thread's on a plain device,
    /// `wait`'s) and, with the raw device, its queue lock
    /// (`RawDevice::submit_exclusive`: sparse binds are raw calls on the
    /// same queue, from other threads). Every submission goes through here
    /// or through `submit_pass`'s `RawDevice::submit_signalled`, taken the
    /// same way.
    ///
    /// The runtime's own commands: an error wgpu raises for them (an
    /// invalid command buffer of the runtime's) marks the device lost, as
    /// nothing the runtime expects of them will have happened.
    pub fn submit(&self, cmds: impl IntoIterator<Item = wgpu::CommandBuffer>) -> wgpu::SubmissionIndex {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let index = self.submit_unscoped(cmds);
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.fail(format!("the device refused the runtime's commands: {e}"));
        }
        index
    }

    /// [`Self::submit`] for the application's commands
    /// (`Svm::submit_commands`): their errors are the application's (its
    /// error scopes, or the device's uncaptured-error handler).
    pub fn submit_unscoped(&self, cmds: impl IntoIterator<Item = wgpu::CommandBuffer>) -> wgpu::SubmissionIndex {
        let _polling = self.poll_lock.lock();
        match &self.raw {
            Some(raw) => raw.submit_exclusive(|| self.queue.submit(cmds)),
            None => self.queue.submit(cmds),
        }
    }

    /// The device can no longer be used correctly (`why`): every later
    /// operation fails with [`DeviceError::Lost`] (the first reason kept),
    /// as this one.
    pub fn fail(&self, why: String) -> DeviceError {
        let mut lost = self.lost.lock();
        DeviceError::Lost(lost.get_or_insert(why).clone())
    }

    pub fn check_lost(&self) -> Result<(), DeviceError> {
        match &*self.lost.lock() {
            Some(m) => Err(DeviceError::Lost(m.clone())),
            None => Ok(()),
        }
    }

    /// Submit and wait for everything queued so far.
    pub fn wait(&self) -> Result<(), DeviceError> {
        let _polling = self.poll_lock.lock();
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| {
            let m = e.to_string();
            *self.lost.lock() = Some(m.clone());
            if let Some(raw) = &self.raw {
                raw.mark_lost();
            }
            DeviceError::Lost(m)
        })?;
        self.check_lost()
    }

    /// Wait for submission `sub` (everything submitted, with `None`) and
    /// run the callbacks it makes ready (staging maps).
    pub fn wait_submission(&self, sub: Option<wgpu::SubmissionIndex>) -> Result<(), DeviceError> {
        let Some(sub) = sub else { return self.wait() };
        // In slices, the poll lock released between them: a submission
        // waits behind a running kernel on a one-queue device, and other
        // threads must submit meanwhile (every submission takes the lock).
        loop {
            let polled = {
                let _polling = self.poll_lock.lock();
                let slice = Some(std::time::Duration::from_millis(2));
                self.device.poll(wgpu::PollType::Wait { submission_index: Some(sub.clone()), timeout: slice })
            };
            match polled {
                Ok(_) => return self.check_lost(),
                Err(wgpu::PollError::Timeout) => self.check_lost()?,
                Err(_) => return self.wait(),
            }
        }
    }

    /// After the work a map callback waits for is complete: poll until
    /// `fired()` (the callback runs in some thread's poll: ours, or the
    /// completion thread's, which may be running it right now). Gives up
    /// after 10 s (the caller reports the map as not completed).
    pub fn settle_callback(&self, fired: impl Fn() -> bool) -> Result<(), DeviceError> {
        let t0 = std::time::Instant::now();
        while !fired() && t0.elapsed() < std::time::Duration::from_secs(10) {
            {
                let _polling = self.poll_lock.lock();
                self.device.poll(wgpu::PollType::Poll).map_err(|e| DeviceError::Lost(e.to_string()))?;
            }
            if !fired() {
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    /// Map `slice` once the work using its buffer is done: submission
    /// `after` (everything submitted, with `None`).
    fn map(
        &self,
        slice: &wgpu::BufferSlice<'_>,
        mode: wgpu::MapMode,
        after: Option<&wgpu::SubmissionIndex>,
    ) -> Result<(), DeviceError> {
        let status = Arc::new(Mutex::new(None));
        let s2 = status.clone();
        slice.map_async(mode, move |r| *s2.lock() = Some(r));
        self.wait_submission(after.cloned())?;
        self.settle_callback(|| status.lock().is_some())?;
        let r = status.lock().take();
        match r {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(DeviceError::Unexpected(format!("map_async: {e}"))),
            None => Err(DeviceError::Unexpected("map_async did not complete".into())),
        }
    }

    /// Map `[offset, offset + len)` of a MAP_READ buffer and hand it to `f`.
    pub fn read_mapped_range<R>(
        &self,
        buf: &wgpu::Buffer,
        offset: u64,
        len: u64,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, DeviceError> {
        self.read_view(buf, offset, len, None, f)
    }

    /// Map `[offset, offset + len)` of a MAP_READ buffer after submission
    /// `after` and hand it to `f`.
    fn read_view<R>(
        &self,
        buf: &wgpu::Buffer,
        offset: u64,
        len: u64,
        after: Option<&wgpu::SubmissionIndex>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, DeviceError> {
        let slice = buf.slice(offset..offset + len);
        self.map(&slice, wgpu::MapMode::Read, after)?;
        let r = {
            let view =
                slice.get_mapped_range().map_err(|e| DeviceError::Unexpected(format!("get_mapped_range: {e}")))?;
            f(&view)
        };
        buf.unmap();
        Ok(r)
    }

    /// Map `[offset, offset + len)` of a MAP_WRITE buffer and let `f` fill it
    /// (a write-only view: `view.slice(range).copy_from_slice(src)`).
    pub fn write_mapped_range<R>(
        &self,
        buf: &wgpu::Buffer,
        offset: u64,
        len: u64,
        f: impl FnOnce(&mut wgpu::BufferViewMut) -> R,
    ) -> Result<R, DeviceError> {
        let slice = buf.slice(offset..offset + len);
        self.map(&slice, wgpu::MapMode::Write, None)?;
        let r = {
            let mut view = slice
                .get_mapped_range_mut()
                .map_err(|e| DeviceError::Unexpected(format!("get_mapped_range_mut: {e}")))?;
            f(&mut view)
        };
        buf.unmap();
        Ok(r)
    }

    /// A buffer to read one pass's launch log back into (from the free
    /// list, or new); give it back with [`Self::give_log_readback`].
    pub fn take_log_readback(&self) -> wgpu::Buffer {
        self.log_readbacks.lock().pop().unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("svm launch log readback"),
                size: LOG_READ_WORDS * 4,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Return a read-back buffer (unmapped) to the free list.
    pub fn give_log_readback(&self, buf: wgpu::Buffer) {
        self.log_readbacks.lock().push(buf);
    }

    /// Map a MAP_READ buffer whose last use is submission `sub` (already
    /// complete, or waited for here: nothing later is) and hand its first
    /// `len` bytes to `f`.
    pub fn read_after<R>(
        &self,
        buf: &wgpu::Buffer,
        len: u64,
        sub: &wgpu::SubmissionIndex,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, DeviceError> {
        self.read_view(buf, 0, len, Some(sub), f)
    }
}
