//! The migration bench's tables (markdown, CSV) and plot.

use super::*;

#[allow(clippy::too_many_arguments, reason = "one report of everything measured")]
pub(super) fn report_md(
    o: &Opts,
    machine: &str,
    device: &str,
    b: &Baselines,
    side: &SideBySide,
    mech: &[Mechanism],
    cfgs: &[Config],
    sweeps: &[Sweep],
    total: f64,
) -> String {
    let gb = |s: f64| o.size as f64 / s * 1e-9;
    let mut m = String::new();
    let _ = writeln!(m, "### Migration benchmarks{}\n", if o.quick { " (quick run)" } else { "" });
    let _ = writeln!(m, "- command: `{}`", o.command());
    let _ = writeln!(m, "- source: {}", common::git_describe());
    let _ = writeln!(m, "- machine: {machine}");
    let _ = writeln!(m, "- runtime device: {device}");
    let _ = writeln!(m, "- baseline device: {}", b.adapter);
    let _ = writeln!(
        m,
        "- {} moved per throughput figure, medians of {} repetitions; whole run {:.0} s\n",
        size_name(o.size),
        o.reps,
        total
    );
    let _ = writeln!(m, "Explicit baselines ({}):\n", size_name(o.size));
    let _ = writeln!(m, "| copy | ms | GB/s |\n|---|---:|---:|");
    let _ = writeln!(m, "| memcpy (host → host, machine limit) | {} | {:.2} |", ms(b.memcpy_s), gb(b.memcpy_s));
    let _ = writeln!(
        m,
        "| `queue.write_buffer` + submit + wait | {} | {:.2} |",
        ms(b.write_buffer_s),
        gb(b.write_buffer_s)
    );
    let _ = writeln!(
        m,
        "| readback: copy to MAP_READ staging + map_async + memcpy out | {} | {:.2} |\n",
        ms(b.readback_s),
        gb(b.readback_s)
    );
    let _ = writeln!(
        m,
        "Migration paths side by side (issue 15: default fault policy, 64 KiB chunks + prefetch; every rep runs \
         each path and the explicit baselines in turn, medians of {}; baselines in this interleaved run: \
         write_buffer {:.2} GB/s, readback {:.2} GB/s at {}, {:.2} and {:.2} GB/s at {}; each path's ratios are \
         against the baselines at the size it moves; targets on the staged paths: h2d ≥ 0.9× write_buffer, \
         d2h ≥ 0.8× readback):\n",
        o.reps,
        gb(side.write_buffer_s),
        gb(side.readback_s),
        size_name(side.size),
        side.baseline_gbs(side.small_size).0,
        side.baseline_gbs(side.small_size).1,
        size_name(side.small_size)
    );
    let _ = writeln!(
        m,
        "| path | backend | bytes | h2d at launch GB/s | h2d / write_buffer | d2h by CPU faults GB/s | d2h / readback | faults | d2h by prefetch to host GB/s | prefetch / readback |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &side.paths {
        let (h, d) = (r.size as f64 / r.h2d_s * 1e-9, r.size as f64 / r.d2h_s * 1e-9);
        let (hr, dr) = side.ratios(r);
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.2} | {:.2}× | {:.2} | {:.2}× | {} | {:.2} | {:.2}× |",
            r.path.name(),
            r.backend,
            size_name(r.size),
            h,
            hr,
            d,
            dr,
            r.faults,
            r.size as f64 / r.prefetch_s * 1e-9,
            side.prefetch_ratio(r)
        );
    }
    let _ = writeln!(
        m,
        "\nThe sparse runtimes move a quarter of the bytes (and are compared with the baselines moving as much): \
         lavapipe maps each page of a sparse buffer on its own (one VMA a page, `vm.max_map_count` 65530). On lavapipe the \"device\" copies are CPU copies too \
         (its queue thread), so the staged path's pipelining overlaps two CPU copies.\n"
    );
    let _ = writeln!(m, "Fault chunk and prefetch configurations on the runtime's default path ({}), against the baselines above (ratios > 1 are faster than the explicit path):\n", if device.contains("Cpu") { "the host-mapped pool here" } else { "staged" });
    let _ = writeln!(
        m,
        "| backend | chunk | h2d GB/s | h2d / write_buffer | d2h GB/s | d2h / readback | d2h / memcpy | faults | µs / fault in the d2h loop | 1 fault µs, one vCPU: median / p90 | raw fault µs, one vCPU: median / p90 | fault / raw (medians) |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in cfgs {
        let _ = writeln!(
            m,
            "| {} | {} | {:.2} | {:.2}× | {:.2} | {:.2}× | {:.2}× | {} | {:.0} | {:.0} / {:.0} | {:.1} / {:.1} | {:.1}× |",
            c.backend,
            config_name(c.chunk, c.prefetch),
            gb(c.h2d_net_s()),
            b.write_buffer_s / c.h2d_net_s(),
            gb(c.d2h_s),
            b.readback_s / c.d2h_s,
            b.memcpy_s / c.d2h_s,
            c.faults,
            c.d2h_s / c.faults.max(1) as f64 * 1e6,
            c.fault.median * 1e6,
            c.fault.p90 * 1e6,
            c.raw.median * 1e6,
            c.raw.p90 * 1e6,
            c.fault.median / c.raw.median
        );
    }
    let _ = writeln!(m, "\nWhere the time goes (ms for {}, medians):\n", size_name(o.size));
    let _ = writeln!(
        m,
        "| backend | chunk | launch, pages on host | launch, pages resident | of which h2d_ns (zap + staging copy) | kernel_ns of migrating launch | d2h by faults | of which d2h_ns (copy + map + write) | per fault µs outside d2h_ns |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in cfgs {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            c.backend,
            config_name(c.chunk, c.prefetch),
            ms(c.launch_migrate_s),
            ms(c.launch_resident_s),
            ms(c.h2d_stats_s),
            ms(c.kernel_migrate_s),
            ms(c.d2h_s),
            ms(c.d2h_stats_s),
            (c.d2h_s - c.d2h_stats_s) / c.faults.max(1) as f64 * 1e6
        );
    }
    let _ = writeln!(
        m,
        "\nRaw mechanism on {} (svm_migrate::Arena, no device; zap of pages mapped in the user view):\n",
        size_name(o.size)
    );
    let _ = writeln!(
        m,
        "| backend | zap ms | restore ms | per 2 MiB span: zap µs | restore µs, the span written through the alias view since the zap |\n|---|---:|---:|---:|---:|"
    );
    for x in mech {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {:.0} | {:.0} |",
            x.backend,
            ms(x.zap_s),
            ms(x.restore_s),
            x.span_zap_s * 1e6,
            x.span_restore_s * 1e6
        );
    }
    let _ = writeln!(
        m,
        "\nLaunch overhead against arena size (working set {} read_write, pool 16 MiB, medians of {} launches):\n",
        size_name(SWEEP_SET),
        o.launches
    );
    let _ = writeln!(
        m,
        "| backend | arena | create ms | launch, resident ms | launch after CPU wrote the set ms | page-table bytes / launch | replayable launch, resident ms | evicting launch ms (pool-sized filler and the set in turn) |"
    );
    let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|");
    for s in sweeps {
        let _ = writeln!(
            m,
            "| {} | {} | {:.1} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
            s.backend,
            size_name(s.arena),
            s.create_s * 1e3,
            s.resident_s * 1e3,
            s.after_cpu_write_s * 1e3,
            s.pt_bytes,
            s.replayable_s * 1e3,
            s.evicting_s * 1e3
        );
    }
    m
}

