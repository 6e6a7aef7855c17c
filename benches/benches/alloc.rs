//! Small allocations (issue 16): arena bytes per allocation and the cost
//! of alloc + free, for 16-byte nodes allocated one by one through the
//! runtime's `Allocator` (`allocator_api2::boxed::Box<_, Svm>`, sub-page
//! slab blocks) and `alloc_box`, against the system allocator and a
//! page-granular managed allocation (`alloc_vec` of one node), side by side
//! in one run, medians of interleaved rounds.
//!
//! Run: `cargo bench -p svm-benches --bench alloc` (writes
//! `results/alloc.md`); `-- --quick` for fewer nodes.

use std::time::Instant;

use svm::allocator_api2::boxed::Box as ABox;
use svm::{Svm, SvmDescriptor};

#[path = "common/mod.rs"]
mod common;

#[repr(C)]
#[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
struct Node {
    next: u64,
    value: u32,
    pad: u32,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 20_000 } else { 200_000 };
    let svm = match Svm::with_descriptor(&SvmDescriptor::default().arena_size(1 << 30).pool_size(64 << 20)) {
        Ok(s) => s,
        Err(svm::SvmError::NoAdapter(m)) if !common::gpu_required() => {
            eprintln!("SKIP: no adapter ({m})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let node = |i: usize| Node { next: 0, value: i as u32, pad: 0 };
    let rounds = if quick { 3 } else { 5 };
    let (mut sys, mut slab, mut boxed, mut page) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes_slab = 0.0;
    let mut bytes_page = 0.0;
    for _ in 0..rounds {
        // System allocator.
        let t = Instant::now();
        let v: Vec<Box<Node>> = (0..n).map(|i| Box::new(node(i))).collect();
        drop(v);
        sys.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        // The runtime's Allocator (slab blocks).
        let t = Instant::now();
        let v: Vec<ABox<Node, Svm>> = (0..n).map(|i| ABox::new_in(node(i), svm.clone())).collect();
        let span = {
            let lo = v.iter().map(|b| &**b as *const Node as usize).min().unwrap_or(0);
            let hi = v.iter().map(|b| &**b as *const Node as usize).max().unwrap_or(0);
            (hi - lo + 16).next_multiple_of(4096)
        };
        drop(v);
        slab.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        bytes_slab = span as f64 / n as f64;
        // alloc_box (slab blocks, owner type).
        let t = Instant::now();
        let v: Vec<_> = (0..n).map(|i| svm.alloc_box(node(i)).expect("box")).collect();
        drop(v);
        boxed.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        // Page-granular managed allocation of one node (a tenth: each takes
        // a page).
        let m = n / 10;
        let t = Instant::now();
        let v: Vec<_> = (0..m).map(|i| svm.alloc_from_slice(&[node(i)]).expect("page")).collect();
        bytes_page = 4096.0;
        drop(v);
        page.push(t.elapsed().as_secs_f64() * 1e9 / m as f64);
    }
    let (sys, slab, boxed, page) =
        (common::median(&mut sys), common::median(&mut slab), common::median(&mut boxed), common::median(&mut page));
    let table = format!(
        "| allocation of a 16-byte node | arena bytes per node | alloc + free ns per node | vs system |\n\
         |---|---:|---:|---:|\n\
         | `std::boxed::Box` (system allocator) | — | {sys:.0} | 1× |\n\
         | `allocator_api2::boxed::Box<_, Svm>` (slab block) | {bytes_slab:.1} | {slab:.0} | {:.1}× |\n\
         | `Svm::alloc_box` (slab block) | 16 | {boxed:.0} | {:.1}× |\n\
         | `Svm::alloc_from_slice(&[node])` (a page) | {bytes_page:.0} | {page:.0} | {:.1}× |\n",
        slab / sys,
        boxed / sys,
        page / sys,
    );
    let cmd = format!("cargo bench -p svm-benches --bench alloc{}", if quick { " -- --quick" } else { "" });
    let out = format!(
        "# Small allocations\n\n{n} nodes per round, {rounds} rounds, medians; device: {}; command: `{cmd}`.\n\
         Arena bytes per node: the address span the nodes occupy, divided by their number.\n\n{table}",
        svm.device_info()
    );
    println!("{out}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let path = if quick { dir.join("quick/alloc.md") } else { dir.join("alloc.md") };
    let _ = std::fs::create_dir_all(path.parent().expect("dir"));
    std::fs::write(&path, out).expect("write results");
    eprintln!("wrote {}", path.display());
}
