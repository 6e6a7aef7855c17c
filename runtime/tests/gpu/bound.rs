//! Bound access: kernels written as for plain wgpu buffers (their own
//! bindings), bound to managed ranges; the GPU translates and bounds-checks.
//! Every test runs in the mapping mode of the run (`SVM_MAPPING_MODE`) and
//! under both fault backends.

use svm::{Access, AccessMode, Arg, BindError, Binding, KernelError, LaunchDescriptor, LaunchError};

use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

/// c = a + b, written as any wgpu kernel: no prelude.
const VADD_BOUND: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&c)) {
        c[g.x] = a[g.x] + b[g.x];
    }
}
"#;

#[test]
fn vadd_bound_both_backends() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "vadd bound", VADD_BOUND);
        assert!(!k.uses_prelude(), "a plain wgpu kernel compiles without the prelude");
        assert_eq!(k.bindings().map(|(n, ..)| n).collect::<Vec<_>>(), ["a", "b", "c"]);
        let n = 100_000;
        let a = svm.alloc_from_slice(&(0..n).map(|i| i as f32).collect::<Vec<_>>()).expect("a");
        let b = svm.alloc_from_slice(&(0..n).map(|i| (2 * i) as f32 + 0.5).collect::<Vec<_>>()).expect("b");
        let mut c = svm.alloc_vec::<f32>(n).expect("c");
        let before = svm.stats();
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::read(&a), Binding::read(&b), Binding::read_write(&mut c)],
                workgroups: [(n as u32).div_ceil(64), 1, 1],
                ..Default::default()
            },
        )
        .expect("launch");
        let s = svm.stats().since(&before);
        assert_eq!(s.bound_passes, 1, "no software check: the bound pass");
        if svm.mapping_mode() != svm::MappingMode::Coherent {
            assert_eq!(svm.device_resident_pages(), (n * 4).div_ceil(4096), "c is the device's until the CPU reads it");
        }
        for i in 0..n {
            assert_eq!(c[i], a[i] + b[i], "c[{i}] ({backend:?})");
        }
        if svm.mapping_mode() != svm::MappingMode::Coherent {
            assert!(svm.stats().since(&before).cpu_faults > 0, "c came back by CPU faults");
        }
    }
}

/// A kernel written for plain wgpu (its own group 0 binding, no svm
/// names), in the style of wgpu's hello-compute example: the same source
/// runs on a plain wgpu buffer and on managed memory, with the same results.
const PLAIN_WGPU_KERNEL: &str = r#"
@group(0) @binding(0)
var<storage, read_write> numbers: array<u32>;

// Steps of the 3n+1 map until n reaches 1 (u32::MAX if it would overflow).
fn steps(start: u32) -> u32 {
    var n = start;
    var count = 0u;
    while (n > 1u) {
        if ((n & 1u) == 0u) {
            n = n >> 1u;
        } else {
            if (n > 1431655764u) { return 0xffffffffu; }
            n = 3u * n + 1u;
        }
        count += 1u;
    }
    return count;
}

@compute @workgroup_size(1)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    numbers[id.x] = steps(numbers[id.x]);
}
"#;

