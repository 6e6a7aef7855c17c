//! Graph500 Kronecker graph generator and CSR construction.

use crate::util::{progress, Rng};

/// Graph500 initiator probabilities (D = 1 - A - B - C = 0.05).
pub const A: f64 = 0.57;
pub const B: f64 = 0.19;
pub const C: f64 = 0.19;
/// Graph500 edge factor: edges = 16 * vertices.
pub const EDGE_FACTOR: usize = 16;

/// An undirected graph: the generated edge list (with its self-loops and
/// duplicates, as Graph500 keeps them) and its symmetric CSR adjacency
/// (self-loops dropped; each list in edge-list order).
pub struct Graph {
    pub n: usize,
    pub edges: Vec<(u32, u32)>,
    pub offsets: Vec<u32>,
    pub cols: Vec<u32>,
}

impl Graph {
    pub fn degree(&self, v: usize) -> usize {
        (self.offsets[v + 1] - self.offsets[v]) as usize
    }
    pub fn neighbours(&self, v: usize) -> &[u32] {
        &self.cols[self.offsets[v] as usize..self.offsets[v + 1] as usize]
    }
}

/// `EDGE_FACTOR << scale` edges over `1 << scale` vertices, as the Graph500
/// reference generator draws them (one quadrant choice per bit), then
/// vertex labels permuted at random so that the hubs are not the low numbers.
pub fn generate(scale: u32, seed: u64) -> Graph {
    let n = 1usize << scale;
    let m = EDGE_FACTOR * n;
    let mut rng = Rng::new(seed);
    let ab = A + B;
    let c_norm = C / (1.0 - ab);
    let a_norm = A / ab;
    let pb = progress(m as u64, "generating Kronecker edges");
    let mut edges = Vec::with_capacity(m);
    for e in 0..m {
        let (mut i, mut j) = (0u32, 0u32);
        for bit in 0..scale {
            let ii = rng.unit() > ab;
            let jj = rng.unit() > if ii { c_norm } else { a_norm };
            i |= u32::from(ii) << bit;
            j |= u32::from(jj) << bit;
        }
        edges.push((i, j));
        if e % 65536 == 65535 {
            pb.inc(65536);
        }
    }
    pb.finish_and_clear();
    let mut perm: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut perm);
    for e in &mut edges {
        *e = (perm[e.0 as usize], perm[e.1 as usize]);
    }

    let mut deg = vec![0u32; n + 1];
    for &(u, v) in &edges {
        if u != v {
            deg[u as usize] += 1;
            deg[v as usize] += 1;
        }
    }
    let mut offsets = vec![0u32; n + 1];
    for v in 0..n {
        offsets[v + 1] = offsets[v] + deg[v];
    }
    let mut fill = offsets.clone();
    let mut cols = vec![0u32; offsets[n] as usize];
    for &(u, v) in &edges {
        if u != v {
            cols[fill[u as usize] as usize] = v;
            fill[u as usize] += 1;
            cols[fill[v as usize] as usize] = u;
            fill[v as usize] += 1;
        }
    }
    Graph { n, edges, offsets, cols }
}
