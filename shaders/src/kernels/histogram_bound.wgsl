// Histogram with atomics, bound access (plain WGSL, no prelude):
// hist[data[i] % bins] += 1 for every i < n. `hist` is an
// array<atomic<u32>> bound read_write (managed memory or a plain buffer);
// the CPU zeroes it before the launch.
struct Params {
    n: u32,
    bins: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read_write> hist: array<atomic<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.n; i += stride) {
        atomicAdd(&hist[data[i] % p.bins], 1u);
    }
}