fn plain_wgpu_run(input: &[u32]) -> Vec<u32> {
    let (_, device, queue, _) = svm::create_wgpu_device().expect("plain device");
    let module = device.create_shader_module(svm::wgpu::ShaderModuleDescriptor {
        label: None,
        source: svm::wgpu::ShaderSource::Wgsl(PLAIN_WGPU_KERNEL.into()),
    });
    let pipeline = device.create_compute_pipeline(&svm::wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let bytes = (input.len() * 4) as u64;
    let storage = device.create_buffer(&svm::wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: svm::wgpu::BufferUsages::STORAGE | svm::wgpu::BufferUsages::COPY_DST | svm::wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&svm::wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: svm::wgpu::BufferUsages::MAP_READ | svm::wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&storage, 0, bytemuck::cast_slice(input));
    let bg = device.create_bind_group(&svm::wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[svm::wgpu::BindGroupEntry { binding: 0, resource: storage.as_entire_binding() }],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(input.len() as u32, 1, 1);
    }
    enc.copy_buffer_to_buffer(&storage, 0, &read, 0, bytes);
    queue.submit([enc.finish()]);
    read.slice(..).map_async(svm::wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(svm::wgpu::PollType::wait_indefinitely()).expect("poll");
    let out = bytemuck::cast_slice(&read.slice(..).get_mapped_range().expect("mapped")).to_vec();
    out
}

#[test]
fn a_plain_wgpu_kernel_runs_unchanged_on_managed_memory() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let input: Vec<u32> = (1..=1000).chain([27, 97, 871, 0x7fff_ffff]).collect();
        let want: Vec<u32> = plain_wgpu_run(&input);
        assert_eq!(want[26], 111, "27 takes 111 steps");
        let k = kernel(&svm, "plain", PLAIN_WGPU_KERNEL);
        let mut v = svm.alloc_from_slice(&input).expect("alloc");
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut v)],
                workgroups: [input.len() as u32, 1, 1],
                ..Default::default()
            },
        )
        .expect("launch");
        assert_eq!(&v[..], &want[..], "{backend:?}");
    }
}

/// Typed arguments (a uniform struct read by field), arrays of structs,
/// vec4 and atomics, with a pointer-access binding in the same kernel.
#[repr(C)]
#[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    scale: f32,
    n: u32,
    bins: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Particle {
    pos: [f32; 4],
    vel: [f32; 4],
}

const TYPED: &str = r#"
struct Params { scale: f32, n: u32, bins: u32, pad: u32 }
struct Particle { pos: vec4<f32>, vel: vec4<f32> }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> parts: array<Particle>;
@group(1) @binding(0) var<storage, read_write> hist: array<atomic<u32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;
    if (i >= params.n) { return; }
    var p = parts[i];
    p.pos = p.pos + p.vel * params.scale;
    parts[i] = p;
    atomicAdd(&hist[i % params.bins], 1u);
    // Pointer access in the same kernel: the managed pointer passed as
    // argument words 0-1 (a counter), through the prelude.
    if (i == 0u) {
        let counter = svm_arg_ptr(0u);
        svm_store_u32(counter, svm_load_u32(counter) + 1u);
    }
}
"#;

#[test]
fn uniform_structs_vec4_atomics_and_pointers_in_one_kernel() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "typed", TYPED);
        assert!(k.uses_prelude());
        assert_eq!(k.bindings().collect::<Vec<_>>(), [("params", 0, 0), ("parts", 0, 1), ("hist", 1, 0)]);
        let n = 1000u32;
        let mut parts = svm
            .alloc_from_slice(
                &(0..n)
                    .map(|i| Particle { pos: [i as f32, 0.0, 1.0, 2.0], vel: [1.0, 2.0, 3.0, 4.0] })
                    .collect::<Vec<_>>(),
            )
            .expect("parts");
        let mut hist = svm.alloc_vec::<u32>(7).expect("hist");
        let mut counter = svm.alloc_from_slice(&[41u32]).expect("counter");
        let params = Params { scale: 0.5, n, bins: 7, _pad: 0 };
        let args = [Arg::ptr(counter.as_ptr())];
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                bindings: &[Binding::uniform(&params), Binding::read_write(&mut parts), Binding::read_write(&mut hist)],
                access: &[Access::read_write(&mut counter)],
                workgroups: [n.div_ceil(64), 1, 1],
            },
        )
        .expect("launch");
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.pos, [i as f32 + 0.5, 1.0, 2.5, 4.0], "particle {i} ({backend:?})");
        }
        let want: Vec<u32> = (0..7).map(|b| (0..n).filter(|i| i % 7 == b).count() as u32).collect();
        assert_eq!(&hist[..], &want[..]);
        assert_eq!(counter[0], 42);
    }
}

