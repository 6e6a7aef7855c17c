//! An existing wgpu program adopts managed memory: the runtime on the
//! application's own device, and a managed range in the application's own
//! pipeline and pass (`Svm::with_bindings`).

use svm::wgpu;
use svm::{Binding, MappingMode, SharedDevice, Svm};

use crate::{small, BACKENDS};

const SHADER: &str = "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&v)) { v[g.x] = v[g.x] * 3u + 1u; }
}";

/// The application's pipeline, built once on its device.
fn pipeline(device: &wgpu::Device) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("app"),
        source: wgpu::ShaderSource::Wgsl(SHADER.into()),
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("app"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// The application's pass over `data` (any buffer binding).
fn run(device: &wgpu::Device, queue: &wgpu::Queue, p: &wgpu::ComputePipeline, data: wgpu::BufferBinding<'_>, n: u32) {
    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("app"),
        layout: &p.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(data) }],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(p);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(n.div_ceil(64), 1, 1);
    }
    queue.submit([enc.finish()]);
}

/// The plain program: its own buffer, uploaded and read back explicitly.
fn plain(device: &wgpu::Device, queue: &wgpu::Queue, p: &wgpu::ComputePipeline, input: &[u32]) -> Vec<u32> {
    let bytes = (input.len() * 4) as u64;
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buf, 0, bytemuck::cast_slice(input));
    run(device, queue, p, buf.as_entire_buffer_binding(), input.len() as u32);
    let mut enc = device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&buf, 0, &read, 0, bytes);
    queue.submit([enc.finish()]);
    read.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
    let out = bytemuck::cast_slice(&read.slice(..).get_mapped_range().expect("mapped")).to_vec();
    out
}

/// One application pass over `v` (`x * 3 + 1`) inside `with_bindings`.
fn pass_in_scope(svm: &Svm, p: &wgpu::ComputePipeline, v: &mut svm::ManagedVec<u32>) -> Result<(), svm::LaunchError> {
    let n = v.len() as u32;
    svm.with_bindings(&[Binding::read_write(v)], |b| run(svm.device(), svm.queue(), p, b[0].clone(), n))
}

fn adopt(svm: &Svm, p: &wgpu::ComputePipeline, input: &[u32]) -> Vec<u32> {
    // The changed lines: the data in managed memory, the pass inside
    // `with_bindings`, the results read by dereference.
    let mut v = svm.alloc_from_slice(input).expect("alloc");
    svm.with_bindings(&[Binding::read_write(&mut v)], |b| {
        run(svm.device(), svm.queue(), p, b[0].clone(), input.len() as u32)
    })
    .expect("with_bindings");
    v.to_vec()
}