pub(super) fn report_csv(
    o: &Opts,
    b: &Baselines,
    side: &SideBySide,
    mech: &[Mechanism],
    cfgs: &[Config],
    sweeps: &[Sweep],
) -> String {
    let mut s = String::from("section,backend,chunk_bytes,arena_bytes,metric,value,unit\n");
    let mut row = |sec: &str, be: &str, chunk: usize, arena: usize, metric: &str, v: f64, unit: &str| {
        let _ = writeln!(s, "{sec},{be},{chunk},{arena},{metric},{v},{unit}");
    };
    let bytes = o.size as f64;
    row("baseline", "", 0, 0, "memcpy", bytes / b.memcpy_s * 1e-9, "GB/s");
    row("baseline", "", 0, 0, "write_buffer", bytes / b.write_buffer_s * 1e-9, "GB/s");
    row("baseline", "", 0, 0, "readback", bytes / b.readback_s * 1e-9, "GB/s");
    row("paths", "", 0, 0, "write_buffer", bytes / side.write_buffer_s * 1e-9, "GB/s");
    row("paths", "", 0, 0, "readback", bytes / side.readback_s * 1e-9, "GB/s");
    let (swb, srb) = side.baseline_gbs(side.small_size);
    row("paths_small", "", 0, 0, "bytes", side.small_size as f64, "bytes");
    row("paths_small", "", 0, 0, "write_buffer", swb, "GB/s");
    row("paths_small", "", 0, 0, "readback", srb, "GB/s");
    for r in &side.paths {
        let sec = match r.path {
            Path::HostMapped => "path_host_mapped",
            Path::Staged => "path_staged",
            Path::Sparse => "path_sparse",
            Path::SparseHostMapped => "path_sparse_host_mapped",
        };
        let (h, d) = (r.size as f64 / r.h2d_s * 1e-9, r.size as f64 / r.d2h_s * 1e-9);
        let (hr, dr) = side.ratios(r);
        let be = r.backend.name();
        row(sec, be, 64 << 10, 0, "bytes", r.size as f64, "bytes");
        row(sec, be, 64 << 10, 0, "h2d", h, "GB/s");
        row(sec, be, 64 << 10, 0, "h2d_vs_write_buffer", hr, "ratio");
        row(sec, be, 64 << 10, 0, "d2h", d, "GB/s");
        row(sec, be, 64 << 10, 0, "d2h_vs_readback", dr, "ratio");
        row(sec, be, 64 << 10, 0, "cpu_faults", r.faults as f64, "count");
        row(sec, be, 64 << 10, 0, "d2h_prefetch", r.size as f64 / r.prefetch_s * 1e-9, "GB/s");
        row(sec, be, 64 << 10, 0, "d2h_prefetch_vs_readback", side.prefetch_ratio(r), "ratio");
    }
    for x in mech {
        row("mechanism", x.backend.name(), 0, 0, "zap", x.zap_s * 1e3, "ms");
        row("mechanism", x.backend.name(), 0, 0, "restore", x.restore_s * 1e3, "ms");
        row("mechanism", x.backend.name(), 2 << 20, 0, "span_zap", x.span_zap_s * 1e6, "us");
        row("mechanism", x.backend.name(), 2 << 20, 0, "span_restore_after_write", x.span_restore_s * 1e6, "us");
    }
    for c in cfgs {
        let be = c.backend.name();
        // Without the tree prefetcher: "config"; with it: "config_prefetch".
        let sec = if c.prefetch { "config_prefetch" } else { "config" };
        row(sec, be, c.chunk, 0, "h2d", bytes / c.h2d_net_s() * 1e-9, "GB/s");
        row(sec, be, c.chunk, 0, "h2d_vs_write_buffer", b.write_buffer_s / c.h2d_net_s(), "ratio");
        row(sec, be, c.chunk, 0, "d2h", bytes / c.d2h_s * 1e-9, "GB/s");
        row(sec, be, c.chunk, 0, "d2h_vs_readback", b.readback_s / c.d2h_s, "ratio");
        row(sec, be, c.chunk, 0, "d2h_vs_memcpy", b.memcpy_s / c.d2h_s, "ratio");
        row(sec, be, c.chunk, 0, "launch_migrate", c.launch_migrate_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "launch_resident", c.launch_resident_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "h2d_ns", c.h2d_stats_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "kernel_ns_migrate", c.kernel_migrate_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "d2h_wall", c.d2h_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "d2h_ns", c.d2h_stats_s * 1e3, "ms");
        row(sec, be, c.chunk, 0, "cpu_faults", c.faults as f64, "count");
        row(sec, be, c.chunk, 0, "fault_median", c.fault.median * 1e6, "us");
        row(sec, be, c.chunk, 0, "fault_p90", c.fault.p90 * 1e6, "us");
        row(sec, be, c.chunk, 0, "fault_mean", c.fault.mean * 1e6, "us");
        row(sec, be, c.chunk, 0, "raw_fault_median", c.raw.median * 1e6, "us");
        row(sec, be, c.chunk, 0, "raw_fault_p90", c.raw.p90 * 1e6, "us");
        row(sec, be, c.chunk, 0, "raw_fault_mean", c.raw.mean * 1e6, "us");
        row(sec, be, c.chunk, 0, "fault_vs_raw", c.fault.median / c.raw.median, "ratio");
    }
    for w in sweeps {
        let be = w.backend.name();
        row("sweep", be, 0, w.arena, "create", w.create_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "launch_resident", w.resident_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "launch_after_cpu_write", w.after_cpu_write_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "pt_upload_bytes", w.pt_bytes as f64, "bytes");
        row("sweep", be, 0, w.arena, "launch_replayable_resident", w.replayable_s * 1e3, "ms");
        row("sweep", be, 0, w.arena, "launch_evicting", w.evicting_s * 1e3, "ms");
    }
    s
}

