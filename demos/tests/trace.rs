//! The demos' Chrome/Perfetto trace (issue 17): `svm-demos vadd --trace
//! FILE` writes the runtime's spans as Trace Event JSON, and they account for
//! the managed variant's wall time.
//!
//! What the timing check compares. The demo times its managed variant as
//! `managed_ms` = the launch (`svm.launch`, migration to the device
//! included) + the read-back (`c.to_vec()`, which takes every page of `c`
//! back by CPU fault). The trace's top-level events in that window are the
//! `svm_launch` span (main thread; `svm_h2d_batch` and `svm_kernel` nest
//! in it) and the `svm_cpu_fault` spans (fault-service thread;
//! `svm_d2h_batch` nests in them). Their union, clipped to the window,
//! covers 87-100 % of `managed_ms` on lavapipe (2 vCPUs, debug build), so
//! "within 10 % of the wall time" does not hold for the spans alone, and
//! should not: while no fault is being served, the main thread runs the
//! application's own copy into a fresh `Vec` (a memcpy plus a first-touch
//! page fault per destination page), which no svm span can cover. The
//! demo measures that copy on its own (the same `to_vec` again, the pages
//! now the CPU's: no fault) and prints it; the check is that
//! spans + that copy add up to `managed_ms` within 10 % (measured: 93-106 %).
//! What is left out is the fault delivery (kernel -> service thread ->
//! wake), in the kernel, outside every span; what is counted twice is the
//! tail of a fault span that runs while the woken main thread already
//! copies. The launch alone is checked too: its span is within 10 % of the
//! demo's launch time (measured: 99-101 %).
//!
//! Why clipped, not a plain sum: a fault span can outlast the read-back.
//! `UFFDIO_CONTINUE` wakes the faulting thread, which may preempt the
//! service thread (2 vCPUs) before it leaves its span, so the span's end is
//! stamped after the main thread has finished. The plain sum is printed for
//! comparison (it reached 141 % of `managed_ms` at 100 K floats once).
//!
//! Timings on a shared 2-vCPU machine wobble: nextest runs this test alone
//! (`.config/nextest.toml`: beside the stress tests, scheduling delay no
//! span covers broke the bound in all five runs once in CI), and the timing
//! bounds must hold in one of five runs; the checks of the trace's content hold in every
//! run. Without an adapter the tests print `SKIP: no adapter` and pass,
//! unless `SVM_REQUIRE_GPU=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `svm-demos` exits with this when no adapter exists.
const EXIT_NO_ADAPTER: i32 = 77;

/// Elements of the traced vadd: large enough that the read-back is a few
/// faults of hundreds of pages, small enough for a debug build (~20 ms
/// managed on lavapipe).
const SIZE: &str = "1000000";

/// A span of the trace, from its `B`/`E` pair (times in µs).
#[derive(Debug)]
struct Span {
    name: String,
    tid: u64,
    /// Spans open on the same thread when this one began.
    depth: usize,
    start: f64,
    end: f64,
    args: Value,
}

impl Span {
    fn contains(&self, o: &Span) -> bool {
        self.tid == o.tid && self.start <= o.start && o.end <= self.end
    }
}

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}.json", std::process::id()))
}

/// Run `svm-demos` with `args` and `envs`; `None` when skipped for want of
/// an adapter, else (stdout, stderr).
fn demos(args: &[&str], envs: &[(&str, &str)]) -> Option<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_svm-demos"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("spawn svm-demos");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(EXIT_NO_ADAPTER) {
        if std::env::var("SVM_REQUIRE_GPU").as_deref() == Ok("1") {
            panic!("svm-demos {args:?}: no adapter, and SVM_REQUIRE_GPU=1:\n{stderr}");
        }
        eprintln!("SKIP: no adapter ({}); set SVM_REQUIRE_GPU=1 to make this a failure", stderr.trim());
        return None;
    }
    assert!(
        out.status.success(),
        "svm-demos {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    Some((stdout, stderr))
}

