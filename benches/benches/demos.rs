//! Managed memory against explicit copies for every demo with an explicit
//! variant (issue 7, "Benchmarks 5"; issue 12): vadd, saxpy, Graph500 BFS
//! (bottom-up over CPU pointers, and top-down with an atomic frontier
//! queue), CSR SpMV, the PolyBench kernels Conv2D, GEMM, ATAX and BICG, and
//! a histogram with atomics, run through [`svm_demos::Demo::run`] at the
//! demos' default sizes. The array demos, BFS-TD and the histogram use bound
//! access ([`svm_demos::AccessStyle::Bound`]): the managed and the explicit
//! variant run the same kernel source, on managed ranges and on plain wgpu
//! buffers. Each run times both variants side by side in this process, on
//! the same adapter, and checks them (managed = explicit = CPU reference);
//! a failed check panics.
//!
//! One untimed warm-up run per demo, then medians of the timed runs. The
//! program prints the demos' own output, then a markdown table, and writes
//! `results/demos.{md,svg}` (`results/quick/` with `--quick`). See
//! `benches/README.md` for what the figures include.
//!
//! ```text
//! cargo bench -p svm-benches --bench demos            # default sizes, 5 runs
//! cargo bench -p svm-benches --bench demos -- --quick # smaller sizes, 2 runs
//! ```

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{gpu_required, machine, median};
use svm::{Svm, SvmDescriptor, SvmError};
use svm_demos::{AccessStyle, Ctx, Demo, NoAdapter, Timing};

struct Opts {
    quick: bool,
    /// Timed runs per demo (after one warm-up run).
    reps: usize,
    out: PathBuf,
}

impl Opts {
    fn parse() -> Self {
        let quick =
            std::env::args().any(|a| a == "--quick") || std::env::var("SVM_BENCH_QUICK").is_ok_and(|v| v == "1");
        let root = std::env::var_os("SVM_BENCH_OUT")
            .map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../results")), PathBuf::from);
        Self { quick, reps: if quick { 2 } else { 5 }, out: if quick { root.join("quick") } else { root } }
    }

    fn command(&self) -> &'static str {
        if self.quick {
            "cargo bench -p svm-benches --bench demos -- --quick"
        } else {
            "cargo bench -p svm-benches --bench demos"
        }
    }

    /// `(size, scale)` for [`Ctx`]: the demo's defaults (`None`) in a full
    /// run, a quarter of the data in a quick one.
    fn size(&self, d: Demo) -> (Option<usize>, Option<u32>) {
        match (self.quick, d) {
            (false, _) => (None, None),
            (true, Demo::Bfs | Demo::BfsTopdown) => (None, Some(14)),
            (true, Demo::Vadd | Demo::Saxpy | Demo::Histogram) => (Some(1 << 20), None),
            (true, Demo::Spmv) => (Some(1 << 16), None),
            (true, Demo::Gemm) => (Some(256), None),
            (true, _) => (Some(1024), None),
        }
    }
}

/// Medians over the timed runs of one demo.
struct Row {
    demo: Demo,
    /// The demo's own note, up to its first `;` (sizes).
    size: String,
    managed_ms: f64,
    explicit_ms: f64,
    /// Medians of each phase, where the demo reports them.
    split: Option<Timing>,
    cpu_faults: f64,
    h2d_mib: f64,
    d2h_mib: f64,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.managed_ms / self.explicit_ms
    }
}

