// Explicit-copy PolyBench 2DCONV (same order as the managed kernel).
// params: ni, nj, then the nine coefficients as f32 bits.
@group(0) @binding(0) var<storage, read> params: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ni = params[0];
    let nj = params[1];
    let inner = (ni - 2u) * (nj - 2u);
    let stride = nwg.x * 256u;
    for (var t = gid.x; t < inner; t += stride) {
        let i = t / (nj - 2u) + 1u;
        let j = t % (nj - 2u) + 1u;
        var acc = 0.0;
        for (var di = 0u; di < 3u; di += 1u) {
            for (var dj = 0u; dj < 3u; dj += 1u) {
                let v = a[(i + di - 1u) * nj + (j + dj - 1u)];
                acc += bitcast<f32>(params[2u + di * 3u + dj]) * v;
            }
        }
        b[i * nj + j] = acc;
    }
}
