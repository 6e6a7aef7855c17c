//! Submitting passes, and the completion thread that waits for them.
//!
//! A pass goes to the GPU at once when no pass sent before is still
//! running there; otherwise it joins the *open batch*, which is submitted as
//! one submission as soon as the passes sent before have finished (by the
//! completion thread, which sees them finish first), or at once when it
//! holds [`MAX_BATCH`] passes or a pass that must not wait (a synchronous
//! replayable or timed launch). Launches queued faster than the GPU runs
//! them thus cost one submission per batch, and the launching thread does
//! not wait for the device to take its submission (lavapipe's
//! `vkQueueSubmit` returns only once the submission before it has run).
//!
//! Order is kept: passes are appended in encoding order (under
//! `Inner::launch_order`), a batch goes after everything sent before it,
//! and each pass carries its page-table leaves and arguments in its own
//! command buffer (`pass.rs`: copies from a buffer of its own), since a
//! write through the queue lands before the whole submission it precedes.
//! Nothing else the runtime submits depends on a batched pass: whatever
//! would read or change a page a flight uses waits for the flight to be
//! *done*, which the completion thread reports only after submitting it and
//! seeing it finish. [`Svm::submit_commands`] sends the open batch first, so
//! that an application's commands stay behind the launches made before.
//!
//! Lock order: `Batches` is taken after the launch order and the update
//! lock are released (or by the completion thread, holding nothing) and
//! before `Gpu::poll_lock` and the raw device's queue lock, which its
//! submissions take; it is held while a batch is submitted, so that
//! batches reach the queue in order.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;

use parking_lot::Condvar;

use super::flight::Signals;
use super::*;

/// Passes in one batch at most.
pub(super) const MAX_BATCH: usize = 32;

/// Passes on their way to the GPU.
#[derive(Default)]
struct Batches {
    /// Submitted and not yet marked done by the completion thread, in
    /// submission order.
    sent: VecDeque<Arc<FlightShared>>,
    /// Waiting for `sent` to drain, with their command buffers in order.
    /// Never non-empty while `sent` is empty (a pass that finds nothing
    /// sent goes at once; the thread that empties `sent` sends the batch).
    open: Vec<Arc<FlightShared>>,
    cmds: Vec<wgpu::CommandBuffer>,
    /// The completion thread found the device lost: nothing more is sent.
    lost: Option<String>,
    /// The runtime is going away: the completion thread ends once `sent`
    /// is empty.
    stop: bool,
}

/// What the launching threads and the completion thread share.
struct Submitter {
    batches: Mutex<Batches>,
    /// Wakes the completion thread when something is sent or it must stop.
    cv: Condvar,
    queue: wgpu::Queue,
    /// For the error scope around each submission.
    device: wgpu::Device,
    /// `Gpu::lost`: set when the device refuses a pass.
    lost: Arc<Mutex<Option<String>>>,
    raw: Option<Arc<crate::vk::RawDevice>>,
    poll_lock: Arc<Mutex<()>>,
    signals: Arc<Signals>,
    stats: Arc<Counters>,
}