/// One warm-up run and `o.reps` timed runs of `d`; `Err` when a run fails
/// (a failed result check included).
fn measure(ctx: &mut Ctx, o: &Opts, d: Demo) -> anyhow::Result<Row> {
    (ctx.size, ctx.scale) = o.size(d);
    let mut runs = Vec::new();
    for rep in 0..=o.reps {
        let before = ctx.svm.stats();
        let out = d.run(ctx)?;
        let s = ctx.svm.stats().since(&before);
        eprintln!(
            "[{}] {}: managed {:.1} ms, explicit {:.1} ms",
            d.label(),
            if rep == 0 { "warm-up".to_string() } else { format!("run {rep}/{}", o.reps) },
            out.managed_ms.unwrap_or(f64::NAN),
            out.explicit_ms.unwrap_or(f64::NAN)
        );
        if rep > 0 {
            runs.push((out, s));
        }
    }
    let med =
        |f: &dyn Fn(&(svm_demos::Outcome, svm::Stats)) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
    let mib = |pages: u64| (pages * 4096) as f64 / (1 << 20) as f64;
    let split = runs.iter().all(|(out, _)| out.explicit_split.is_some()).then(|| {
        let phase = |p: fn(&Timing) -> f64| med(&|(out, _)| out.explicit_split.as_ref().map_or(f64::NAN, p));
        Timing {
            upload_ms: phase(|t| t.upload_ms),
            kernel_ms: phase(|t| t.kernel_ms),
            download_ms: phase(|t| t.download_ms),
        }
    });
    Ok(Row {
        demo: d,
        size: runs[0].0.note.split(';').next().unwrap_or_default().to_string(),
        managed_ms: med(&|(out, _)| out.managed_ms.expect("the demos with an explicit variant time both")),
        explicit_ms: med(&|(out, _)| out.explicit_ms.expect("the demos with an explicit variant time both")),
        split,
        cpu_faults: med(&|(_, s)| s.cpu_faults as f64),
        h2d_mib: med(&|(_, s)| mib(s.h2d_pages)),
        d2h_mib: med(&|(_, s)| mib(s.d2h_pages)),
    })
}

fn main() {
    let o = Opts::parse();
    let started = Instant::now();
    let svm = match Svm::with_descriptor(&SvmDescriptor::default()) {
        Ok(s) => s,
        Err(SvmError::NoAdapter(m)) if !gpu_required() => {
            println!("SKIP: the demos benchmark needs a GPU adapter: {m}");
            return;
        }
        Err(e) => panic!("svm runtime: {e}"),
    };
    let runtime = format!(
        "{}; fault backend {}, fault chunk {} KiB, mapping {:?}, arena {} MiB, pool {} MiB",
        svm.device_info(),
        svm.fault_backend(),
        svm.fault_chunk() >> 10,
        svm.mapping_mode(),
        svm.arena_size() >> 20,
        (svm.pool_pages() as usize * 4096) >> 20
    );
    let machine = machine();
    eprintln!("machine: {machine}\nruntime: {runtime}\nruns per demo: 1 warm-up + {}", o.reps);
    let mut ctx = Ctx::new(svm, None, None, true).with_access(AccessStyle::Bound);
    let mut rows = Vec::new();
    for d in Demo::WITH_EXPLICIT {
        match measure(&mut ctx, &o, d) {
            Ok(r) => rows.push(r),
            Err(e) if e.chain().any(|c| c.downcast_ref::<NoAdapter>().is_some()) && !gpu_required() => {
                println!("SKIP: no adapter for the explicit-copy device: {e:#}");
                return;
            }
            Err(e) => panic!("{}: {e:#}", d.label()),
        }
    }
    let explicit = ctx.explicit().expect("created by the first demo").info.clone();
    let total = started.elapsed().as_secs_f64();

    let md = report_md(&o, &machine, &runtime, &explicit, &rows, total);
    println!("\n{md}");
    std::fs::create_dir_all(&o.out).expect("create results dir");
    std::fs::write(o.out.join("demos.md"), &md).expect("write demos.md");
    if let Err(e) = plot(&o, &rows, &o.out.join("demos.svg")) {
        eprintln!("plot failed: {e}");
    }
    eprintln!("wrote {}/demos.{{md,svg}} in {total:.0} s", o.out.display());
}

