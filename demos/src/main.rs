//! svm demos: kernels on managed memory built by the CPU, checked against a
//! CPU reference, with migration statistics.
//!
//! `svm-demos all` runs every demo at its default size (the README's main
//! command); `svm-demos vadd --size 1000000 --fault mprotect` runs one.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use svm::{Access, Arg, FaultBackendKind, KernelDescriptor, LaunchDescriptor, Svm, SvmDescriptor};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Demo {
    /// c = a + b over `size` floats (default 16 M).
    Vadd,
    /// Sum `size` linked-list nodes (default 1 M) scattered over the arena.
    List,
    /// Every demo at its default size.
    All,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Fault {
    Uffd,
    Mprotect,
}

#[derive(Parser, Debug)]
#[command(version, about = "Shared-virtual-memory demos on wgpu/Vulkan")]
struct Cli {
    /// Which demo.
    demo: Demo,
    /// Problem size (elements or nodes); each demo has a default.
    #[arg(long)]
    size: Option<usize>,
    /// CPU fault backend (default: $SVM_FAULT_BACKEND, else uffd).
    #[arg(long, value_enum)]
    fault: Option<Fault>,
    /// Bytes migrated back per CPU fault (4096 .. 2097152).
    #[arg(long, default_value_t = 64 << 10)]
    chunk: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut desc = SvmDescriptor::default().fault_chunk(cli.chunk);
    if let Some(f) = cli.fault {
        desc = desc.fault_backend(match f {
            Fault::Uffd => FaultBackendKind::Uffd,
            Fault::Mprotect => FaultBackendKind::Mprotect,
        });
    }
    let svm = Svm::with_descriptor(&desc).context("creating the svm runtime")?;
    println!(
        "svm: device {}, fault backend {}, arena {} MiB at {:#x}, pool {} MiB, fault chunk {} KiB",
        svm.device_info(),
        svm.fault_backend(),
        svm.arena_size() >> 20,
        svm.arena_base(),
        (svm.pool_pages() as usize * 4096) >> 20,
        svm.fault_chunk() >> 10
    );
    let mut failed = Vec::new();
    let demos: &[Demo] = match cli.demo {
        Demo::All => &[Demo::Vadd, Demo::List],
        d => std::slice::from_ref(match d {
            Demo::Vadd => &Demo::Vadd,
            _ => &Demo::List,
        }),
    };
    for &d in demos {
        let before = svm.stats();
        let t = Instant::now();
        let r = match d {
            Demo::Vadd => vadd(&svm, cli.size.unwrap_or(16 << 20)),
            Demo::List => list(&svm, cli.size.unwrap_or(1 << 20)),
            Demo::All => unreachable!(),
        };
        let s = svm.stats().since(&before);
        match r {
            Ok(()) => println!("[{d:?}] result check: OK ({:.2} s)", t.elapsed().as_secs_f64()),
            Err(e) => {
                println!("[{d:?}] result check: FAILED: {e:#}");
                failed.push(d);
            }
        }
        println!("[{d:?}] migration statistics:\n{s}");
        if r_ok(&s) {
            println!("[{d:?}] pages went to the device and came back by CPU fault");
        }
    }
    if !failed.is_empty() {
        bail!("demos failed: {failed:?}");
    }
    Ok(())
}

fn r_ok(s: &svm::Stats) -> bool {
    s.h2d_pages > 0 && s.d2h_pages > 0 && s.cpu_faults > 0
}

fn kernel(svm: &Svm, label: &str, source: &str) -> Result<svm::Kernel> {
    Ok(svm.create_kernel(&KernelDescriptor { label, source, entry_point: "main" })?)
}

fn vadd(svm: &Svm, n: usize) -> Result<()> {
    println!("[Vadd] c = a + b over {n} floats ({} MiB per array)", n * 4 >> 20);
    let k = kernel(svm, "vadd", svm::shaders::kernels::VADD)?;
    let mut a = svm.alloc_vec::<f32>(n)?;
    let mut b = svm.alloc_vec::<f32>(n)?;
    let mut c = svm.alloc_vec::<f32>(n)?;
    let t = Instant::now();
    for i in 0..n {
        a[i] = (i % 1000) as f32 * 0.5;
        b[i] = (i % 777) as f32 + 0.25;
    }
    println!("[Vadd] CPU fill: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let args = [Arg::ptr(a.as_ptr()), Arg::ptr(b.as_ptr()), Arg::ptr(c.as_ptr()), Arg::U32(u32::try_from(n)?)];
    let t = Instant::now();
    svm.launch(&k, &LaunchDescriptor {
        args: &args,
        access: &[Access::read(&a), Access::read(&b), Access::read_write(&mut c)],
        workgroups: [4096, 1, 1],
    })?;
    println!("[Vadd] launch (migrate in + kernel): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let mut bad = 0usize;
    for i in 0..n {
        if c[i] != a[i] + b[i] {
            bad += 1;
        }
    }
    println!("[Vadd] CPU check (migrates c back by fault): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    if bad != 0 {
        bail!("{bad} of {n} elements wrong");
    }
    Ok(())
}

/// The `list` kernel's node (16 bytes).
#[repr(C)]
#[derive(Copy, Clone, bytemuck::Pod, bytemuck::Zeroable)]
struct Node {
    next: u64,
    value: u32,
    pad: u32,
}

fn list(svm: &Svm, n: usize) -> Result<()> {
    let lists = 4096usize.min(n);
    println!("[List] {n} nodes in {lists} linked lists, linked in random order");
    let k = kernel(svm, "list", svm::shaders::kernels::LIST)?;
    let mut nodes = svm.alloc_vec::<Node>(n)?;
    let mut heads = svm.alloc_vec::<u64>(lists)?;
    let mut out = svm.alloc_vec::<u32>(lists)?;
    // Random placement: list position `pos` lives in slot order[pos].
    let mut order: Vec<usize> = (0..n).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let base = nodes.as_mut_ptr();
    let mut want = vec![0u32; lists];
    for (pos, &slot) in order.iter().enumerate() {
        let l = pos % lists;
        let value = u32::try_from(slot % 1_000_003)?;
        want[l] = want[l].wrapping_add(value);
        let next = order.get(pos + lists).map_or(0, |&s| base.wrapping_add(s) as u64);
        nodes[slot] = Node { next, value, pad: 0 };
        if pos < lists {
            heads[l] = base.wrapping_add(slot) as u64;
        }
    }
    let args = [Arg::ptr(heads.as_ptr()), Arg::ptr(out.as_ptr()), Arg::U32(u32::try_from(lists)?), Arg::U32(u32::try_from(n)?)];
    let t = Instant::now();
    svm.launch(&k, &LaunchDescriptor {
        args: &args,
        access: &[Access::read(&nodes), Access::read(&heads), Access::read_write(&mut out)],
        workgroups: [u32::try_from(lists.div_ceil(64))?, 1, 1],
    })?;
    println!("[List] launch (migrate in + walk): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let bad = out.iter().zip(&want).filter(|(a, b)| a != b).count();
    if bad != 0 {
        bail!("{bad} of {lists} list sums wrong");
    }
    Ok(())
}
