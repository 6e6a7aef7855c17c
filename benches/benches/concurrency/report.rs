//! The result tables (Markdown).

use super::*;

/// The launch-queue sections' figures for one runtime (uffd backend).
pub(super) struct QueueRow {
    pub(super) backend: FaultBackendKind,
    pub(super) host_mapped: bool,
    pub(super) threads: ThreadsRow,
    pub(super) small: SmallRow,
}

/// Where device pages live.
pub(super) fn pool_name(mode: MappingMode, host_mapped: bool) -> &'static str {
    match (mode, host_mapped) {
        (MappingMode::Coherent, _) => "arena in place",
        (MappingMode::Sparse, true) => "sparse buffer",
        (MappingMode::Sparse, false) => "sparse buffer, staged copies",
        (_, true) => "host-mapped",
        (_, false) => "staged",
    }
}

/// ms with a precision fit for µs and for seconds.
pub(super) fn ms(x: f64) -> String {
    if x < 0.1 {
        format!("{x:.4}")
    } else if x < 10.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

/// `during / idle`.
pub(super) fn ratio(idle: f64, during: f64) -> String {
    let r = during / idle.max(1e-9);
    if r >= 100.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

pub(super) fn table(rows: &[Result<OpsRow, String>], names: &[(Path, FaultBackendKind)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | kernel ms | kernel left at op start ms | fault idle ms | fault during ms | fault ratio | fault during, another thread's fault waiting for the kernel ms (ended before it) | alloc + free during, another thread's fault on other data copying back ms (ended before it) | alloc + free during, another thread's launch on new data behind the kernel ms (ended before it) | alloc + free during another thread's application pass (with_bindings) ms (ended before it) | d2h KiB per fault | alloc idle ms | alloc during ms | alloc ratio | free idle ms | free during ms | free ratio |"
    );
    let _ = writeln!(
        t,
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (r, (path, backend)) in rows.iter().zip(names) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | {backend} | unavailable: {e} |||||||||||||||||", path.name);
                continue;
            }
        };
        let med = |v: &[f64]| median(&mut v.to_vec());
        let pool = pool_name(r.path.mode, r.host_mapped);
        let (fi, fd, fr, kib) = match &r.fault {
            Some(f) => {
                let (i, d) = (med(&f.idle), med(&f.during));
                let kib: Vec<f64> = r.faults.iter().map(|&(_, p)| p as f64 * 4.0).collect();
                (ms(i), ms(d), ratio(i, d), format!("{:.0}", med(&kib)))
            }
            None => ("no faults".into(), "no faults".into(), String::new(), String::new()),
        };
        let behind = if r.behind.is_empty() {
            "no faults".to_string()
        } else {
            format!("{} ({} of {})", ms(med(&r.behind)), r.behind_early, r.behind.len())
        };
        let beside = if r.beside_copy.is_empty() {
            "no faults".to_string()
        } else {
            format!("{} ({} of {})", ms(med(&r.beside_copy)), r.beside_copy_early, r.beside_copy.len())
        };
        let beside_launch =
            format!("{} ({} of {})", ms(med(&r.beside_launch)), r.beside_launch_early, r.beside_launch.len());
        let beside_app = format!("{} ({} of {})", ms(med(&r.beside_app)), r.beside_app_early, r.beside_app.len());
        let (ai, ad) = (med(&r.alloc.idle), med(&r.alloc.during));
        let (xi, xd) = (med(&r.free.idle), med(&r.free.during));
        let _ = writeln!(
            t,
            "| {} | {} | {pool} | {} | {} | {fi} | {fd} | {fr} | {behind} | {beside} | {beside_launch} | {beside_app} | {kib} | {} | {} | {} | {} | {} | {} |",
            r.path.name,
            r.backend,
            ms(med(&r.kernel_ms)),
            ms(med(&r.left_ms)),
            ms(ai),
            ms(ad),
            ratio(ai, ad),
            ms(xi),
            ms(xd),
            ratio(xi, xd),
        );
    }
    t
}

pub(super) fn med(v: &[f64]) -> f64 {
    median(&mut v.to_vec())
}

/// `a / b` as a factor.
pub(super) fn times(a: f64, b: f64) -> String {
    format!("{:.2}×", a / b.max(1e-9))
}

