// PolyBench 2DCONV, bound access (plain WGSL, no prelude): 3x3 stencil over
// an ni x nj row-major image; border cells are left alone. The nine
// coefficients c11 c12 c13 c21 ... are c[k / 4][k % 4] (uniform arrays have
// a 16-byte stride). Terms are added in the order of the CPU reference.
struct Params {
    ni: u32,
    nj: u32,
    c: array<vec4<f32>, 3>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ni = p.ni;
    let nj = p.nj;
    let inner = (ni - 2u) * (nj - 2u);
    let stride = nwg.x * 256u;
    for (var t = gid.x; t < inner; t += stride) {
        let i = t / (nj - 2u) + 1u;
        let j = t % (nj - 2u) + 1u;
        var acc = 0.0;
        for (var di = 0u; di < 3u; di += 1u) {
            for (var dj = 0u; dj < 3u; dj += 1u) {
                let k = di * 3u + dj;
                let v = a[(i + di - 1u) * nj + (j + dj - 1u)];
                acc += p.c[k / 4u][k % 4u] * v;
            }
        }
        b[i * nj + j] = acc;
    }
}
