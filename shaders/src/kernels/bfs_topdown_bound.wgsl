// One level of a top-down BFS over a CSR graph with an atomic frontier
// queue, bound access (plain WGSL, no prelude).
//
// Queues hold [count, v0, v1, ...]. Every vertex u of the current frontier
// (level `cur`) claims its unreached neighbours v with a compare-exchange on
// parent[v] (UNREACHED -> u; one winner per vertex), sets level[v] to
// cur + 1 and appends v to the next queue (atomicAdd on next[0] reserves the
// slot). Which frontier vertex wins a contested v varies from run to run:
// parents are any valid BFS tree, levels are deterministic. The CPU sets
// next[0] = 0 before the launch and reads it after.
const UNREACHED: u32 = 0xffffffffu;

struct Params {
    // Vertices in `frontier` (its count word, as the CPU read it).
    count: u32,
    // Level of the frontier.
    cur: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> offsets: array<u32>;
@group(0) @binding(2) var<storage, read> cols: array<u32>;
@group(0) @binding(3) var<storage, read> frontier: array<u32>;
@group(0) @binding(4) var<storage, read_write> parent: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> level: array<u32>;
@group(0) @binding(6) var<storage, read_write> next: array<atomic<u32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * 256u;
    for (var i = gid.x; i < p.count; i += stride) {
        let u = frontier[1u + i];
        let a = offsets[u];
        let b = offsets[u + 1u];
        for (var k = a; k < b; k += 1u) {
            let v = cols[k];
            if (atomicLoad(&parent[v]) != UNREACHED) {
                continue;
            }
            // A weak exchange may fail spuriously: retry while v is unclaimed.
            loop {
                let r = atomicCompareExchangeWeak(&parent[v], UNREACHED, u);
                if (r.exchanged) {
                    level[v] = p.cur + 1u;
                    let slot = atomicAdd(&next[0], 1u);
                    atomicStore(&next[1u + slot], v);
                    break;
                }
                if (r.old_value != UNREACHED) {
                    break;
                }
            }
        }
    }
}
