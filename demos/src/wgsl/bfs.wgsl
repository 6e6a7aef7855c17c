// Explicit-copy BFS level (same bottom-up step as the managed pointer
// kernel, over CSR arrays in storage buffers).
const UNREACHED: u32 = 0xffffffffu;

struct Params {
    n: u32,
    cur: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read> cols: array<u32>;
@group(0) @binding(3) var<storage, read_write> level: array<u32>;
@group(0) @binding(4) var<storage, read_write> parent: array<u32>;
@group(0) @binding(5) var<storage, read_write> changed: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = params.n;
    let cur = params.cur;
    let stride = nwg.x * 256u;
    for (var w = gid.x; w < n; w += stride) {
        if (level[w] != UNREACHED) {
            continue;
        }
        let a = offsets[w];
        let b = offsets[w + 1u];
        for (var i = a; i < b; i += 1u) {
            let v = cols[i];
            if (level[v] == cur) {
                level[w] = cur + 1u;
                parent[w] = v;
                changed[0] = 1u;
                break;
            }
        }
    }
}