/// Parse a Trace Event file into its spans, checking that it is a JSON
/// array whose `B`/`E` events pair up per thread.
fn spans(path: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let events: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut open: std::collections::HashMap<u64, Vec<(String, f64, Value)>> = Default::default();
    let mut out = Vec::new();
    for e in &events {
        let ph = e["ph"].as_str().expect("every event has a phase");
        if ph != "B" && ph != "E" {
            continue;
        }
        let tid = e["tid"].as_u64().expect("tid");
        let ts = e["ts"].as_f64().expect("ts");
        let name = e["name"].as_str().expect("name").to_string();
        let stack = open.entry(tid).or_default();
        if ph == "B" {
            stack.push((name, ts, e["args"].clone()));
        } else {
            let (bname, start, args) = stack.pop().unwrap_or_else(|| panic!("E {name} without B on thread {tid}"));
            assert_eq!(bname, name, "B/E mismatch on thread {tid}");
            assert!(ts >= start, "{name} ends before it begins");
            out.push(Span { name, tid, depth: stack.len(), start, end: ts, args });
        }
    }
    for (tid, stack) in &open {
        assert!(stack.is_empty(), "spans left open on thread {tid}: {stack:?}");
    }
    out.sort_by(|a, b| a.start.total_cmp(&b.start));
    out
}

/// The number after `prefix` in `text` (up to the next space).
fn number_after(text: &str, prefix: &str) -> f64 {
    let at = text.find(prefix).unwrap_or_else(|| panic!("no {prefix:?} in\n{text}")) + prefix.len();
    let s = text[at..].split_whitespace().next().expect("a number");
    s.parse().unwrap_or_else(|e| panic!("{s:?} after {prefix:?}: {e}"))
}

/// Total length of the union of `[start, end)` intervals, each clipped to
/// `[lo, hi)`.
fn covered(mut iv: Vec<(f64, f64)>, lo: f64, hi: f64) -> f64 {
    iv.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut total, mut reach) = (0.0, lo);
    for (a, b) in iv {
        let (a, b) = (a.max(reach), b.min(hi));
        if b > a {
            total += b - a;
            reach = b;
        }
    }
    total
}

