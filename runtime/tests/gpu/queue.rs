//! Launch queues and a runtime that does not stop the world: launches that
//! return before their kernel ends, CPU faults / alloc / free on other data
//! served while a kernel runs, accesses to a running kernel's data waiting
//! for it, in-order queues, and handles that are leaked or outlive nothing.
//! Every test runs in the mapping mode of the run and under both backends.

use std::time::{Duration, Instant};

use svm::{Access, AccessMode, Arg, Binding, LaunchDescriptor, LaunchError, ManagedVec, Svm};

use crate::{ctx, kernel, small, BACKENDS};

/// A long kernel: 64 invocations run a xorshift `p.x` times over their word.
const SPIN: &str = "struct P { x: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read_write> a: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x >= arrayLength(&a)) { return; }
    var x = a[g.x] | 1u;
    for (var k = 0u; k < p.x; k++) { x ^= x << 13u; x ^= x >> 17u; x ^= x << 5u; }
    a[g.x] = x;
}";

/// b[i] = b[i] * 2 + p.x
const STEP: &str = "struct P { x: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read_write> b: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&b)) { b[g.x] = b[g.x] * 2u + p.x; }
}";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct P {
    x: u32,
    pad: [u32; 3],
}

fn p(x: u32) -> P {
    P { x, pad: [0; 3] }
}

/// Iterations of SPIN for about `target` on this machine.
fn calibrate(svm: &Svm, spin: &svm::Kernel, a: &mut ManagedVec<u32>, target: Duration) -> u32 {
    let run = |a: &mut ManagedVec<u32>, iters: u32| {
        let t = Instant::now();
        svm.launch(
            spin,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(a), Binding::uniform(&p(iters))],
                ..Default::default()
            },
        )
        .expect("spin");
        t.elapsed()
    };
    run(a, 1);
    let mut iters: u64 = 1 << 16;
    loop {
        let t = run(a, iters as u32);
        if t >= Duration::from_millis(100) || iters >= u64::from(u32::MAX) / 4 {
            return ((iters as f64 * target.as_secs_f64() / t.as_secs_f64()) as u64).clamp(1, u64::from(u32::MAX))
                as u32;
        }
        iters *= 4;
    }
}

/// Make every page of `b` device-owned (a launch writes it).
fn make_device_owned(svm: &Svm, step: &svm::Kernel, b: &mut ManagedVec<u32>) {
    let wg = [(b.len() as u32).div_ceil(64), 1, 1];
    svm.launch(
        step,
        &LaunchDescriptor {
            bindings: &[Binding::read_write(b), Binding::uniform(&p(1))],
            workgroups: wg,
            ..Default::default()
        },
    )
    .expect("step");
}

/// While a long kernel runs on data A, the CPU reads device-owned data B
/// (CPU faults), allocates and frees: all of it completes before the kernel
/// does. (With the update lock held across kernels, each waited for it.)
#[test]
fn cpu_work_on_other_data_does_not_wait_for_a_running_kernel() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let spin = kernel(&svm, "spin", SPIN);
        let step = kernel(&svm, "step", STEP);
        let mut a = svm.alloc_vec::<u32>(64).expect("a");
        let n = 64 * 1024;
        let mut b = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("b");
        let iters = calibrate(&svm, &spin, &mut a, Duration::from_secs(2));
        make_device_owned(&svm, &step, &mut b);
        let q = svm.create_queue();
        let faults0 = svm.stats().cpu_faults;
        let u = p(iters);
        let t0 = Instant::now();
        let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
        let pending = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
        let submitted = t0.elapsed();
        // CPU faults on B (device-owned, not used by the kernel).
        let sum: u64 = (0..n).step_by(4096).map(|i| u64::from(b[i])).sum();
        let want: u64 = (0..n).step_by(4096).map(|i| u64::from(i as u32 * 2 + 1)).sum();
        let raw = svm.alloc(4096).expect("alloc while a kernel runs");
        svm.free(raw.as_ptr()).expect("free while a kernel runs");
        let done_early = !pending.is_complete();
        let cpu_side = t0.elapsed();
        pending.wait().expect("spin");
        let kernel_time = t0.elapsed();
        assert_eq!(sum, want, "B read back right ({backend:?})");
        if svm.mapping_mode() != svm::MappingMode::Coherent {
            assert!(svm.stats().cpu_faults > faults0, "B came back by CPU faults");
        }
        // On one GPU queue (lavapipe), staged and sparse d2h copies queue
        // behind the kernel: there only alloc/free are checked.
        let copies_on_the_queue = !svm.pool_is_host_mapped() && svm.mapping_mode() != svm::MappingMode::Coherent;
        if !copies_on_the_queue {
            assert!(
                done_early,
                "CPU faults, alloc and free took {cpu_side:?} of a {kernel_time:?} kernel (submitted in {submitted:?}): they waited for it ({backend:?})"
            );
        }
    }
}

