//! Mapping modes side by side (issue 6): the same c = a + b over 4 M floats
//! on a plain wgpu buffer (no translation), and through the runtime in the
//! software page-table mode, the sparse mode, and the coherent mode (the
//! three arrays advised AccessedBy, in place in host memory). Data is
//! resident before timing: this measures the kernels' access cost, not
//! migration. Also the sparse bind/unbind rate seen through the runtime.
//!
//! Launches check accesses against the launch's extents (no page-table
//! load) when the mapped pages form at most 8 of them; the "page-table path"
//! rows declare the same data as 24 ranges of alternating rights, so that
//! every access is looked up in the page table; the "replayable" rows launch
//! with `LaunchOptions::replayable()` on resident data (its first pass takes
//! the extent path and does not fault). The sparse
//! view is cut into windows of the device's largest storage binding (128
//! MiB on lavapipe): the 256 MiB arena needs two, the 128 MiB arena one.
//!
//! The "bound" rows run the plain kernel itself, unchanged, on managed
//! memory: a, b and c bound as the kernel's own storage bindings
//! (`svm::Binding`), translated and bounds-checked by the GPU, no prelude.
//!
//! Every configuration is set up first; the repetitions then go round all of
//! them in turn (one launch each per round), so that a slow spell of this
//! shared machine hits every row alike. Medians per row.
//!
//! Run: `cargo bench -p svm-benches --bench modes` (writes
//! `results/modes.md`).

mod common;

use std::time::Instant;

use common::median;
use svm::{
    Access, AccessMode, Advice, Arg, Binding, LaunchDescriptor, LaunchOptions, Location, MappingMode, Svm,
    SvmDescriptor,
};

const N: usize = 4 << 20;
const REPS: usize = 15;

const PLAIN: &str = "@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = arrayLength(&c);
    for (var i = gid.x; i < n; i += nwg.x * 256u) { c[i] = a[i] + b[i]; }
}";

/// The same loop through 64-bit managed-style pointers into one buffer
/// holding a, b and c: the prelude's pointer arithmetic (carry, base
/// subtraction, word index) with no check at all. No checked mode can be
/// faster than this: it is the floor of the translation's cost.
const UNCHECKED: &str = "@group(0) @binding(0) var<storage, read_write> abc: array<f32>;
var<private> BASE: vec2<u32>;
fn ptr_add(p: vec2<u32>, bytes: u32) -> vec2<u32> {
    let lo = p.x + bytes;
    return vec2<u32>(lo, p.y + select(0u, 1u, lo < p.x));
}
fn word(p: vec2<u32>) -> u32 {
    return (p.x - BASE.x) >> 2u;
}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // The base is a run-time value (nwg.y is 1), as the prelude's is: the
    // compiler must not fold the subtraction away.
    BASE = vec2<u32>(0x10000000u * nwg.y, 0x7f00u);
    let n = arrayLength(&abc) / 3u;
    let a = BASE;
    let b = ptr_add(BASE, n * 4u);
    let c = ptr_add(BASE, 2u * n * 4u);
    for (var i = gid.x; i < n; i += nwg.x * 256u) {
        abc[word(ptr_add(c, i * 4u))] = abc[word(ptr_add(a, i * 4u))] + abc[word(ptr_add(b, i * 4u))];
    }
}";

/// A timed configuration: one launch per call, in ms.
type Runner = Box<dyn FnMut() -> f64>;

/// `src` over plain buffers: three of N floats (`PLAIN`), or one of 3 N
/// (`UNCHECKED`).
fn plain(src: &str, one_buffer: bool) -> Option<Runner> {
    let (_a, device, queue, _info) = svm::create_wgpu_device().ok()?;
    let mk = |len: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (len * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    };
    let bufs: Vec<wgpu::Buffer> = if one_buffer { vec![mk(3 * N)] } else { vec![mk(N), mk(N), mk(N)] };
    let data: Vec<f32> = (0..N).map(|i| i as f32).collect();
    queue.write_buffer(&bufs[0], 0, bytemuck::cast_slice(&data));
    let second = if one_buffer { (0, (N * 4) as u64) } else { (1, 0) };
    queue.write_buffer(&bufs[second.0], second.1, bytemuck::cast_slice(&data));
    let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &m,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &p.get_bind_group_layout(0),
        entries: &bufs
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect::<Vec<_>>(),
    });
    let run = move || {
        let _keep = &bufs;
        let mut e = device.create_command_encoder(&Default::default());
        {
            let mut pass = e.begin_compute_pass(&Default::default());
            pass.set_pipeline(&p);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(4096, 1, 1);
        }
        let t = Instant::now();
        queue.submit([e.finish()]);
        device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
        t.elapsed().as_secs_f64() * 1e3
    };
    run(); // compile, first touch
    Some(Box::new(run))
}