pub(super) fn plot(
    o: &Opts,
    b: &Baselines,
    cfgs: &[Config],
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    if cfgs.is_empty() {
        return Ok(());
    }
    let gb = |s: f64| o.size as f64 / s * 1e-9;
    let labels: Vec<String> = cfgs
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                if c.backend == FaultBackendKind::Uffd { "uffd" } else { "mprot" },
                config_name(c.chunk, c.prefetch)
            )
        })
        .collect();
    let n = cfgs.len() as u32;
    let root = SVGBackend::new(path, (1950, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!(
            "svm migration, {} ({} reps, medians) — bars: runtime; lines: explicit wgpu copies",
            size_name(o.size),
            o.reps
        ),
        ("sans-serif", 18),
    )?;
    let panels = root.split_evenly((1, 3));
    let colors = |c: &Config| if c.backend == FaultBackendKind::Uffd { BLUE } else { GREEN };

    // Throughput panels: (title, runtime values, reference lines).
    let h2d: Vec<f64> = cfgs.iter().map(|c| gb(c.h2d_net_s())).collect();
    let d2h: Vec<f64> = cfgs.iter().map(|c| gb(c.d2h_s)).collect();
    let fault: Vec<f64> = cfgs.iter().map(|c| c.fault.median * 1e6).collect();
    let raw: Vec<f64> = cfgs.iter().map(|c| c.raw.median * 1e6).collect();
    type Panel<'a> = (&'a str, &'a str, &'a Vec<f64>, Vec<(String, f64, RGBColor)>);
    let panel_specs: [Panel<'_>; 3] = [
        ("host → device at launch", "GB/s", &h2d, vec![("write_buffer".into(), gb(b.write_buffer_s), RED)]),
        (
            "device → host by CPU faults",
            "GB/s",
            &d2h,
            vec![("readback".into(), gb(b.readback_s), RED), ("memcpy".into(), gb(b.memcpy_s), BLACK)],
        ),
        ("one CPU fault (one chunk), median", "µs", &fault, vec![]),
    ];
    for (i, (panel, (title, unit, vals, refs))) in panels.iter().zip(panel_specs.iter()).enumerate() {
        let mut ymax = vals.iter().copied().fold(0.0f64, f64::max);
        for r in refs {
            ymax = ymax.max(r.1);
        }
        if i == 2 {
            ymax = ymax.max(raw.iter().copied().filter(|x| x.is_finite()).fold(0.0, f64::max));
        }
        let ymax = (ymax * 1.15).max(1e-6);
        let mut chart = common::bar_axes(panel, (title, 16), &labels, unit, ymax)?;
        chart.draw_series(vals.iter().zip(cfgs).enumerate().map(|(k, (v, c))| {
            let k = k as u32;
            let mut r = Rectangle::new(
                [(SegmentValue::Exact(k), 0.0), (SegmentValue::Exact(k + 1), *v)],
                colors(c).mix(0.7).filled(),
            );
            r.set_margin(0, 0, 6, 6);
            r
        }))?;
        for (name, y, color) in refs {
            let color = *color;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(SegmentValue::Exact(0), *y), (SegmentValue::Exact(n), *y)],
                    color.stroke_width(2),
                )))?
                .label(format!("{name} {y:.2} {unit}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        if i == 2 {
            chart
                .draw_series(raw.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(k, v)| {
                    let k = k as u32;
                    PathElement::new(
                        vec![(SegmentValue::Exact(k), *v), (SegmentValue::Exact(k + 1), *v)],
                        RED.stroke_width(3),
                    )
                }))?
                .label("raw mechanism, same backend & chunk")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