/// A sub-slice binds exactly its elements: the kernel's bounds check is the
/// binding's, so the rest of the vector is untouched.
#[test]
fn sub_slices_bind_exactly_their_range() {
    const INC: &str = r#"
@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    // Runs over twice the binding: the GPU's bounds check keeps it inside.
    v[g.x] = v[g.x] + 1u;
}
"#;
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "inc", INC);
        let mut v = svm.alloc_from_slice(&vec![7u32; 4096]).expect("v");
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut v.slice_mut(1024..1088))],
                workgroups: [2, 1, 1],
                ..Default::default()
            },
        )
        .expect("launch");
        for (i, &x) in v.iter().enumerate() {
            if (1024..1088).contains(&i) {
                assert!(x > 7, "v[{i}] = {x}: inside the slice");
            } else {
                assert_eq!(x, 7, "v[{i}]: outside the slice ({backend:?})");
            }
        }
    }
}

/// Software mode: a range whose pages came to the device in pieces is
/// moved together before it is bound.
#[test]
fn fragmented_ranges_are_moved_together() {
    const ADD: &str = r#"
@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&v)) { v[g.x] = v[g.x] + g.x; }
}
"#;
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend).fault_prefetch(false)) else { return };
        if svm.mapping_mode() != svm::MappingMode::Software {
            eprintln!("NOT APPLICABLE: only the software mode places pages in frames");
            return;
        }
        let k = kernel(&svm, "add", ADD);
        let n = 64 * 1024; // 64 pages
        let mut x = svm.alloc_vec::<u32>(n).expect("x");
        let mut y = svm.alloc_vec::<u32>(16 * 1024).expect("y");
        let run = |v: &mut svm::ManagedVec<u32>| {
            let groups = (v.len() as u32).div_ceil(64);
            svm.launch(
                &k,
                &LaunchDescriptor {
                    bindings: &[Binding::read_write(v)],
                    workgroups: [groups, 1, 1],
                    ..Default::default()
                },
            )
            .expect("launch");
        };
        run(&mut x);
        // The CPU takes back 16 pages in the middle of x (one 64 KiB
        // chunk), y takes their frames, so x's pages come back elsewhere.
        assert_eq!(x[32 * 1024], 32 * 1024);
        run(&mut y);
        let before = svm.stats();
        run(&mut x);
        assert!(svm.stats().since(&before).bind_moves > 0, "x was moved together");
        for (i, &v) in x.iter().enumerate() {
            assert_eq!(v, 2 * i as u32, "x[{i}] ({backend:?})");
        }
        for (i, &v) in y.iter().enumerate() {
            assert_eq!(v, i as u32, "y[{i}]");
        }
    }
}