/// The application's own plain wgpu device, or `None` (skip) when there is
/// none and the GPU is not required.
fn plain_device() -> Option<(wgpu::Adapter, wgpu::Device, wgpu::Queue)> {
    match svm::create_wgpu_device() {
        Ok((adapter, device, queue, _)) => Some((adapter, device, queue)),
        Err(e) => {
            assert!(std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1"), "{e}");
            None
        }
    }
}

#[test]
fn a_wgpu_program_adopts_one_managed_buffer_on_its_own_device() {
    let input: Vec<u32> = (0..50_000).collect();
    for backend in BACKENDS {
        let Some((adapter, device, queue)) = plain_device() else { return };
        let p = pipeline(&device);
        let want = plain(&device, &queue, &p, &input);
        assert_eq!(want[7], 22);
        // Any wgpu device: the software mode.
        let desc = small(backend).mapping(MappingMode::Software).device(SharedDevice::new(&adapter, &device, &queue));
        let svm = Svm::with_descriptor(&desc).expect("runtime on the app's device");
        assert_eq!(svm.stats().app_scopes, 0);
        assert_eq!(adopt(&svm, &p, &input), want, "{backend:?}");
        assert_eq!(svm.stats().app_scopes, 1);
        // Sparse needs a device opened through svm::vk (and a build that
        // has it: the `vulkan` feature).
        let sparse = small(backend).mapping(MappingMode::Sparse).device(SharedDevice::new(&adapter, &device, &queue));
        let why = if crate::VULKAN { "svm::vk::open" } else { "`vulkan` feature" };
        match Svm::with_descriptor(&sparse) {
            Err(svm::SvmError::Config(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("sparse on a plain device: {other:?}"),
        }
    }
}

/// On a plain wgpu device the pool is wgpu-mapped for migrations (no host
/// import): a launch's copies, made with the update lock released, must not
/// map a segment while a CPU fault maps it under the lock (wgpu allows one
/// map of a buffer at a time: the second failed and lost the device). A
/// launch migrating while another thread faults, allocates and frees.
#[test]
fn a_plain_device_migrates_beside_cpu_faults() {
    for backend in BACKENDS {
        let Some((adapter, device, queue)) = plain_device() else { return };
        let desc = small(backend).mapping(MappingMode::Software).device(SharedDevice::new(&adapter, &device, &queue));
        let svm = Svm::with_descriptor(&desc).expect("runtime on the app's device");
        crate::queue::copies_beside_faults_and_allocs(&svm, backend);
    }
}

/// A device the application opened through `svm::vk`: every mapping mode
/// (the one this test run selects with `SVM_MAPPING_MODE`). (`svm::vk`
/// exists with the `vulkan` feature only.)
#[cfg(feature = "vulkan")]
#[test]
fn a_vk_opened_device_serves_every_mode() {
    let Some(opened) = vk_app_device() else { return };
    let input: Vec<u32> = (0..20_000).map(|i| i * 7).collect();
    let p = pipeline(&opened.device);
    let want = plain(&opened.device, &opened.queue, &p, &input);
    for backend in BACKENDS {
        let svm = Svm::with_descriptor(&small(backend).device(SharedDevice::from_vk(&opened))).expect("runtime");
        assert_eq!(adopt(&svm, &p, &input), want, "{backend:?} {:?}", svm.mapping_mode());
    }
}

/// The application's own wgpu error inside `with_bindings` (here a buffer
/// past the device's size limit) is returned as `LaunchError::Application`
/// and the runtime goes on: before, the runtime's device took it for a lost
/// device, and every later launch, and the CPU's access to device-owned
/// data, failed.
#[test]
fn an_application_error_in_with_bindings_is_its_own() {
    for backend in BACKENDS {
        let Some(svm) = crate::ctx(small(backend)) else { return };
        let p = pipeline(svm.device());
        let input: Vec<u32> = (0..10_000).collect();
        let mut v = svm.alloc_from_slice(&input).expect("alloc");
        let r = svm.with_bindings(&[Binding::read_write(&mut v)], |b| {
            run(svm.device(), svm.queue(), &p, b[0].clone(), input.len() as u32);
            svm.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("too large"),
                size: svm.device().limits().max_buffer_size.saturating_add(4096),
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        assert!(matches!(r, Err(svm::LaunchError::Application(_))), "{backend:?}: {r:?}");
        let once: Vec<u32> = input.iter().map(|x| x * 3 + 1).collect();
        assert_eq!(v.to_vec(), once, "the application's pass ran ({backend:?})");
        pass_in_scope(&svm, &p, &mut v).expect("the runtime goes on");
        assert_eq!(v[9], (9 * 3 + 1) * 3 + 1, "{backend:?}");
        // Outside `with_bindings` too: the same mistake on the runtime's
        // device (no error scope of the application's) is reported and the
        // runtime goes on; `v`, the device's after the scope, comes back.
        pass_in_scope(&svm, &p, &mut v).expect("a third scope");
        let _ = svm.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("too large, outside"),
            size: svm.device().limits().max_buffer_size.saturating_add(4096),
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        assert_eq!(v[9], ((9 * 3 + 1) * 3 + 1) * 3 + 1, "{backend:?}: read back after the application's error");
        pass_in_scope(&svm, &p, &mut v).expect("the runtime still goes on");
    }
}

/// `f` panics inside `with_bindings`: the scope still ends (its work waited
/// for, its pages settled and given back), so the range is read on the CPU
/// (a fault that would otherwise wait for the scope forever) and used by a
/// later scope; the panic reaches the caller.
#[test]
fn a_panic_in_with_bindings_ends_the_scope() {
    for backend in BACKENDS {
        let Some(svm) = crate::ctx(small(backend)) else { return };
        let p = pipeline(svm.device());
        let input: Vec<u32> = (0..10_000).collect();
        let mut v = svm.alloc_from_slice(&input).expect("alloc");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            svm.with_bindings(&[Binding::read_write(&mut v)], |b| {
                run(svm.device(), svm.queue(), &p, b[0].clone(), input.len() as u32);
                panic!("the application's f");
            })
        }));
        assert!(panicked.is_err(), "the panic reaches the caller");
        let once: Vec<u32> = input.iter().map(|x| x * 3 + 1).collect();
        assert_eq!(v.to_vec(), once, "the pass submitted before the panic ran ({backend:?})");
        pass_in_scope(&svm, &p, &mut v).expect("a later scope");
        assert_eq!(v[9], (9 * 3 + 1) * 3 + 1, "{backend:?}");
    }
}

/// `with_bindings` is safe whatever the application does with what it is
/// handed: each binding is a buffer of its own, the size of its range, and
/// a clone kept past the scope and written later reaches no managed data
/// (before, it was the runtime's pool or arena view, other allocations'
/// data beside the range — the arena itself in the coherent cases, where a
/// late write raced with Rust references). The in-place variant (`unsafe`)
/// hands out the runtime's own buffers, and runs the same pass.
#[test]
fn with_bindings_hands_out_nothing_beyond_the_range() {
    for backend in BACKENDS {
        let Some(svm) = crate::ctx(small(backend)) else { return };
        let p = pipeline(svm.device());
        let input: Vec<u32> = (0..3000).collect();
        let mut v = svm.alloc_from_slice(&input).expect("v");
        let w = svm.alloc_from_slice(&[7u32; 3000]).expect("w");
        let kept = svm
            .with_bindings(&[Binding::read_write(&mut v)], |b| {
                assert_eq!(b[0].offset, 0, "a buffer of its own");
                assert_eq!(b[0].buffer.size(), 3000 * 4, "the range's size, nothing beside it");
                run(svm.device(), svm.queue(), &p, b[0].clone(), 3000);
                b[0].buffer.clone()
            })
            .expect("with_bindings");
        let once: Vec<u32> = input.iter().map(|x| x * 3 + 1).collect();
        assert_eq!(v.to_vec(), once, "the pass's writes came back ({backend:?})");
        // The kept buffer written after the scope: no managed data changes.
        svm.queue().write_buffer(&kept, 0, &vec![0xff; 3000 * 4]);
        svm.submit_commands(std::iter::empty());
        let _ = svm.device().poll(wgpu::PollType::wait_indefinitely());
        assert_eq!(v.to_vec(), once, "{backend:?}");
        assert!(w.iter().all(|&x| x == 7), "{backend:?}");
        // A later scope sees the data, not the late write.
        pass_in_scope(&svm, &p, &mut v).expect("a later scope");
        assert_eq!(v[9], (9 * 3 + 1) * 3 + 1, "{backend:?}");
        // In place: the runtime's own buffers, the same pass.
        // SAFETY: the pass uses the binding's range only, inside `f`, and
        // keeps nothing.
        unsafe {
            svm.with_bindings_in_place(&[Binding::read_write(&mut v)], |b| {
                run(svm.device(), svm.queue(), &p, b[0].clone(), 3000)
            })
        }
        .expect("in place");
        assert_eq!(v[9], ((9 * 3 + 1) * 3 + 1) * 3 + 1, "{backend:?}");
        assert!(w.iter().all(|&x| x == 7), "{backend:?}");
    }
}

/// Found by review of the copies `with_bindings` hands out: the application
/// destroying its copy made the copy back a refused submission, which the
/// runtime took for a lost device; two overlapping read-write ranges got a
/// copy each, and the second copied back over the first's writes; freeing
/// memory a device maps in place (`AccessedBy`) inside the scope waited
/// for the scope itself. Now: the application's error (the ranges keep
/// their contents), one shared copy, and `FreeError::InOwnScope`.
#[test]
fn with_bindings_copies_survive_what_the_application_does() {
    for backend in BACKENDS {
        let Some(svm) = crate::ctx(small(backend)) else { return };
        let p = pipeline(svm.device());
        let input: Vec<u32> = (0..2048).collect();
        let mut v = svm.alloc_from_slice(&input).expect("v");
        // Destroyed by the application: its error, the runtime unharmed.
        let r = svm.with_bindings(&[Binding::read_write(&mut v)], |b| b[0].buffer.destroy());
        assert!(matches!(r, Err(svm::LaunchError::Application(_))), "{backend:?}: {r:?}");
        assert_eq!(v.to_vec(), input, "the range keeps its contents ({backend:?})");
        pass_in_scope(&svm, &p, &mut v).expect("the runtime is not lost");
        let once: Vec<u32> = input.iter().map(|x| x * 3 + 1).collect();
        assert_eq!(v.to_vec(), once, "{backend:?}");
        // Two overlapping read-write ranges: the pass writes through the
        // first; the second (its second half) must not copy stale bytes back.
        let base = v.as_ptr().cast::<u8>();
        // SAFETY: no Rust reference to `v` is used during the scope.
        let (whole, half) = unsafe {
            (
                Binding::raw(base, 2048 * 4, svm::AccessMode::ReadWrite),
                Binding::raw(base.add(4096), 1024 * 4, svm::AccessMode::ReadWrite),
            )
        };
        svm.with_bindings(&[whole, half], |b| run(svm.device(), svm.queue(), &p, b[0].clone(), 2048))
            .expect("overlapping scope");
        let twice: Vec<u32> = once.iter().map(|x| x * 3 + 1).collect();
        assert_eq!(v.to_vec(), twice, "the overlap keeps the pass's writes ({backend:?})");
        // A free inside the scope of memory mapped in place for the device.
        if svm.mapping_mode() == MappingMode::Coherent
            || !crate::accessed_by_built(&svm)
            || !svm.coherent_mode_available()
        {
            continue;
        }
        let x = svm.alloc(64 << 10).expect("x");
        svm.advise(x.as_ptr().cast_const(), 64 << 10, svm::Advice::AccessedBy).expect("AccessedBy");
        let w = svm.alloc_from_slice(&[1u32; 64]).expect("w");
        let freed = svm.with_bindings(&[Binding::read(&w)], |_| svm.free(x.as_ptr())).expect("scope");
        assert_eq!(freed, Err(svm::FreeError::InOwnScope { addr: x.as_ptr() as usize }), "{backend:?}");
        svm.free(x.as_ptr()).expect("after the scope");
    }
}

/// Found by review: the runtime learnt that a launch was done from a
/// timeline signal staged on the queue just before its submission; the
/// application submitting on its own (shared) queue from another thread in
/// between took that signal with its own work, and the launch counted as
/// done before it ran: the CPU read what the kernel had not written yet.
/// The launch's completion is confirmed by its own submission now.
#[cfg(feature = "vulkan")]
#[test]
fn the_applications_submissions_do_not_finish_the_runtimes_launches() {
    let Some(opened) = vk_app_device() else { return };
    // The coherent mode in every run: there a launch seen done early shows
    // (the CPU reads the pages in place; migrating modes copy back behind
    // the kernel on the queue, which hides it). Not the sparse mode: its
    // binds share the queue, and an application's submissions beside them
    // go through `submit_commands` (`SharedDevice`'s contract).
    if !opened.caps.host_import {
        assert!(std::env::var("SVM_REQUIRE_VK_CAPS").as_deref() != Ok("1"), "no host import");
        eprintln!("SKIP: no host import on this device (the coherent mode)");
        return;
    }
    let desc = small(BACKENDS[0]).device(SharedDevice::from_vk(&opened)).mapping(MappingMode::Coherent);
    let svm = Svm::with_descriptor(&desc).expect("runtime");
    // Slow enough that a launch is still running when an empty submission
    // of the application's (queued before it) completes. Bound access: no
    // log is read back (whose map waited for the submission itself).
    let k = crate::kernel(
        &svm,
        "slow",
        "struct P { round: u32, pad0: u32, pad1: u32, pad2: u32 }
        @group(0) @binding(0) var<storage, read_write> b: array<u32>;
        @group(0) @binding(1) var<uniform> p: P;
        @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
            if (g.x >= arrayLength(&b)) { return; }
            var x = g.x;
            for (var i = 0u; i < 4000u; i++) { x = x * 1664525u + 1013904223u; }
            b[g.x] = p.round + (x & 0u);
        }",
    );
    let n = 4096u32;
    let mut v = svm.alloc_vec::<u32>(n as usize).expect("v");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut wrong = 0;
    std::thread::scope(|s| {
        let (queue, stop) = (&opened.queue, &stop);
        s.spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                queue.submit(std::iter::empty());
            }
        });
        for round in 1..=150u32 {
            let p = [round, 0, 0, 0];
            svm.launch(
                &k,
                &svm::LaunchDescriptor {
                    bindings: &[Binding::read_write(&mut v), Binding::uniform(&p)],
                    workgroups: [n / 64, 1, 1],
                    ..Default::default()
                },
            )
            .expect("launch");
            if v.iter().any(|&x| x != round) {
                wrong += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(wrong, 0, "launches seen before they ran ({:?})", svm.mapping_mode());
}

/// A device the application opens through `svm::vk` with what every mode
/// needs; `None` (skip) without a GPU where none is required.
#[cfg(feature = "vulkan")]
fn vk_app_device() -> Option<svm::vk::OpenDevice> {
    match svm::vk::open(&svm::vk::DeviceDescriptor {
        label: Some("app"),
        required_features: svm::wgpu::Features::empty(),
        optional_features: svm::wgpu::Features::empty(),
        required_limits: None,
        want_sparse: true,
        want_host_import: true,
        want_buffer_device_address: false,
        validation: svm::vk::ValidationMode::Off,
    }) {
        Ok(d) => Some(d),
        Err(e) => {
            assert!(std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1"), "{e}");
            None
        }
    }
}