fn report_md(o: &Opts, machine: &str, runtime: &str, explicit: &str, rows: &[Row], total: f64) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "### Demos: managed memory vs explicit copies{}\n", if o.quick { " (quick run)" } else { "" });
    let _ = writeln!(m, "- command: `{}`", o.command());
    let _ = writeln!(m, "- source: {}", common::git_describe());
    let _ = writeln!(m, "- machine: {machine}");
    let _ = writeln!(m, "- runtime device: {runtime}");
    let _ = writeln!(m, "- explicit-copy device: {explicit} (own wgpu device, same adapter)");
    let _ = writeln!(
        m,
        "- {}; 1 warm-up run + medians of {} runs per demo, every run checked (managed = explicit = CPU reference); whole run {total:.0} s",
        if o.quick { "sizes reduced (quick run)" } else { "the demos' default sizes" },
        o.reps
    );
    let _ = writeln!(
        m,
        "- access: bound (vadd, saxpy, SpMV, PolyBench, BFS-TD, histogram: one kernel source for both variants); BFS: pointer access (CPU pointers) vs its CSR twin\n"
    );
    let _ = writeln!(
        m,
        "| demo | size | managed ms | explicit ms | explicit upload / kernel / download ms | managed / explicit | migrated in / out MiB | CPU faults |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let split = r.split.map_or_else(
            || "(interleaved)".to_string(),
            |t| format!("{:.1} / {:.1} / {:.1}", t.upload_ms, t.kernel_ms, t.download_ms),
        );
        let _ = writeln!(
            m,
            "| {} | {} | {:.1} | {:.1} | {split} | {:.2}× | {:.0} / {:.0} | {:.0} |",
            r.demo.label(),
            r.size,
            r.managed_ms,
            r.explicit_ms,
            r.ratio(),
            r.h2d_mib,
            r.d2h_mib,
            r.cpu_faults
        );
    }
    let _ = writeln!(
        m,
        "\nmanaged: launches, migration in at launch included, and reading the results back by CPU faults, \
         on data the CPU wrote into managed memory. explicit: `queue.write_buffer` of the inputs, dispatch \
         and wait, copy to a MAP_READ buffer and map. Neither includes building the data, compiling the \
         kernels (one warm-up dispatch each) or the CPU reference. Ratios > 1: managed is slower. The phase \
         medians need not add up to the median total. BFS: sum over its 4 roots of one level-synchronous \
         traversal each (a launch or dispatch per level, then one `changed` word read back); BFS-TD: the \
         same with top-down levels (one launch or dispatch per level, then the next queue's count read \
         back). For both, the explicit time leaves out the one-time upload of the CSR graph, the managed \
         time includes the graph's migration in the first launch. Histogram: the managed time includes \
         the CPU zeroing the 256 bins."
    );
    m
}

/// One bar per demo: managed time over explicit time, with the explicit
/// path as the line at 1.
fn plot(o: &Opts, rows: &[Row], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len() as u32;
    let ymax = rows.iter().map(Row::ratio).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (1300, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!("svm demos: managed time / explicit-copy time (medians of {}, lower is better)", o.reps);
    let labels: Vec<String> = rows.iter().map(|r| r.demo.label().into()).collect();
    let mut chart = common::bar_axes(&root, (&caption, 18), &labels, "managed / explicit", ymax)?;
    chart.draw_series(rows.iter().enumerate().map(|(k, r)| {
        let k = k as u32;
        let mut bar = Rectangle::new(
            [(SegmentValue::Exact(k), 0.0), (SegmentValue::Exact(k + 1), r.ratio())],
            BLUE.mix(0.7).filled(),
        );
        bar.set_margin(0, 0, 15, 15);
        bar
    }))?;
    let above = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(rows.iter().enumerate().map(|(k, r)| {
        Text::new(
            format!("{:.2}× ({:.0} / {:.0} ms)", r.ratio(), r.managed_ms, r.explicit_ms),
            (SegmentValue::CenterOf(k as u32), r.ratio()),
            above.clone(),
        )
    }))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(SegmentValue::Exact(0), 1.0), (SegmentValue::Exact(n), 1.0)],
            RED.stroke_width(2),
        )))?
        .label("explicit copies (plain wgpu buffers) = 1")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
