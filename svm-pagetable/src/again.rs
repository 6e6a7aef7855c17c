//! The wake-up owed to a caller answered [`crate::Again`].
//!
//! A non-blockable caller (a CPU-fault service that must not sleep on one
//! fault while others queue behind it) finds its page held by other work —
//! a launch in flight — and gives up for now. Whoever releases the page
//! must then wake it, exactly when it gave up: a release that happens while
//! the caller is deciding must either be seen by the decision or wake the
//! caller after it, never neither (a lost wake-up leaves the faulting thread
//! blocked for good). The [`AgainGate`] makes the two one critical section
//! each: the caller checks `ready` and registers under the gate; the
//! releaser, *after* its change, takes the registration under the gate.
//! Whichever comes second sees the other (`loom_tests`).

use crate::loom::Mutex;

/// See the module documentation.
#[derive(Debug)]
pub struct AgainGate {
    /// A caller was answered `Again` since the last release.
    waiting: Mutex<bool>,
}

impl Default for AgainGate {
    fn default() -> Self {
        Self::new()
    }
}

impl AgainGate {
    pub fn new() -> Self {
        Self { waiting: Mutex::new(false) }
    }

    /// Whether `ready()` holds, evaluated under the gate; when it does not,
    /// the caller is registered: the next [`Self::released`] says so.
    pub fn ready_or_register(&self, ready: impl FnOnce() -> bool) -> bool {
        let mut waiting = self.waiting.lock();
        if ready() {
            return true;
        }
        *waiting = true;
        false
    }

    /// Call after every change that can make a caller's `ready` true (the
    /// change made, and visible, before this call): whether some caller was
    /// answered `Again` since the last call — then wake it (them).
    pub fn released(&self) -> bool {
        std::mem::take(&mut *self.waiting.lock())
    }
}