#[derive(Copy, Clone)]
struct Case {
    name: &'static str,
    mode: MappingMode,
    arena: usize,
    coherent: bool,
    launch: How,
}

/// How the case launches vadd.
#[derive(Copy, Clone, PartialEq, Eq)]
enum How {
    /// One read-write declaration (one extent).
    Declared,
    /// Twenty-four declarations, a and b in alternating rights: 17 extents,
    /// more than the prelude checks, so the page-table path.
    ManyRanges,
    /// Replayable, the data resident.
    Replayable,
    /// The plain kernel with a, b, c bound (bound access, no prelude).
    Bound,
}

/// One launch per call with everything resident (checked at the end by
/// `finish`), and (sparse) the bind/unbind pages per second seen as a
/// prefetch to the device and back.
struct Managed {
    run: Runner,
    rate: Option<f64>,
    /// The results are right; the launches' statistics.
    finish: Box<dyn FnOnce() -> svm::Stats>,
}

fn managed(c: Case) -> Result<Managed, String> {
    let Case { mode, coherent, launch, .. } = c;
    let svm = Svm::with_descriptor(&SvmDescriptor::default().arena_size(c.arena).pool_size(128 << 20).mapping(mode))
        .map_err(|e| e.to_string())?;
    let k = svm
        .create_kernel(&svm::KernelDescriptor {
            label: "vadd",
            source: if launch == How::Bound { PLAIN } else { svm::shaders::kernels::VADD },
            entry_point: "main",
        })
        .map_err(|e| e.to_string())?;
    // a, b, c in one allocation (one AccessedBy range for the coherent mode).
    let mut abc = svm.alloc_vec::<f32>(3 * N).map_err(|e| e.to_string())?;
    for i in 0..2 * N {
        abc[i] = (i % N) as f32;
    }
    if coherent {
        svm.advise(abc.as_ptr().cast(), 3 * N * 4, Advice::AccessedBy).map_err(|e| e.to_string())?;
    }
    let rate = if mode == MappingMode::Sparse {
        let pages = (3 * N * 4 / 4096) as f64;
        let t = Instant::now();
        svm.prefetch(abc.as_ptr().cast(), 3 * N * 4, Location::Device).wait().map_err(|e| e.to_string())?;
        svm.prefetch(abc.as_ptr().cast(), 3 * N * 4, Location::Host).wait().map_err(|e| e.to_string())?;
        Some(2.0 * pages / t.elapsed().as_secs_f64())
    } else {
        None
    };
    let base = abc.as_ptr() as u64;
    let args =
        [Arg::Ptr(base), Arg::Ptr(base + (N * 4) as u64), Arg::Ptr(base + (2 * N * 4) as u64), Arg::U32(N as u32)];
    let svm2 = svm.clone();
    let abc = std::rc::Rc::new(std::cell::RefCell::new(abc));
    let abc2 = abc.clone();
    let run = move || {
        let mut abc = abc2.borrow_mut();
        let t = Instant::now();
        let opts = if launch == How::Replayable { LaunchOptions::replayable() } else { LaunchOptions::default() };
        let p = abc.as_mut_ptr().cast::<u8>();
        let access: Vec<Access<'_>> = if launch == How::ManyRanges {
            let piece = 3 * N * 4 / 24;
            (0..24)
                .map(|i| {
                    let mode = if i % 2 == 0 { AccessMode::Read } else { AccessMode::ReadWrite };
                    // SAFETY: no Rust reference into `abc` is used while the
                    // kernel runs (the guard is not read until after it).
                    unsafe { Access::raw(p.add(i * piece), piece, if i >= 16 { AccessMode::ReadWrite } else { mode }) }
                })
                .collect()
        } else if launch == How::Bound {
            Vec::new()
        } else {
            vec![Access::read_write(&mut *abc)]
        };
        let bindings: Vec<Binding<'_>> = if launch == How::Bound {
            // a, b and c, bound read-write like the other rows' one
            // declaration (so that they stay device-owned between launches:
            // read-only ranges would be copied in again every launch).
            // SAFETY: no Rust reference into `abc` is used while the kernel
            // runs (the guard is not read until after it).
            (0..3).map(|i| unsafe { Binding::raw(p.add(i * N * 4), N * 4, AccessMode::ReadWrite) }).collect()
        } else {
            Vec::new()
        };
        let (args, access): (&[Arg], &[Access<'_>]) = if launch == How::Bound { (&[], &[]) } else { (&args, &access) };
        let d = LaunchDescriptor { args, access, bindings: &bindings, workgroups: [4096, 1, 1] };
        svm2.launch_with(&k, &d, &opts).expect("launch");
        t.elapsed().as_secs_f64() * 1e3
    };
    if launch == How::ManyRanges {
        // Device-owned first, so that the read-only declarations map them
        // in place instead of making (and dropping) a copy every launch.
        svm.prefetch(base as *const u8, 3 * N * 4, Location::Device).wait().expect("prefetch");
    }
    run(); // migrate in (or nothing, coherent)
    let s0 = svm.stats();
    let finish = Box::new(move || {
        let abc = abc.borrow();
        assert!((0..N).step_by(4099).all(|i| abc[2 * N + i] == 2.0 * i as f32), "wrong result");
        svm.stats().since(&s0)
    });
    Ok(Managed { run: Box::new(run), rate, finish })
}