/// The two-queue table, one row per mapping mode.
pub(super) fn threads_table(rows: &[(Path, Result<QueueRow, String>)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | launches (2 × N) | one thread ms | one thread launches/s | two threads ms | two threads launches/s | two threads / one thread | ms per launch, one thread | ms per launch, queued floor | queued floor launches/s |"
    );
    let _ = writeln!(t, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (path, r) in rows {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | uffd | unavailable: {e} |||||||||||", path.name);
                continue;
            }
        };
        let th = &r.threads;
        let launches = 2 * th.per_thread;
        let (one, two, floor) = (med(&th.one), med(&th.two), med(&th.floor));
        let rate = |ms_total: f64| format!("{:.0}", launches as f64 / (ms_total / 1e3));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {launches} | {} | {} | {} | {} | {} | {} | {} | {} |",
            path.name,
            r.backend,
            pool_name(path.mode, r.host_mapped),
            ms(one),
            rate(one),
            ms(two),
            rate(two),
            times(one, two),
            ms(one / launches as f64),
            ms(floor / launches as f64),
            rate(floor),
        );
    }
    t
}

/// The dependent-chain table.
pub(super) fn chain_table(rows: &[(Path, Result<QueueRow, String>)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | launches (M) | sync ms per launch | queued: submit ms per launch | queued ms per launch | saved ms per launch | sync / queued | queued: in flight after the last submit | queued: submissions | sync: submitted → retired ms per launch (Stats) | pages moved sync / queued |"
    );
    let _ = writeln!(t, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (path, r) in rows {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | uffd | unavailable: {e} |||||||||||", path.name);
                continue;
            }
        };
        let s = &r.small;
        let m = s.chain as f64;
        let (sync, queued) = (med(&s.chain_sync) / m, med(&s.chain_queued) / m);
        let moved_sync = s.chain_moved.iter().map(|p| p.0).max().unwrap_or(0);
        let moved_queued = s.chain_moved.iter().map(|p| p.1).max().unwrap_or(0);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {moved_sync} / {moved_queued} |",
            path.name,
            r.backend,
            pool_name(path.mode, r.host_mapped),
            s.chain,
            ms(sync),
            ms(med(&s.chain_submit) / m),
            ms(queued),
            ms(sync - queued),
            times(sync, queued),
            med(&s.chain_in_flight),
            med(&s.chain_submissions),
            ms(med(&s.chain_sync_kernel) / m),
        );
    }
    t
}

/// The BFS table.
pub(super) fn bfs_table(rows: &[(Path, Result<QueueRow, String>)]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| mode | backend | pool | levels (K) | sync ms | sync + flag ms | queued ms (submit) | ms per level: sync / + flag / queued | saved per level vs sync | saved per level vs sync + flag | sync / queued | sync + flag / queued | queued: in flight after the last submit | queued: submissions | pages moved per level, + flag | plain wgpu: a submission a level / one submission, ms | queued / plain (a submission a level) |"
    );
    let _ = writeln!(t, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (path, r) in rows {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(t, "| {} | uffd | unavailable: {e} |||||||||||||||||", path.name);
                continue;
            }
        };
        let s = &r.small;
        let (plain, plain_one) = (med(&s.bfs_plain_levels), med(&s.bfs_plain_one));
        let k = s.levels as f64;
        let (sync, flag, queued) = (med(&s.bfs_sync), med(&s.bfs_flag), med(&s.bfs_queued));
        let moved: Vec<f64> = s.bfs_flag_moved.iter().map(|&p| p as f64 / k).collect();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} / {} / {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {} / {} | {} |",
            path.name,
            r.backend,
            pool_name(path.mode, r.host_mapped),
            s.levels,
            ms(sync),
            ms(flag),
            ms(queued),
            ms(med(&s.bfs_submit)),
            ms(sync / k),
            ms(flag / k),
            ms(queued / k),
            ms((sync - queued) / k),
            ms((flag - queued) / k),
            times(sync, queued),
            times(flag, queued),
            med(&s.bfs_in_flight),
            med(&s.bfs_submissions),
            med(&moved),
            ms(plain),
            ms(plain_one),
            times(queued, plain),
        );
    }
    t
}
