// CSR sparse matrix-vector product y = A x, bound access (plain WGSL, no
// prelude): one row per invocation, terms summed in column order (as the
// pointer kernel and the CPU reference do).
struct Params {
    rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> rowptr: array<u32>;
@group(0) @binding(2) var<storage, read> cols: array<u32>;
@group(0) @binding(3) var<storage, read> vals: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var r = gid.x; r < p.rows; r += stride) {
        var acc = 0.0;
        for (var k = rowptr[r]; k < rowptr[r + 1u]; k += 1u) {
            acc += vals[k] * x[cols[k]];
        }
        y[r] = acc;
    }
}