#[test]
fn bad_bindings_are_typed_errors_and_change_nothing() {
    let Some(svm) = ctx(small(svm::FaultBackendKind::Uffd)) else { return };
    let k = kernel(&svm, "vadd bound", VADD_BOUND);
    let a = svm.alloc_vec::<f32>(1024).expect("a");
    let b = svm.alloc_vec::<f32>(1024).expect("b");
    let mut c = svm.alloc_vec::<f32>(1024).expect("c");
    let before = svm.stats();
    let launch = |bindings: &[Binding<'_>]| {
        svm.launch(&k, &LaunchDescriptor { bindings, workgroups: [16, 1, 1], ..Default::default() })
    };
    match launch(&[Binding::read(&a), Binding::read(&b)]) {
        Err(LaunchError::BindingCount { expected: 3, given: 2, .. }) => {}
        other => panic!("{other:?}"),
    }
    match launch(&[Binding::read(&a), Binding::read(&b), Binding::read(&c)]) {
        Err(LaunchError::Binding { index: 2, name, reason: BindError::NotWritable, .. }) => assert_eq!(name, "c"),
        other => panic!("{other:?}"),
    }
    let params = [0u32; 4];
    match launch(&[Binding::uniform(&params), Binding::read(&b), Binding::read_write(&mut c)]) {
        Err(LaunchError::Binding { index: 0, reason: BindError::WrongKind { .. }, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Not aligned for the device's storage offset alignment (>= 4).
    match launch(&[Binding::read(&a.slice(1..)), Binding::read(&b), Binding::read_write(&mut c)]) {
        Err(LaunchError::Binding { index: 0, reason: BindError::Misaligned { .. }, .. }) => {}
        other => panic!("{other:?}"),
    }
    // A freed range.
    let freed = svm.alloc(4096).expect("alloc");
    svm.free(freed.as_ptr()).expect("free");
    // SAFETY: read-only; the range is freed, which the launch must refuse.
    let raw = unsafe { Binding::raw(freed.as_ptr(), 4096, AccessMode::Read) };
    match launch(&[raw, Binding::read(&b), Binding::read_write(&mut c)]) {
        Err(LaunchError::Binding { index: 0, reason: BindError::NotAllocated { .. }, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Larger than one binding may be.
    let limit = svm.device().limits().max_storage_buffer_binding_size as usize;
    let big = svm.alloc_vec::<u32>(limit / 4 + 1024).expect("big");
    match launch(&[Binding::read(&big), Binding::read(&b), Binding::read_write(&mut c)]) {
        Err(LaunchError::Binding { index: 0, reason: BindError::TooLarge { limit_name, .. }, .. }) => {
            assert_eq!(limit_name, "max_storage_buffer_binding_size")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(svm.stats().since(&before), svm::Stats::default(), "nothing migrated or launched");
    launch(&[Binding::read(&a), Binding::read(&b), Binding::read_write(&mut c)]).expect("the good launch");
}

#[test]
fn the_prelude_is_sealed_and_its_group_reserved() {
    let Some(svm) = ctx(small(svm::FaultBackendKind::Uffd)) else { return };
    let make = |src: &str| svm.create_kernel(&svm::KernelDescriptor { label: "k", source: src, entry_point: "main" });
    for (src, name) in [
        // Writing a window directly would bypass every check.
        ("@compute @workgroup_size(1) fn main() { svm_pool_write(vec2<u32>(0u, 0u), 1u); }", "svm_pool_write"),
        ("@compute @workgroup_size(1) fn main() { atomicStore(&svm_log[0], 0u); }", "svm_log"),
        ("fn f() -> vec2<u32> { return svm_base; }\n@compute @workgroup_size(1) fn main() { _ = f(); }", "svm_base"),
        ("@compute @workgroup_size(1) fn main() { let t = svm_translate(svm_arg_ptr(0u), true); }", "svm_translate"),
    ] {
        match make(src) {
            Err(KernelError::Sealed { name: n, .. }) => assert_eq!(n, name, "{src}"),
            other => panic!("{src}: {other:?}"),
        }
    }
    let group3 = "@group(3) @binding(0) var<storage, read_write> mine: array<u32>;
        @compute @workgroup_size(1) fn main() { mine[0] = svm_arg_u32(0u); }";
    match make(group3) {
        Err(KernelError::Binding { name, group: 3, .. }) => assert_eq!(name, "mine"),
        other => panic!("{other:?}"),
    }
    // Errors name the kernel's own line.
    match make("@compute @workgroup_size(1)\nfn main() {\n  let x = svm_load_u32(nope);\n}") {
        Err(KernelError::Compile { message, .. }) => assert!(message.contains(":3:"), "{message}"),
        other => panic!("{other:?}"),
    }
}

/// Pointer access to vec4 and u64 with one check each; a misaligned one is
/// refused (nothing written) and reported.
#[test]
fn pointer_vec4_and_u64_access() {
    const WIDE: &str = r#"
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let src = svm_arg_ptr(0u);
    let dst = svm_arg_ptr(2u);
    let n = svm_arg_u32(4u);
    let skew = svm_arg_u32(5u);
    if (g.x < n) {
        let v = svm_load_vec4f(svm_index(src, g.x, 16u));
        svm_store_vec4f(svm_ptr_add(svm_index(dst, g.x, 16u), skew), v * 2.0);
        let w = svm_load_u64(svm_index(src, 2u * g.x, 8u));
        svm_store_u64(svm_ptr_add(svm_index(dst, 2u * g.x + 1u, 8u), skew), w);
    }
}
"#;
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "wide", WIDE);
        let n = 256usize;
        let src = svm.alloc_from_slice(&(0..4 * n).map(|i| i as f32).collect::<Vec<_>>()).expect("src");
        let mut dst = svm.alloc_vec::<f32>(4 * n).expect("dst");
        for skew in [0u32, 4] {
            dst.fill(-1.0);
            let args = [Arg::ptr(src.as_ptr()), Arg::ptr(dst.as_ptr()), Arg::U32(n as u32), Arg::U32(skew)];
            let r = svm.launch(
                &k,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read(&src), Access::read_write(&mut dst)],
                    workgroups: [(n as u32).div_ceil(64), 1, 1],
                    ..Default::default()
                },
            );
            if skew == 0 {
                r.expect("aligned");
                for i in 0..n {
                    // The u64 store (words 4i+2, 4i+3 from src words 4i, 4i+1)
                    // follows the vec4 store of the same invocation.
                    let want = [2.0 * (4 * i) as f32, 2.0 * (4 * i + 1) as f32, (4 * i) as f32, (4 * i + 1) as f32];
                    assert_eq!(&dst[4 * i..4 * i + 4], &want, "element {i} ({backend:?})");
                }
            } else {
                match r {
                    Err(LaunchError::Kernel { faults, total }) => {
                        assert_eq!(total, n as u32, "every invocation refused");
                        assert!(faults.iter().all(|f| f.kind == svm::KernelFaultKind::Misaligned), "{faults:?}");
                    }
                    other => panic!("{other:?}"),
                }
                assert!(dst.iter().all(|&x| x == -1.0), "nothing written ({backend:?})");
            }
        }
    }
}

/// `ManagedPtr<T>`: pointers stored in data and passed as arguments, typed
/// on the CPU, followed by the kernel; the CPU-side read is checked.
#[test]
fn managed_ptr_links_data_for_kernels_and_reads_checked() {
    #[repr(C)]
    #[derive(Copy, Clone, Debug, bytemuck::Pod, bytemuck::Zeroable)]
    struct Node {
        next: svm::ManagedPtr<Node>,
        value: u32,
        pad: u32,
    }
    const SUM: &str = r#"
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main() {
    var p = svm_arg_ptr(0u);
    var sum = 0u;
    while (!svm_is_null(p)) {
        sum += svm_load_u32(svm_ptr_add(p, 8u));
        p = svm_load_ptr(p);
    }
    out[0] = sum;
}
"#;
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "sum", SUM);
        let n = 100;
        let mut nodes = svm.alloc_vec::<Node>(n).expect("nodes");
        // Linked backwards through the array: next of node i is node i - 1.
        for i in 0..n {
            let next = if i == 0 { svm::ManagedPtr::NULL } else { nodes.ptr_at(i - 1) };
            nodes[i] = Node { next, value: i as u32 + 1, pad: 0 };
        }
        let head = nodes.ptr_at(n - 1);
        let mut out = svm.alloc_vec::<u32>(1).expect("out");
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &[head.into()],
                bindings: &[Binding::read_write(&mut out)],
                access: &[Access::read(&nodes)],
                ..Default::default()
            },
        )
        .expect("launch");
        assert_eq!(out[0], (1..=n as u32).sum::<u32>(), "{backend:?}");
        // CPU side: the same pointers, read checked.
        // SAFETY: nothing writes the nodes meanwhile (this thread only reads).
        let second = unsafe { head.read(&svm) }.expect("head").next;
        // SAFETY: as above.
        let second = unsafe { second.read(&svm) }.expect("second");
        assert_eq!(second.value, n as u32 - 1);
        // SAFETY: refused before any read.
        let null = unsafe { svm::ManagedPtr::<Node>::NULL.read(&svm) };
        assert_eq!(null.unwrap_err(), svm::PtrError::Null);
        let skew = head.cast::<u8>().add(4).cast::<Node>();
        assert!(matches!(skew.check(&svm), Err(svm::PtrError::Misaligned { .. })));
        // (Checks are page-granular, like declarations: one past the end is
        // still the allocation's page.)
        let last = svm::ManagedPtr::<Node>::from_addr((svm.arena_base() + svm.arena_size() - 16) as u64);
        assert!(matches!(last.check(&svm), Err(svm::PtrError::NotAllocated { .. })), "unallocated");
        let outside = svm::ManagedPtr::<Node>::from_addr(16);
        assert!(matches!(outside.check(&svm), Err(svm::PtrError::NotAllocated { .. })), "outside the arena");
        drop(nodes);
        assert!(matches!(head.check(&svm), Err(svm::PtrError::NotAllocated { .. })), "freed");
    }
}