fn main() {
    let Some(plain_run) = plain(PLAIN, false) else {
        assert!(std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1"), "no adapter");
        eprintln!("SKIP: no adapter");
        return;
    };
    let floor_run = plain(UNCHECKED, true).expect("the adapter found above");
    let case = |name, mode, arena, coherent, launch| Case { name, mode, arena, coherent, launch };
    use How::{Bound, Declared, ManyRanges, Replayable};
    use MappingMode::{Coherent, Software, Sparse};
    let cases = [
        case("software page table", Software, 256 << 20, false, Declared),
        case("software page table, page-table path (24 ranges declared)", Software, 256 << 20, false, ManyRanges),
        case("software page table, replayable launch (data resident)", Software, 256 << 20, false, Replayable),
        case("sparse binding, 2 windows (256 MiB arena)", Sparse, 256 << 20, false, Declared),
        case("sparse binding, 1 window (128 MiB arena)", Sparse, 128 << 20, false, Declared),
        case("sparse binding, page-table path (24 ranges declared)", Sparse, 256 << 20, false, ManyRanges),
        case("coherent range (AccessedBy, host memory in place)", Software, 256 << 20, true, Declared),
        case("coherent mapping mode (the whole arena in place), 2 windows", Coherent, 256 << 20, false, Declared),
        case("bound: software page table", Software, 256 << 20, false, Bound),
        case("bound: sparse binding (256 MiB arena)", Sparse, 256 << 20, false, Bound),
        case("bound: coherent range (AccessedBy)", Software, 256 << 20, true, Bound),
        case("bound: coherent mapping mode", Coherent, 256 << 20, false, Bound),
    ];
    let mut rows: Vec<(String, Option<Managed>, Result<(), String>)> = vec![
        ("plain wgpu buffers (no translation)".into(), None, Ok(())),
        ("64-bit pointers into one plain buffer, no checks (floor of any checked mode)".into(), None, Ok(())),
    ];
    let mut runners: Vec<Option<Runner>> = vec![Some(plain_run), Some(floor_run)];
    for c in cases {
        match managed(c) {
            Ok(mut m) => {
                runners.push(Some(std::mem::replace(&mut m.run, Box::new(|| 0.0))));
                rows.push((c.name.into(), Some(m), Ok(())));
            }
            Err(e) => {
                runners.push(None);
                rows.push((c.name.into(), None, Err(e)));
            }
        }
    }
    // Round-robin repetitions (`--quick`: a smoke run of 3).
    let quick = common::quick();
    let reps = if quick { 3 } else { REPS };
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
    for _ in 0..reps {
        for (r, t) in runners.iter_mut().zip(&mut times) {
            if let Some(r) = r {
                t.push(r());
            }
        }
    }
    drop(runners);
    let p = median(&mut times[0].clone());
    let mut t = format!(
        "# Mapping modes: c = a + b over {} M floats, data resident, medians of {reps} (rows interleaved)\n\nCommand: `cargo bench -p svm-benches --bench modes`\n\n| mode | ms per launch | vs plain | access check | sparse bind+unbind pages/s |\n|---|---:|---:|---|---:|\n",
        N >> 20
    );
    for ((name, m, err), mut ts) in rows.into_iter().zip(times) {
        if let Err(e) = err {
            t.push_str(&format!("| {name} | unavailable: {e} | | | |\n"));
            continue;
        }
        let ms = median(&mut ts);
        let (check, rate) = match m {
            None => ("none", String::new()),
            Some(m) => {
                let st = (m.finish)();
                (
                    if st.bound_passes > 0 {
                        "bound (GPU bounds checks)"
                    } else if st.page_table_passes > 0 {
                        "page table"
                    } else {
                        "extents"
                    },
                    m.rate.map_or(String::new(), |r| format!("{r:.0}")),
                )
            }
        };
        t.push_str(&format!("| {name} | {ms:.2} | {:.2}x | {check} | {rate} |\n", ms / p));
    }
    println!("{t}");
    let dir = common::out_dir(quick);
    std::fs::create_dir_all(&dir).expect("results directory");
    let path = dir.join("modes.md");
    std::fs::write(&path, t).expect("write results");
    println!("wrote {}", path.display());
}
