//! An application's own pass over managed memory (`Svm::with_bindings`):
//! what the copies that make it safe cost, beside the in-place variant
//! (`unsafe with_bindings_in_place`: the runtime's own buffers), a launch
//! of the same kernel through the runtime, and the application's own
//! plain buffer (the kernel alone).
//!
//! A vector V (16 MiB) stays resident between rounds (nothing migrates:
//! after the first round its pages are the device's, or host memory in
//! place in the coherent mode). Each round, interleaved, timed to the end
//! of the GPU work: one pass `v = v * 3 + 1` each way. Medians of the
//! rounds, ms; every path side by side.
//!
//! ```text
//! cargo bench -p svm-benches --bench app_scope
//! cargo bench -p svm-benches --bench app_scope -- --quick   # results/quick/
//! ```

#[path = "common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::Instant;

use common::{gpu_required, machine, median, ModePath as Path};
use svm::{wgpu, Binding, Kernel, KernelDescriptor, LaunchDescriptor, ManagedVec, MappingMode, Svm, SvmDescriptor};

const MIB: usize = 1 << 20;

/// v[i] = v[i] * 3 + 1 over the whole vector (a strided loop).
const STEP: &str = "@group(0) @binding(0) var<storage, read_write> v: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = g.x; i < arrayLength(&v); i += nwg.x * 64u) { v[i] = v[i] * 3u + 1u; }
}";

const WORKGROUPS: u32 = 256;

/// The application's pipeline on the runtime's device.
fn pipeline(device: &wgpu::Device) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("app"),
        source: wgpu::ShaderSource::Wgsl(STEP.into()),
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

/// The application's pass over `data`, submitted.
fn app_pass(svm: &Svm, p: &wgpu::ComputePipeline, data: wgpu::BufferBinding<'_>) {
    let device = svm.device();
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
        pass.dispatch_workgroups(WORKGROUPS, 1, 1);
    }
    svm.submit_commands([enc.finish()]);
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Medians (ms): with_bindings (copies), in place, a launch, a plain buffer.
fn run(path: Path, rounds: usize) -> Result<([f64; 4], String), svm::SvmError> {
    let bytes = 16 * MIB;
    let desc = SvmDescriptor::default()
        .mapping(path.mode)
        .host_mapped_pool(path.host_mapped_pool)
        .pool_size(4 * bytes as u64)
        .arena_size(1 << 30);
    let svm = Svm::with_descriptor(&desc)?;
    let k: Kernel =
        svm.create_kernel(&KernelDescriptor { label: "step", source: STEP, entry_point: "main" }).expect("kernel");
    let p = pipeline(svm.device());
    let n = bytes / 4;
    let mut v: ManagedVec<u32> = svm.alloc_vec(n).expect("v");
    let plain = svm.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("plain"),
        size: bytes as u64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let mut t: [Vec<f64>; 4] = Default::default();
    let mut want = 0u32;
    for round in 0..=rounds {
        let s = Instant::now();
        svm.with_bindings(&[Binding::read_write(&mut v)], |b| app_pass(&svm, &p, b[0].clone())).expect("scope");
        let copies = ms(s);
        let s = Instant::now();
        // SAFETY: the pass uses the binding's range only, inside `f`, and
        // keeps nothing past it.
        unsafe { svm.with_bindings_in_place(&[Binding::read_write(&mut v)], |b| app_pass(&svm, &p, b[0].clone())) }
            .expect("scope in place");
        let in_place = ms(s);
        let s = Instant::now();
        svm.launch(
            &k,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut v)],
                workgroups: [WORKGROUPS, 1, 1],
                ..Default::default()
            },
        )
        .expect("launch");
        let launch = ms(s);
        let s = Instant::now();
        app_pass(&svm, &p, plain.as_entire_buffer_binding());
        let _ = svm.device().poll(wgpu::PollType::wait_indefinitely());
        let own = ms(s);
        for _ in 0..3 {
            want = want.wrapping_mul(3).wrapping_add(1);
        }
        if round > 0 {
            // (Round 0 brings V to the device and warms the pipelines.)
            for (i, x) in [copies, in_place, launch, own].into_iter().enumerate() {
                t[i].push(x);
            }
        }
    }
    assert!(v.iter().step_by(1021).all(|&x| x == want), "{}: wrong data", path.name);
    Ok((t.map(|mut x| median(&mut x)), svm.device_info().to_string()))
}

fn main() {
    let quick = common::quick();
    let rounds = if quick { 2 } else { 9 };
    let command = common::bench_command("app_scope", quick);
    let mut table = String::new();
    let mut device = None;
    for path in common::paths_and_coherent() {
        match run(path, rounds) {
            Ok((m, dev)) => {
                device.get_or_insert(dev);
                let _ = writeln!(
                    table,
                    "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}× |",
                    path.name,
                    m[0],
                    m[1],
                    m[2],
                    m[3],
                    m[0] / m[1]
                );
            }
            Err(e) => {
                assert!(!gpu_required() || path.mode != MappingMode::Software, "SVM_REQUIRE_GPU=1 but no runtime: {e}");
                let _ = writeln!(table, "| {} | not run: {e} | | | | |", path.name);
            }
        }
    }
    let out = format!(
        "# An application's own pass over managed memory\n\n`{command}` (16 MiB resident, medians of {rounds} \
         interleaved rounds, ms to the end of the GPU work).\nDevice: {}. Machine: {}.\n\n\
         | path | with_bindings (copies) | with_bindings_in_place (unsafe) | launch | plain buffer (kernel alone) | copies / in place |\n\
         |---|---:|---:|---:|---:|---:|\n{table}",
        device.unwrap_or_default(),
        machine()
    );
    common::write_result(quick, "app_scope.md", &out);
}
