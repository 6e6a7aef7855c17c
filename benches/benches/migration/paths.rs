//! The migration paths side by side: one runtime per path and backend,
//! interleaved with the explicit baselines at each path's size.

use super::*;

/// A migration path of the side-by-side figures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Path {
    /// The pool in host-mapped memory (unified-memory adapters).
    HostMapped,
    /// The pool in memory the CPU does not map: staged copies.
    Staged,
    /// Sparse mapping mode (staged copies into a sparse buffer).
    Sparse,
    /// Sparse mapping mode on unified memory: the blocks host-mapped, CPU
    /// copies.
    SparseHostMapped,
}

pub(super) const PATHS: [Path; 4] = [Path::HostMapped, Path::Staged, Path::Sparse, Path::SparseHostMapped];

impl Path {
    pub(super) fn name(self) -> &'static str {
        match self {
            Path::HostMapped => "host-mapped pool",
            Path::Staged => "staged",
            Path::Sparse => "sparse (staged)",
            Path::SparseHostMapped => "sparse (host-mapped blocks)",
        }
    }
    /// Bytes moved per figure: lavapipe maps every page of a sparse buffer
    /// on its own (one VMA a page, `vm.max_map_count` 65530 in all), so the
    /// sparse runtimes get a quarter of the size.
    pub(super) fn size(self, o: &Opts) -> usize {
        if matches!(self, Path::Sparse | Path::SparseHostMapped) {
            o.size / 4
        } else {
            o.size
        }
    }
    pub(super) fn descriptor(self, o: &Opts, backend: FaultBackendKind) -> SvmDescriptor {
        let size = self.size(o);
        let d = SvmDescriptor::default()
            .arena_size(size + 16 * MIB)
            .pool_size((size + 8 * MIB) as u64)
            .fault_backend(backend);
        match self {
            Path::HostMapped => d.mapping(MappingMode::Software),
            Path::Staged => d.mapping(MappingMode::Software).host_mapped_pool(false),
            Path::Sparse => d.mapping(MappingMode::Sparse).host_mapped_pool(false),
            Path::SparseHostMapped => d.mapping(MappingMode::Sparse),
        }
    }
}

/// One (path, backend) runtime and its samples, seconds.
pub(super) struct PathRun {
    pub(super) path: Path,
    pub(super) backend: FaultBackendKind,
    pub(super) size: usize,
    pub(super) svm: Svm,
    pub(super) k: Kernel,
    pub(super) h2d: Vec<f64>,
    pub(super) d2h: Vec<f64>,
    /// Device → host by `prefetch(Location::Host)`, s.
    pub(super) pf: Vec<f64>,
    pub(super) faults: u64,
}

pub(super) struct PathResult {
    pub(super) path: Path,
    pub(super) backend: FaultBackendKind,
    pub(super) size: usize,
    pub(super) h2d_s: f64,
    pub(super) d2h_s: f64,
    pub(super) prefetch_s: f64,
    pub(super) faults: u64,
}

/// One round of a path: migrate `size` bytes in at launch (net of a launch
/// with the pages resident), then back by CPU faults (one read a page, in
/// order). Returns (h2d, d2h) seconds.
pub(super) fn path_round(r: &mut PathRun, rep: usize) -> (f64, f64) {
    let svm = &r.svm;
    let pages = r.size / PAGE;
    let mut v = svm.alloc_vec::<u8>(r.size).expect("alloc");
    v.fill(0x5a);
    let s0 = svm.stats();
    let t = Instant::now();
    launch_touch(svm, &r.k, &mut v, 7);
    let migrate = secs(t.elapsed());
    assert_eq!(svm.stats().since(&s0).h2d_pages as usize, pages, "every page migrates at launch");
    let tag = 0x100 + rep as u32;
    let t = Instant::now();
    launch_touch(svm, &r.k, &mut v, tag);
    let resident = secs(t.elapsed());
    let s2 = svm.stats();
    let t = Instant::now();
    let mut bad = 0usize;
    for p in 0..pages {
        bad += usize::from(v[p * PAGE] != ((p as u32) ^ tag) as u8);
    }
    let d2h = secs(t.elapsed());
    assert_eq!(bad, 0, "CPU read stale data after migration");
    let d = svm.stats().since(&s2);
    assert_eq!(d.d2h_pages as usize, pages, "every page comes back");
    r.faults = d.cpu_faults;
    // Back again, by one prefetch to the host (spans pipelined, no faults).
    launch_touch(svm, &r.k, &mut v, tag + 1);
    let t = Instant::now();
    let moved = v.prefetch(Location::Host).wait().expect("prefetch to host");
    r.pf.push(secs(t.elapsed()));
    assert_eq!(moved as usize, pages, "every page comes back by prefetch");
    assert!((0..pages).all(|p| v[p * PAGE] == ((p as u32) ^ (tag + 1)) as u8), "prefetched data");
    ((migrate - resident).max(1e-9), d2h)
}