/// Atomics through managed pointers (issue 12 item 2): every operation on
/// u32 and i32, checked like stores (a read-only declaration refuses them
/// and nothing changes).
#[test]
fn pointer_atomics_on_u32_and_i32() {
    const ATOMICS: &str = r#"
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    let bins = svm_arg_ptr(0u);
    let m = svm_arg_ptr(2u);
    let n = svm_arg_u32(4u);
    if (g.x >= n) { return; }
    svm_atomic_add_u32(svm_index(bins, g.x % 16u, 4u), 1u);
    svm_atomic_min_u32(svm_index(m, 0u, 4u), g.x + 5u);
    svm_atomic_max_u32(svm_index(m, 1u, 4u), g.x);
    svm_atomic_and_u32(svm_index(m, 2u, 4u), ~(1u << (g.x % 32u)));
    svm_atomic_or_u32(svm_index(m, 3u, 4u), 1u << (g.x % 32u));
    svm_atomic_xor_u32(svm_index(m, 4u, 4u), g.x);
    let c = svm_index(m, 5u, 4u);
    loop {
        let old = svm_atomic_add_u32(c, 0u);
        // (A refused access makes every compare-exchange fail: stop then.)
        if (svm_atomic_compare_exchange_u32(c, old, old + 1u).exchanged || svm_failed()) { break; }
    }
    svm_atomic_min_i32(svm_index(m, 6u, 4u), -i32(g.x));
    svm_atomic_max_i32(svm_index(m, 7u, 4u), i32(g.x) - 100);
    svm_atomic_sub_u32(svm_index(m, 8u, 4u), 1u);
    svm_atomic_exchange_u32(svm_index(m, 9u, 4u), 7u);
    svm_atomic_add_i32(svm_index(m, 10u, 4u), -2);
}
"#;
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "atomics", ATOMICS);
        let n = 1000u32;
        let mut bins = svm.alloc_vec::<u32>(16).expect("bins");
        let init = [u32::MAX, 0, u32::MAX, 0, 0, 0, 0, i32::MIN as u32, 5000, 0, 0];
        let mut m = svm.alloc_from_slice(&init).expect("m");
        let args = [Arg::ptr(bins.as_ptr()), Arg::ptr(m.as_ptr()), Arg::U32(n)];
        let wg = [n.div_ceil(64), 1, 1];
        // Declared read-only: every atomic refused, nothing changed.
        let r = svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read(&bins), Access::read(&m)],
                workgroups: wg,
                ..Default::default()
            },
        );
        match r {
            Err(LaunchError::Kernel { faults, .. }) => {
                assert!(faults.iter().all(|f| f.kind == svm::KernelFaultKind::ReadOnly), "{faults:?}")
            }
            other => panic!("{backend:?}: atomics on read-only ranges: {other:?}"),
        }
        assert!(bins.iter().all(|&b| b == 0) && m[..] == init, "{backend:?}: nothing changed");
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read_write(&mut bins), Access::read_write(&mut m)],
                workgroups: wg,
                ..Default::default()
            },
        )
        .expect("atomics");
        let want_bins: Vec<u32> = (0..16).map(|b| (0..n).filter(|i| i % 16 == b).count() as u32).collect();
        assert_eq!(&bins[..], &want_bins[..], "{backend:?}");
        let xor = (0..n).fold(0, |a, i| a ^ i);
        let want = [
            5,
            n - 1,
            0,
            u32::MAX,
            xor,
            n,
            (-(n as i32 - 1)) as u32,
            (n as i32 - 101) as u32,
            5000 - n,
            7,
            (-2 * n as i32) as u32,
        ];
        assert_eq!(&m[..], &want, "{backend:?}");
    }
}