/// Alloc and free never wait for a kernel, on every path.
#[test]
fn alloc_and_free_do_not_wait_for_a_running_kernel() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let spin = kernel(&svm, "spin", SPIN);
    let mut a = svm.alloc_vec::<u32>(64).expect("a");
    let iters = calibrate(&svm, &spin, &mut a, Duration::from_secs(2));
    let q = svm.create_queue();
    let u = p(iters);
    let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
    let pending = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
    for _ in 0..10 {
        let v = svm.alloc_vec::<u32>(1000).expect("alloc");
        drop(v);
        let raw = svm.alloc(8192).expect("alloc");
        svm.free(raw.as_ptr()).expect("free");
    }
    assert!(!pending.is_complete(), "alloc/free waited for the kernel");
    pending.wait().expect("spin");
}

/// A CPU access to data a running kernel writes waits for the kernel and
/// sees its result — also when the launch's handle was leaked (its borrows
/// end early), in every mode: written pages are the device's (or, in place,
/// taken from the CPU) until the kernel is done.
#[test]
fn leaked_handle_cpu_access_waits_for_the_kernel() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let spin = kernel(&svm, "spin", SPIN);
        let mut a = svm.alloc_from_slice(&(0..64u32).collect::<Vec<_>>()).expect("a");
        let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(500));
        let start: Vec<u32> = a.to_vec();
        // The result the kernel computes.
        let want: Vec<u32> = start
            .iter()
            .map(|&v| {
                let mut x = v | 1;
                for _ in 0..iters {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                }
                x
            })
            .collect();
        let q = svm.create_queue();
        let u = p(iters);
        let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
        let pending = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
        std::mem::forget(pending);
        // The borrow of `a` has ended; reading it must not race the kernel.
        assert_eq!(a.to_vec(), want, "a read while its kernel ran saw all of it ({backend:?})");
    }
}

/// dst[i] = src[i] * 2 + p.x
const CHAIN: &str = "struct P { x: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&dst)) { dst[g.x] = src[g.x] * 2u + p.x; }
}";

/// A dependent chain queued without a wait in between (v1 from v0, v2
/// from v1, …: each launch reads what the previous one writes, so the
/// borrows are raw), runs in submission order; a second thread queues its
/// own chain on a second queue meanwhile.
#[test]
fn queued_launches_run_in_order_on_one_and_several_queues() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let chain = kernel(&svm, "chain", CHAIN);
        let n = 10_000usize;
        let wg = [(n as u32).div_ceil(64), 1, 1];
        let us: Vec<P> = (0..8).map(p).collect();
        let run_chain = |seed: u32| -> Vec<u32> {
            let q = svm.create_queue();
            let vs: Vec<ManagedVec<u32>> =
                (0..9).map(|k| svm.alloc_from_slice(&vec![if k == 0 { seed } else { 0 }; n]).expect("v")).collect();
            let bytes = n * 4;
            // SAFETY: no Rust reference to any v[k] is used until every
            // handle below is waited for.
            let bindings: Vec<[Binding<'_>; 3]> = (1..9)
                .map(|k| unsafe {
                    [
                        Binding::raw(vs[k - 1].as_ptr().cast(), bytes, AccessMode::Read),
                        Binding::raw(vs[k].as_ptr().cast(), bytes, AccessMode::ReadWrite),
                        Binding::uniform(&us[k - 1]),
                    ]
                })
                .collect();
            let mut pending = Vec::new();
            for bindings in &bindings {
                pending.push(
                    q.launch(&chain, &LaunchDescriptor { bindings, workgroups: wg, ..Default::default() })
                        .expect("submit"),
                );
            }
            assert!(q.in_flight() <= 8);
            for pend in pending {
                pend.wait().expect("chain step");
            }
            q.finish();
            vs[8].to_vec()
        };
        let (mine, theirs) = std::thread::scope(|s| {
            let other = s.spawn(|| run_chain(5));
            (run_chain(1), other.join().expect("other thread"))
        });
        let want = |seed: u32| (0..8u32).fold(seed, |v, k| v * 2 + k);
        assert!(mine.iter().all(|&x| x == want(1)), "chain in order ({backend:?}): {} != {}", mine[0], want(1));
        assert!(theirs.iter().all(|&x| x == want(5)), "second queue's chain ({backend:?})");
    }
}

