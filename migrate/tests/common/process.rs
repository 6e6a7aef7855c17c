//! Running a test body in another process, for expectations about crashes,
//! hangs and `fork`: a fresh copy of the test binary that runs only the
//! calling test ([`isolated`]), and a forked child of the current process
//! ([`fork_child`]). Both are bounded by a timeout, so a hang fails the
//! test instead of stalling the run.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in a copy of the test binary to the name of the test it runs.
const CHILD_ENV: &str = "SVM_MIGRATE_ISOLATED_TEST";

/// How long a child may take before it counts as hung.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Still running after [`CHILD_TIMEOUT`] (then killed).
    Hung,
}

/// What an [`isolated`] run did.
#[derive(Debug)]
pub struct Outcome {
    /// How it ended.
    pub end: End,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Outcome {
    /// Assert the run ended as `end` with `message` in its stderr.
    #[track_caller]
    pub fn expect(&self, end: End, message: &str) {
        assert_eq!(self.end, end, "child ended as {:?}, expected {end:?}; its stderr:\n{}", self.end, self.stderr);
        assert!(self.stderr.contains(message), "child's stderr lacks {message:?}:\n{}", self.stderr);
    }
}

/// Run `body` in a fresh copy of this test binary that runs only the test
/// `test` (which must be the caller). Returns `None` in that copy (the
/// caller then just returns), and the copy's outcome in the calling test.
/// The copy dumps no core when it crashes.
pub fn isolated(test: &str, body: impl FnOnce()) -> Option<Outcome> {
    if std::env::var(CHILD_ENV).as_deref() == Ok(test) {
        no_core_dumps();
        body();
        return None;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a copy of the test binary");
    let mut err = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let end = loop {
        if let Some(st) = child.try_wait().expect("wait for the child") {
            break match (st.code(), st.signal()) {
                (Some(c), _) => End::Exited(c),
                (None, Some(s)) => End::Signaled(s),
                (None, None) => unreachable!("a child ends by exit or signal"),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break End::Hung;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().expect("stderr reader");
    Some(Outcome { end, stderr })
}

fn no_core_dumps() {
    let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: setrlimit with a valid pointer; lowering our own limit.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
}

/// Fork; the child runs `body` and exits with the code it returns (101 if it
/// panics) without running any destructor or exit handler of the process;
/// the parent waits for it (killing it after [`CHILD_TIMEOUT`]). The child
/// shares this process's stderr.
pub fn fork_child(body: impl FnOnce() -> i32) -> End {
    // SAFETY: fork(2). The child only runs `body` (the test's own code,
    // written for a child that has just the forking thread) and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
        // SAFETY: _exit(2) ends the child without running the parent's
        // exit handlers or flushing its stdio buffers a second time.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: kill(2) and waitpid(2) on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return End::Hung;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if libc::WIFEXITED(status) {
        End::Exited(libc::WEXITSTATUS(status))
    } else {
        End::Signaled(libc::WTERMSIG(status))
    }
}