/// With a subscriber taking svm's debug spans, kernel passes carry GPU
/// timestamps (where the device has them): `Stats::kernel_gpu_ns`, at most
/// the submit-to-completion time.
#[test]
fn gpu_timestamps_when_traced() {
    use svm::wgpu::Features;
    let Some(svm) = ctx(small(svm::FaultBackendKind::Uffd)) else { return };
    let k = kernel(&svm, "vadd bound", VADD_BOUND);
    let n = 1 << 20;
    let a = svm.alloc_from_slice(&vec![1.0f32; n]).expect("a");
    let b = svm.alloc_from_slice(&vec![2.0f32; n]).expect("b");
    let mut c = svm.alloc_vec::<f32>(n).expect("c");
    let mut launch = || {
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::read(&a), Binding::read(&b), Binding::read_write(&mut c)],
                workgroups: [(n as u32).div_ceil(64), 1, 1],
                ..Default::default()
            },
        )
        .expect("launch")
    };
    launch();
    assert_eq!(svm.stats().kernel_gpu_ns, 0, "nothing records: no timestamps taken");
    let sub = tracing_subscriber::fmt().with_max_level(tracing::Level::DEBUG).with_writer(std::io::sink).finish();
    let before = svm.stats();
    tracing::subscriber::with_default(sub, &mut launch);
    let s = svm.stats().since(&before);
    if svm.device().features().contains(Features::TIMESTAMP_QUERY) {
        assert!(s.kernel_gpu_ns > 0, "{s:?}");
        assert!(s.kernel_gpu_ns <= s.kernel_ns, "{s:?}");
    } else {
        eprintln!("the device has no timestamp queries: kernel_gpu_ns stays 0");
    }
}