/// Submits passes (at once or batched) and runs the thread that waits for
/// submissions in order and marks them done.
pub(crate) struct Completer {
    shared: Arc<Submitter>,
    give_up: Arc<std::sync::atomic::AtomicBool>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Submitter {
    /// Submit the open batch as one submission. On failure (or a lost
    /// device) its passes are returned, none sent, with the reason.
    fn send_open(&self, b: &mut Batches) -> Result<(), (Vec<Arc<FlightShared>>, String)> {
        let flights = std::mem::take(&mut b.open);
        let cmds = std::mem::take(&mut b.cmds);
        if flights.is_empty() {
            return Ok(());
        }
        if let Some(m) = &b.lost {
            return Err((flights, m.clone()));
        }
        let (sent, refused) = {
            let _polling = self.poll_lock.lock();
            // (The device's uncaptured-error handler leaves the runtime's
            // own errors to it: a refused pass is a lost device.)
            let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let sent = match &self.raw {
                // With the raw device the submission signals the timeline:
                // the completion thread waits for it there (no
                // `Device::poll`), and confirms with the work-done callback
                // registered right after the submission (it fires once it,
                // and whatever came before it, is done), both under the
                // timeline's mutex, which keeps sparse binds off the queue
                // (the registration may submit pending writes).
                Some(raw) => {
                    let done = Arc::new(AtomicBool::new(false));
                    let d = done.clone();
                    raw.submit_signalled(|| {
                        let index = self.queue.submit(cmds);
                        self.queue.on_submitted_work_done(move || d.store(true, Ordering::Release));
                        index
                    })
                    .map(|(i, p)| (i, Some((p, done))))
                }
                None => Ok((self.queue.submit(cmds), None)),
            };
            (sent, pollster::block_on(scope.pop()))
        };
        if let Some(e) = refused {
            let why = format!("the device refused a pass: {e}");
            self.lost.lock().get_or_insert_with(|| why.clone());
            return Err((flights, why));
        }
        let (index, point) = match sent {
            Ok(x) => x,
            Err(e) => return Err((flights, format!("submitting a pass: {e}"))),
        };
        Counters::add(&self.stats.pass_submissions, 1);
        for f in &flights {
            let _ = f.index.set(index.clone());
            if let Some((p, done)) = &point {
                let _ = f.point.set(*p);
                let _ = f.work_done.set(done.clone());
            }
        }
        b.sent.extend(flights);
        self.cv.notify_all();
        Ok(())
    }

    /// Passes that will never run (a failed submission, a lost device):
    /// marked done with `why` as their loss; their owners retire them.
    fn fail(&self, flights: Vec<Arc<FlightShared>>, why: &str) {
        for f in flights {
            *f.lost.lock() = Some(why.to_string());
            self.signals.mark_done(&f);
        }
    }
}

impl Completer {
    pub(super) fn start(gpu: &Gpu, signals: Arc<Signals>, stats: Arc<Counters>) -> Result<Self, SvmError> {
        let shared = Arc::new(Submitter {
            batches: Mutex::new(Batches::default()),
            cv: Condvar::new(),
            queue: gpu.queue.clone(),
            device: gpu.device.clone(),
            lost: gpu.lost.clone(),
            raw: gpu.raw.clone(),
            poll_lock: gpu.poll_lock.clone(),
            signals,
            stats,
        });
        let give_up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, stop) = (shared.clone(), give_up.clone());
        let device = gpu.device.clone();
        let device_lost = gpu.lost.clone();
        let handle = std::thread::Builder::new()
            .name("svm-completion".into())
            .spawn(move || complete(&s, &device, &device_lost, &stop))
            .map_err(|e| SvmError::Config(format!("spawning the completion thread: {e}")))?;
        Ok(Self { shared, give_up, handle: Mutex::new(Some(handle)) })
    }

    /// Send the open batch now (the application's commands must follow the
    /// launches made before them).
    pub(super) fn flush(&self) {
        let mut b = self.shared.batches.lock();
        let failed = self.shared.send_open(&mut b);
        drop(b);
        if let Err((flights, why)) = failed {
            self.shared.fail(flights, &why);
        }
    }