/// One traced run: the content checks (panic on failure), then the timing
/// figures; `Err` with the figures when a timing bound fails, `Ok(None)`
/// when skipped.
fn traced_vadd(attempt: usize) -> Result<Option<()>, String> {
    let path = tmp(&format!("vadd-{attempt}"));
    let Some((out, err)) = demos(&["vadd", "--size", SIZE, "--trace", path.to_str().expect("utf-8 path")], &[]) else {
        return Ok(None);
    };
    assert!(out.contains("[Vadd] result check: OK"), "{out}");
    assert!(err.contains("trace written to"), "{err}");
    let spans = spans(&path);
    let _ = std::fs::remove_file(&path);
    let named = |n: &'static str| spans.iter().filter(move |s| s.name == n);

    // Content: the managed launch (the demo's last one: a warm-up launch of
    // the same kernel comes first), its uploads and kernel inside it; the
    // read-back's faults after it, each with its download inside.
    let launch = named("svm_launch")
        .rfind(|s| s.args["kernel"] == "vadd bound")
        .unwrap_or_else(|| panic!("no svm_launch of \"vadd bound\" in {spans:#?}"));
    assert_eq!(launch.depth, 0, "svm_launch is top-level");
    assert!(
        named("svm_kernel").any(|k| launch.contains(k) && k.args["bound"] == "true"),
        "no svm_kernel in {launch:?}"
    );
    let h2d: Vec<&Span> = named("svm_h2d_batch").filter(|s| launch.contains(s)).collect();
    let h2d_pages: u64 = h2d.iter().map(|s| s.args["pages"].as_str().and_then(|p| p.parse().ok()).unwrap_or(0)).sum();
    // a and b (read) and c (written): 3 x 4 MB.
    assert!(h2d_pages >= 3 * 976, "svm_h2d_batch in the launch: {h2d:#?}");
    let faults: Vec<&Span> = named("svm_cpu_fault").filter(|f| f.start >= launch.end).collect();
    assert!(!faults.is_empty(), "no svm_cpu_fault after the launch");
    assert!(faults.iter().all(|f| f.tid != launch.tid && f.depth == 0), "faults are served on the service thread");
    let d2h: Vec<&Span> = named("svm_d2h_batch").filter(|d| faults.iter().any(|f| f.contains(d))).collect();
    let d2h_pages: u64 = d2h.iter().map(|s| s.args["pages"].as_str().and_then(|p| p.parse().ok()).unwrap_or(0)).sum();
    assert!(d2h_pages >= 976, "svm_d2h_batch inside the faults: {d2h:#?}");
    // Migrations name the allocation they move (the demo labels its vectors).
    let labels = |v: &[&Span]| v.iter().map(|s| s.args["label"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    let (up, down) = (labels(&h2d), labels(&d2h));
    assert!(["vadd a", "vadd b", "vadd c"].iter().all(|l| up.iter().any(|x| x == l)), "h2d labels: {up:?}");
    assert!(down.iter().all(|x| x == "vadd c"), "d2h labels (the result comes back): {down:?}");

    // Timing: what the demo measured, in µs.
    let managed = number_after(&out, "[Vadd] managed (bound access): ") * 1e3;
    let launch_t = number_after(&out, "(launch incl. migration ") * 1e3;
    let back_t = number_after(&out, "read back by CPU fault ") * 1e3;
    let copy_t = number_after(&out, "(no fault, untimed above): ") * 1e3;
    // The window: from the managed launch's start (the demo's clock starts
    // just before `launch` is called) for `managed`.
    let (lo, hi) = (launch.start, launch.start + managed);
    let top: Vec<&Span> = spans
        .iter()
        .filter(|s| s.depth == 0 && s.start >= lo && s.start < hi)
        .filter(|s| matches!(s.name.as_str(), "svm_launch" | "svm_cpu_fault" | "svm_d2h_batch"))
        .collect();
    let sum: f64 = top.iter().map(|s| s.end - s.start).sum();
    let cov = covered(top.iter().map(|s| (s.start, s.end)).collect(), lo, hi);
    let launch_span = launch.end - launch.start;
    let fault_cov = covered(top.iter().filter(|s| s.name != "svm_launch").map(|s| (s.start, s.end)).collect(), lo, hi);
    let pct = |x: f64| 100.0 * x / managed;
    let figures = format!(
        "attempt {attempt}: managed {:.2} ms (launch {:.2}, read-back {:.2}; the copy alone {:.2}); \
         svm_launch span {:.2} ms ({:.0} % of the launch), {} fault spans cover {:.2} ms of the read-back; \
         top-level spans: sum {:.0} %, union in the window {:.0} %, + the copy {:.0} % of managed",
        managed / 1e3,
        launch_t / 1e3,
        back_t / 1e3,
        copy_t / 1e3,
        launch_span / 1e3,
        100.0 * launch_span / launch_t,
        top.len() - 1,
        fault_cov / 1e3,
        pct(sum),
        pct(cov),
        pct(cov + copy_t),
    );
    eprintln!("{figures}");
    let within = |x: f64, of: f64| (0.9 * of..=1.1 * of).contains(&x);
    // The printed times have 0.1 ms steps: allow half a step.
    if !within(launch_span, launch_t) && (launch_span - launch_t).abs() > 50.0 {
        return Err(format!("the svm_launch span is not within 10 % of the launch time: {figures}"));
    }
    if !within(cov + copy_t, managed) {
        return Err(format!("spans + the copy are not within 10 % of managed_ms: {figures}"));
    }
    Ok(Some(()))
}

#[test]
fn vadd_trace_adds_up() {
    // Time the service thread waits to be scheduled is in no span: a
    // neighbouring test hogging both cores can break the bound for a while,
    // so a failed run is retried after a pause (five runs in all).
    let mut failures = Vec::new();
    for attempt in 1..=5 {
        match traced_vadd(attempt) {
            Ok(_) => return,
            Err(e) => failures.push(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(500 * attempt as u64));
    }
    panic!("the timing bounds failed in every run:\n{}", failures.join("\n"));
}

/// `SVM_TRACE=FILE` instead of `--trace`, and `RUST_LOG` for the log
/// output (the spans' context shows in debug lines of the runtime).
#[test]
fn svm_trace_env_and_rust_log() {
    let path = tmp("env");
    let p = path.to_str().expect("utf-8 path");
    let Some((_, err)) = demos(&["vadd", "--size", "10000"], &[("SVM_TRACE", p), ("RUST_LOG", "svm=debug")]) else {
        return;
    };
    let spans = spans(&path);
    let _ = std::fs::remove_file(&path);
    assert!(spans.iter().any(|s| s.name == "svm_launch"), "{spans:#?}");
    assert!(spans.iter().any(|s| s.name == "svm_cpu_fault"), "{spans:#?}");
    assert!(err.contains("svm_launch{kernel="), "RUST_LOG=svm=debug printed no span context:\n{err}");
}