/// Pointer-access kernels (prelude) on a queue: several submitted before
/// any is waited for (raw declarations), each with its own log: a refused
/// access is reported by its own handle, not another's.
#[test]
fn each_pending_reports_its_own_errors() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    // Writes word 0 of the pointer given; the second launch points outside
    // what it declared.
    let k = kernel(&svm, "store", "@compute @workgroup_size(1) fn main() { svm_store_u32(svm_arg_ptr(0u), 7u); }");
    let good = svm.alloc_vec::<u32>(1024).expect("good");
    let other = svm.alloc_vec::<u32>(1024).expect("other");
    let q = svm.create_queue();
    // SAFETY: no Rust reference to `good` is used until the handles are waited for.
    let acc = [unsafe { Access::raw(good.as_ptr().cast(), 4096, AccessMode::ReadWrite) }];
    let ok_args = [Arg::ptr(good.as_ptr())];
    let bad_args = [Arg::ptr(other.as_ptr())];
    let first =
        q.launch(&k, &LaunchDescriptor { args: &ok_args, access: &acc, ..Default::default() }).expect("submit 1");
    let second =
        q.launch(&k, &LaunchDescriptor { args: &bad_args, access: &acc, ..Default::default() }).expect("submit 2");
    let third =
        q.launch(&k, &LaunchDescriptor { args: &ok_args, access: &acc, ..Default::default() }).expect("submit 3");
    assert!(third.wait().is_ok());
    assert!(matches!(second.wait(), Err(LaunchError::Kernel { .. })), "the refused store is the second's");
    assert!(first.wait().is_ok());
    assert_eq!(good[0], 7);
    assert_eq!(other[0], 0, "the refused store did nothing");
}

/// A handle is a future: `.await` in an executor gives the launch's result.
#[test]
fn pending_is_a_future() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let step = kernel(&svm, "step", STEP);
    let mut b = svm.alloc_from_slice(&vec![3u32; 256]).expect("b");
    let q = svm.create_queue();
    let u = p(5);
    let report = pollster::block_on(async {
        q.launch(
            &step,
            &LaunchDescriptor {
                bindings: &[Binding::read_write(&mut b), Binding::uniform(&u)],
                workgroups: [4, 1, 1],
                ..Default::default()
            },
        )
        .expect("submit")
        .await
    })
    .expect("launch");
    assert_eq!(report.replays, 0);
    assert!(b.iter().all(|&x| x == 11));
}

/// Dropping the runtime while leaked launches are in flight waits for them.
#[test]
fn dropping_the_runtime_with_launches_in_flight_waits_for_them() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let spin = kernel(&svm, "spin", SPIN);
    let mut a = svm.alloc_vec::<u32>(64).expect("a");
    let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(300));
    let q = svm.create_queue();
    let u = p(iters);
    for _ in 0..3 {
        let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
        let pend = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
        std::mem::forget(pend);
    }
    drop(a);
    drop(q);
    drop(spin);
    drop(svm);
}

/// A device lost while launches are in flight fails their handles with a
/// typed error (and later launches too).
#[test]
fn a_lost_device_fails_every_pending_handle() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let spin = kernel(&svm, "spin", SPIN);
    let mut a = svm.alloc_vec::<u32>(64).expect("a");
    let mut b = svm.alloc_vec::<u32>(64).expect("b");
    let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(500));
    let q = svm.create_queue();
    let u = p(iters);
    let first_binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
    let first = q.launch(&spin, &LaunchDescriptor { bindings: &first_binds, ..Default::default() }).expect("submit 1");
    let second_binds = [Binding::read_write(&mut b), Binding::uniform(&u)];
    let second =
        q.launch(&spin, &LaunchDescriptor { bindings: &second_binds, ..Default::default() }).expect("submit 2");
    svm.destroy_device_for_testing();
    for (i, r) in [first.wait(), second.wait()].into_iter().enumerate() {
        match r {
            Err(LaunchError::Device(svm::DeviceError::Lost(_))) => {}
            // The first may have finished before the loss.
            Ok(_) if i == 0 => {}
            other => panic!("launch {i} after a device loss: {other:?}"),
        }
    }
    let mut c = svm.alloc_vec::<u32>(64).expect("c");
    let third_binds = [Binding::read_write(&mut c), Binding::uniform(&u)];
    let r = q.launch(&spin, &LaunchDescriptor { bindings: &third_binds, ..Default::default() }).map(|_| ());
    assert!(matches!(r, Err(LaunchError::Device(svm::DeviceError::Lost(_)))), "{r:?}");
    std::mem::forget(a);
    std::mem::forget(b);
    std::mem::forget(c);
}
