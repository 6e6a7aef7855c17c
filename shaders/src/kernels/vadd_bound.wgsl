// c[i] = a[i] + b[i], bound access: plain WGSL over the kernel's own
// bindings (no prelude, no software checks). The same source runs on
// managed ranges (svm) and on plain wgpu buffers (the explicit-copy twin).
struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.n; i += stride) {
        c[i] = a[i] + b[i];
    }
}
