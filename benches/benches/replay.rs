//! Pointer chasing with GPU faults + replay against the same kernel with its
//! working set declared up front (issue 5): lists of nodes scattered over a
//! managed buffer, walked by the `list` kernel.
//!
//! Run: `cargo bench -p svm-benches --bench replay` (writes
//! `results/replay.md`). Each row: median wall time of a launch starting
//! with every page on the host (the nodes re-written by the CPU between
//! repetitions), the replay count and the pages faulted.

mod common;

use std::time::Instant;

use common::median;
use svm::{Access, Arg, LaunchDescriptor, LaunchOptions, Svm, SvmDescriptor};

use svm::shaders::kernels::ListNode as Node;

fn main() {
    let svm = match Svm::with_descriptor(&SvmDescriptor::default().arena_size(512 << 20).pool_size(256 << 20)) {
        Ok(s) => s,
        Err(svm::SvmError::NoAdapter(m)) if std::env::var("SVM_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("SKIP: no adapter ({m})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let quick = std::env::args().any(|a| a == "--quick");
    let reps = if quick { 3 } else { 7 };
    let k = svm
        .create_kernel(&svm::KernelDescriptor {
            label: "list",
            source: svm::shaders::kernels::LIST,
            entry_point: "main",
        })
        .expect("kernel");
    let mut table = String::new();
    table.push_str(&format!(
        "Device: {}; fault backend {}; fault chunk {} KiB; medians of {reps}.\n\n",
        svm.device_info(),
        svm.fault_backend(),
        svm.fault_chunk() >> 10
    ));
    table.push_str("| nodes | node stride | lists | declared ms | faults + replay ms | ratio | replays | GPU-faulted pages |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    // (nodes, stride bytes): dense nodes, and one node per page (adversarial).
    let cases: &[(usize, usize)] =
        if quick { &[(1 << 18, 16), (4096, 4096)] } else { &[(1 << 20, 16), (1 << 18, 64), (8192, 4096)] };
    for &(n, stride) in cases {
        let lists = 4096usize.min(n / 4);
        let mut store = svm.alloc_vec::<u8>(n * stride).expect("nodes");
        let mut heads = svm.alloc_vec::<u64>(lists).expect("heads");
        let mut out = svm.alloc_vec::<u32>(lists).expect("out");
        let base = store.as_ptr() as u64;
        let mut order: Vec<usize> = (0..n).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..n).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let fill = |store: &mut svm::ManagedVec<u8>, heads: &mut svm::ManagedVec<u64>| {
            for (pos, &slot) in order.iter().enumerate() {
                let next = order.get(pos + lists).map_or(0, |&s| base + (s * stride) as u64);
                let node = Node { next, value: slot as u32, pad: 0 };
                store[slot * stride..slot * stride + 16].copy_from_slice(bytemuck::bytes_of(&node));
                if pos < lists {
                    heads[pos] = base + (slot * stride) as u64;
                }
            }
        };
        let args = [Arg::ptr(heads.as_ptr()), Arg::ptr(out.as_ptr()), Arg::U32(lists as u32), Arg::U32(n as u32)];
        let wg = [(lists as u32).div_ceil(64), 1, 1];
        let (mut declared, mut faulting) = (Vec::new(), Vec::new());
        let mut last = svm::LaunchReport::default();
        for _ in 0..reps {
            fill(&mut store, &mut heads);
            let t = Instant::now();
            svm.launch(
                &k,
                &LaunchDescriptor {
                    args: &args,
                    access: &[Access::read(&store), Access::read(&heads), Access::read_write(&mut out)],
                    bindings: &[],
                    workgroups: wg,
                },
            )
            .expect("declared launch");
            declared.push(t.elapsed().as_secs_f64() * 1e3);
            let reference = out.to_vec();
            fill(&mut store, &mut heads);
            let t = Instant::now();
            last = svm
                .launch_with(
                    &k,
                    // Only the output declared (replayable launches write
                    // only declared ranges): the list is reached by faults.
                    &LaunchDescriptor {
                        args: &args,
                        access: &[Access::read_write(&mut out)],
                        bindings: &[],
                        workgroups: wg,
                    },
                    &LaunchOptions::replayable().max_replays(1 << 14),
                )
                .expect("replayable launch");
            faulting.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(out.to_vec(), reference, "replayed results differ from the declared launch");
        }
        let (d, f) = (median(&mut declared), median(&mut faulting));
        table.push_str(&format!(
            "| {n} | {stride} B | {lists} | {d:.1} | {f:.1} | {:.2}x | {} | {} |\n",
            f / d,
            last.replays,
            last.gpu_fault_pages
        ));
    }
    println!("{table}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let path = if quick { dir.join("quick/replay.md") } else { dir.join("replay.md") };
    let _ = std::fs::create_dir_all(path.parent().expect("parent"));
    let cmd = if quick {
        "cargo bench -p svm-benches --bench replay -- --quick"
    } else {
        "cargo bench -p svm-benches --bench replay"
    };
    std::fs::write(
        &path,
        format!("# Pointer chasing: GPU faults + replay vs declared working set\n\nCommand: `{cmd}`\n\n{table}"),
    )
    .expect("write results");
    println!("wrote {}", path.display());
}