/// `Binding::write_discard`: an output's old contents are not copied in
/// (whole pages start zeroed on the device; the coherent modes keep the
/// host bytes), and bytes outside the range — in its edge pages too — are
/// untouched.
#[test]
fn write_discard_skips_the_copy_in_and_keeps_what_is_outside() {
    const HALF: &str = r#"
@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&v) / 2u) { v[g.x] = g.x + 1u; }
}
"#;
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "half", HALF);
        let in_place = svm.mapping_mode() == svm::MappingMode::Coherent;
        // A host-mapped pool copies anyway (zeroing would cost the same).
        let discards = !in_place && !svm.pool_is_host_mapped();
        let mut v = svm.alloc_from_slice(&vec![7u32; 8192]).expect("v");
        let (lo, hi) = (64, 5064); // bytes 256..20256: pages 0 and 4 partly
        let before = svm.stats();
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::write_discard(&mut v.slice_mut(lo..hi))],
                workgroups: [((hi - lo) as u32).div_ceil(64), 1, 1],
                ..Default::default()
            },
        )
        .expect("launch");
        let s = svm.stats().since(&before);
        assert_eq!(s.discarded_pages, if discards { 3 } else { 0 }, "{backend:?}: pages 1-3 are covered whole");
        // One copy (or clear) per run of like pages, not one per page.
        assert!(s.h2d_batches <= 3, "{backend:?}: {} batches for 5 pages", s.h2d_batches);
        let half = (hi - lo) / 2;
        for (i, &x) in v.iter().enumerate() {
            let want_written = (lo..lo + half).contains(&i);
            if want_written {
                assert_eq!(x, (i - lo) as u32 + 1, "{backend:?}: v[{i}] written");
            } else if !(lo..hi).contains(&i) {
                assert_eq!(x, 7, "{backend:?}: v[{i}] outside the range is untouched");
            } else {
                // Inside the range, not written: zero on a discarded page,
                // else the old value.
                assert!(x == 0 || x == 7, "{backend:?}: v[{i}] = {x}");
                let page = (i * 4) / 4096;
                if discards && (1..4).contains(&page) {
                    assert_eq!(x, 0, "{backend:?}: v[{i}] on a discarded page");
                }
            }
        }
    }
}