/// The paths side by side, rep by rep interleaved with the explicit
/// baselines (so that machine noise hits all of them alike). Returns the
/// results and the baselines' medians (write_buffer, readback) at `o.size`.
pub(super) fn paths_side_by_side(o: &Opts) -> SideBySide {
    let mut runs = Vec::new();
    for path in PATHS {
        for backend in BACKENDS {
            let desc = path.descriptor(o, backend);
            let svm = match Svm::with_descriptor(&desc) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("SKIP path {} / {backend}: {e}", path.name());
                    continue;
                }
            };
            let k = svm
                .create_kernel(&KernelDescriptor { label: "touch_pages", source: TOUCH_PAGES, entry_point: "main" })
                .expect("kernel");
            runs.push(PathRun {
                path,
                backend,
                size: path.size(o),
                svm,
                k,
                h2d: vec![],
                d2h: vec![],
                pf: vec![],
                faults: 0,
            });
        }
    }
    let g = PlainGpu::new().expect("a plain wgpu device on the same adapter");
    use wgpu::BufferUsages as U;
    let src: Vec<u8> = (0..o.size).map(|i| (i >> 12) as u8).collect();
    let mut dst = vec![0u8; o.size];
    let buf = g.buffer("baseline", o.size, U::STORAGE | U::COPY_DST | U::COPY_SRC);
    let staging = g.buffer("baseline staging", o.size, U::MAP_READ | U::COPY_DST);
    g.upload(&buf, &src);
    g.readback(&buf, &staging, &mut dst);
    // One warm-up round each, not counted.
    for r in &mut runs {
        path_round(r, 0);
    }
    // The baselines at each size a path moves (a transfer's speed depends
    // on its size: the sparse paths move a quarter).
    let small = Path::Sparse.size(o);
    let (mut wb, mut rb, mut swb, mut srb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..o.reps {
        wb.push(secs(g.upload(&buf, &src)));
        rb.push(secs(g.readback(&buf, &staging, &mut dst)));
        swb.push(secs(g.upload(&buf, &src[..small])));
        srb.push(secs(g.readback(&buf, &staging, &mut dst[..small])));
        for r in &mut runs {
            let (h, d) = path_round(r, rep + 1);
            r.h2d.push(h);
            r.d2h.push(d);
        }
    }
    assert!(dst == src, "baseline readback returned wrong bytes");
    let results = runs
        .into_iter()
        .map(|mut r| PathResult {
            path: r.path,
            backend: r.backend,
            size: r.size,
            h2d_s: median(&mut r.h2d),
            d2h_s: median(&mut r.d2h),
            prefetch_s: median(&mut r.pf),
            faults: r.faults,
        })
        .collect();
    SideBySide {
        paths: results,
        size: o.size,
        write_buffer_s: median(&mut wb),
        readback_s: median(&mut rb),
        small_size: small,
        small_write_buffer_s: median(&mut swb),
        small_readback_s: median(&mut srb),
    }
}

/// The side-by-side figures and the baselines measured with them, at the
/// full size and at the sparse paths' size.
pub(super) struct SideBySide {
    pub(super) paths: Vec<PathResult>,
    pub(super) size: usize,
    pub(super) write_buffer_s: f64,
    pub(super) readback_s: f64,
    pub(super) small_size: usize,
    pub(super) small_write_buffer_s: f64,
    pub(super) small_readback_s: f64,
}

impl SideBySide {
    /// The baselines' (write_buffer, readback) GB/s for transfers of
    /// `bytes` (one of the two sizes measured).
    pub(super) fn baseline_gbs(&self, bytes: usize) -> (f64, f64) {
        if bytes == self.small_size {
            (bytes as f64 / self.small_write_buffer_s * 1e-9, bytes as f64 / self.small_readback_s * 1e-9)
        } else {
            assert_eq!(bytes, self.size, "a baseline measured at the path's size");
            (bytes as f64 / self.write_buffer_s * 1e-9, bytes as f64 / self.readback_s * 1e-9)
        }
    }

    /// `(h2d / write_buffer, d2h / readback)` of a path, against the
    /// baselines at its size.
    pub(super) fn ratios(&self, r: &PathResult) -> (f64, f64) {
        let (wb, rb) = self.baseline_gbs(r.size);
        ((r.size as f64 / r.h2d_s * 1e-9) / wb, (r.size as f64 / r.d2h_s * 1e-9) / rb)
    }

    /// d2h by prefetch to the host / readback, against the baseline at its size.
    pub(super) fn prefetch_ratio(&self, r: &PathResult) -> f64 {
        (r.size as f64 / r.prefetch_s * 1e-9) / self.baseline_gbs(r.size).1
    }
}