    /// Stop after the passes sent or batched so far: wait for them, or with
    /// `give_up` (a lost device) mark them done at once.
    pub(super) fn stop(&self, give_up: bool) {
        self.give_up.store(give_up, Ordering::Release);
        let unsent = {
            let mut b = self.shared.batches.lock();
            b.stop = true;
            self.shared.cv.notify_all();
            if give_up {
                b.cmds.clear();
                std::mem::take(&mut b.open)
            } else {
                Vec::new()
            }
        };
        self.shared.fail(unsent, "the runtime was dropped after a device loss");
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

/// The completion thread: wait for each sent pass in order (in slices, so
/// that a runtime dropped after a device loss can stop it), mark it done,
/// and send the open batch once nothing sent is left.
fn complete(
    s: &Submitter,
    device: &wgpu::Device,
    device_lost: &Mutex<Option<String>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut lost: Option<String> = None;
    let slice = std::time::Duration::from_millis(100);
    loop {
        let f = {
            let mut b = s.batches.lock();
            loop {
                if let Some(f) = b.sent.front() {
                    break f.clone();
                }
                if b.stop {
                    // (`open` is empty whenever `sent` is.)
                    return;
                }
                s.cv.wait(&mut b);
            }
        };
        // The timeline reached the pass's point: most likely it is done.
        let mut hinted = false;
        // Non-blocking polls made since (wgpu's fence may be signalled a
        // little after the timeline: yield first, then sleep).
        let mut polls = 0u32;
        while lost.is_none() {
            let done = match (&s.raw, f.point.get().copied()) {
                // The timeline: a host wait, no `Device::poll`. Only a hint:
                // its signal was staged on the queue before the submission,
                // and an application submitting on the same queue from
                // another thread (a shared device, `Svm::queue`) in between
                // takes it with its own, earlier, work. Confirmed below.
                (Some(raw), Some(point)) if !hinted => match raw.wait_for(point, slice) {
                    Ok(reached) => {
                        hinted = reached;
                        // (Not done yet; a loss or a stop is looked at first.)
                        Ok(false)
                    }
                    Err(e) => Err(e.to_string()),
                },
                // The pass's own submission, by wgpu's fence (which no one
                // else signals): its work-done callback, fired by a
                // non-blocking poll at once when the hint was right; after a
                // stolen signal, polled again in short sleeps. (Not a poll
                // waiting for the submission's index: wgpu-core asserts in
                // one when another thread — the application's, on a shared
                // device — polls beside it.)
                (Some(_), Some(_)) => {
                    let confirmed = || f.work_done.get().is_some_and(|d| d.load(Ordering::Acquire));
                    if confirmed() {
                        Ok(true)
                    } else {
                        let polled = {
                            let _polling = s.poll_lock.lock();
                            device.poll(wgpu::PollType::Poll)
                        };
                        match polled {
                            Ok(_) if confirmed() => Ok(true),
                            Ok(_) => {
                                polls += 1;
                                if polls < 200 {
                                    std::thread::yield_now();
                                } else {
                                    // (A stolen signal: the pass may run
                                    // long yet. 100 µs doubling to 1.6 ms.)
                                    let us = 100u64 << ((polls - 200) / 8).min(4);
                                    std::thread::sleep(std::time::Duration::from_micros(us));
                                }
                                Ok(false)
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                }
                // A plain wgpu device: short polls under the poll lock (see
                // `Gpu::poll_lock`).
                _ => {
                    let _polling = s.poll_lock.lock();
                    let wait = wgpu::PollType::Wait {
                        submission_index: f.index.get().cloned(),
                        timeout: Some(std::time::Duration::from_millis(2)),
                    };
                    match device.poll(wait) {
                        Ok(_) => Ok(true),
                        Err(wgpu::PollError::Timeout) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            match done {
                Ok(true) => break,
                // (A submission wgpu refused is not sent: `send_open`'s
                // error scope marked the device lost.)
                Ok(false) if s.raw.as_ref().is_some_and(|r| r.is_lost()) || device_lost.lock().is_some() => {
                    lost = Some(device_lost.lock().clone().unwrap_or_else(|| "the device was lost".into()));
                }
                Ok(false) if stop.load(Ordering::Acquire) => {
                    lost = Some("the runtime was dropped after a device loss".into());
                }
                Ok(false) => {}
                Err(e) => lost = Some(format!("waiting for a launch: {e}")),
            }
        }
        if let Some(m) = &lost {
            *f.lost.lock() = Some(m.clone());
        }
        s.signals.mark_done(&f);
        let failed = {
            let mut b = s.batches.lock();
            b.sent.pop_front();
            if b.lost.is_none() {
                b.lost.clone_from(&lost);
            }
            if b.sent.is_empty() {
                s.send_open(&mut b)
            } else {
                Ok(())
            }
        };
        if let Err((flights, why)) = failed {
            s.fail(flights, &why);
        }
    }
}

impl Inner {
    /// Submit a tracked pass's command buffers (with the update lock
    /// released; under `launch_order`): at once, or in the open batch (see
    /// the module's docs). `now`: never wait in a batch (the open batch goes
    /// with it). On failure the pass was not sent (its owner abandons it).
    pub(super) fn submit_pass(
        &self,
        f: &Arc<FlightShared>,
        cmds: Vec<wgpu::CommandBuffer>,
        now: bool,
    ) -> Result<(), LaunchError> {
        let s = &self.completer.shared;
        let mut b = s.batches.lock();
        if let Some(m) = &b.lost {
            return Err(DeviceError::Lost(m.clone()).into());
        }
        let batched = !b.sent.is_empty();
        b.open.push(f.clone());
        b.cmds.extend(cmds);
        if batched && !now && b.open.len() < MAX_BATCH {
            Counters::add(&self.stats.batched_passes, 1);
            return Ok(());
        }
        let failed = s.send_open(&mut b);
        drop(b);
        match failed {
            Ok(()) => Ok(()),
            Err((mut flights, why)) => {
                // This pass is its owner's to abandon; the others batched
                // with it never run.
                flights.retain(|x| !Arc::ptr_eq(x, f));
                s.fail(flights, &why);
                Err(DeviceError::Unexpected(why).into())
            }
        }
    }
}
