//! Launch queues and a runtime that does not stop the world: launches that
//! return before their kernel ends, CPU faults / alloc / free on other data
//! served while a kernel runs, accesses to a running kernel's data waiting
//! for it, in-order queues, and handles that are leaked or outlive nothing.
//! Every test runs in the mapping mode of the run and under both backends.

use std::time::{Duration, Instant};

use svm::{Access, AccessMode, Arg, Binding, LaunchDescriptor, LaunchError, ManagedVec, Svm};

use crate::{ctx, kernel, small, BACKENDS};

/// A long kernel: 64 invocations run a xorshift `p.x` times over their word.
pub(crate) const SPIN: &str = "struct P { x: u32, pad0: u32, pad1: u32, pad2: u32 }
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
pub(crate) const STEP: &str = "struct P { x: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read_write> b: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x < arrayLength(&b)) { b[g.x] = b[g.x] * 2u + p.x; }
}";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct P {
    x: u32,
    pad: [u32; 3],
}

pub(crate) fn p(x: u32) -> P {
    P { x, pad: [0; 3] }
}

/// What SPIN (and LATE) compute from `v`: `iters` xorshift steps of `v | 1`.
pub(crate) fn spun(v: u32, iters: u32) -> u32 {
    let mut x = v | 1;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
    }
    x
}

/// Iterations of SPIN for about `target` on this machine.
pub(crate) fn calibrate(svm: &Svm, spin: &svm::Kernel, a: &mut ManagedVec<u32>, target: Duration) -> u32 {
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
pub(crate) fn make_device_owned(svm: &Svm, step: &svm::Kernel, b: &mut ManagedVec<u32>) {
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
    let t = Instant::now();
    let pending = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
    if crate::kernel_ran_inside_submit(
        &svm,
        t.elapsed() > Duration::from_secs(1),
        "alloc and free beside a running kernel",
    ) {
        return;
    }
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
        let want: Vec<u32> = start.iter().map(|&v| spun(v, iters)).collect();
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

/// Advice given on a queue comes after the queue's launches on the range
/// (they finish first) and holds for its later ones: a ~300 ms kernel
/// writes the range, and the advice, given while it runs, returns after it.
#[test]
fn queue_advice_comes_after_the_launches_on_the_range() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let spin = kernel(&svm, "spin", SPIN);
        let mut a = svm.alloc_vec::<u32>(64).expect("a");
        let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(300));
        let want: Vec<u32> = a.iter().map(|&v| spun(v, iters)).collect();
        let (u, bytes, addr) = (p(iters), a.len() * 4, a.as_ptr().cast::<u8>());
        let q = svm.create_queue();
        let t = Instant::now();
        let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
        let pend = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("launch");
        if crate::kernel_ran_inside_submit(&svm, t.elapsed() > Duration::from_millis(150), "advice behind a launch") {
            return;
        }
        let running = !pend.is_complete();
        // (The address taken before the launch borrowed `a`: advice reads no data.)
        q.advise(addr, bytes, svm::Advice::PreferredLocation(svm::Location::Host)).expect("advise");
        assert!(running, "{backend:?}: the kernel ended before the advice: test too short");
        assert!(pend.is_complete(), "{backend:?}: the advice came before the launch writing its range had finished");
        pend.wait().expect("launch");
        let info = svm.range_info(a.as_ptr().cast(), bytes).expect("info");
        assert_eq!(info.preferred_host, info.pages, "{backend:?}: {info:?}");
        assert_eq!(a.to_vec(), want, "{backend:?}");
        assert!(q.advise(std::ptr::null(), 4, svm::Advice::ReadMostly).is_err(), "a bad range is refused");
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
    let t = Instant::now();
    let first = q.launch(&spin, &LaunchDescriptor { bindings: &first_binds, ..Default::default() }).expect("submit 1");
    let inline = t.elapsed() > Duration::from_millis(250);
    if crate::kernel_ran_inside_submit(&svm, inline, "losing the device under launches in flight") {
        return;
    }
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

/// 520 pages of data (`t`) in a 6 MiB (1536-page) software pool, made
/// device-owned in 5 pieces of 104 pages with 200 pages of other data after
/// each, which is then freed: only `t` is on the device, and no free run of
/// frames is as long as it. `None` outside the software mode.
fn fragmented_520_pages(staged: bool) -> Option<(crate::TestSvm, svm::Kernel, ManagedVec<u32>, Vec<u32>)> {
    let svm = ctx(small(BACKENDS[0]).pool_size(6 << 20).host_mapped_pool(!staged))?;
    if svm.mapping_mode() != svm::MappingMode::Software {
        eprintln!("NOT APPLICABLE: bound ranges need placing only in the software pool");
        return None;
    }
    let step = kernel(&svm, "step", STEP);
    let page = 1024usize;
    let start: Vec<u32> = (0..(520 * page) as u32).map(|i| i ^ 0x5555_5555).collect();
    let t = svm.alloc_from_slice(&start).expect("t");
    let mut fillers: Vec<ManagedVec<u32>> = (0..5).map(|_| svm.alloc_vec::<u32>(200 * page).expect("filler")).collect();
    let u = p(1);
    for (i, f) in fillers.iter_mut().enumerate() {
        // SAFETY: no Rust reference to `t` is alive during the launch.
        let piece =
            unsafe { Binding::raw(t.as_ptr().add(i * 104 * page).cast(), 104 * page * 4, AccessMode::ReadWrite) };
        svm.launch(
            &step,
            &LaunchDescriptor {
                bindings: &[piece, Binding::uniform(&u)],
                workgroups: [1664, 1, 1],
                ..Default::default()
            },
        )
        .expect("piece");
        make_device_owned(&svm, &step, f);
    }
    drop(fillers);
    assert_eq!(svm.device_resident_pages(), 520, "only t is on the device");
    let now = start.iter().map(|&x| x * 2 + 1).collect();
    Some((svm, step, t, now))
}

/// Found by the stress (`conformance::stress::short_stress`, queue workers,
/// seed 0x5eed, every backend, software mode): in the software pool, a bound
/// range of more than a third of the pool whose pages are resident in
/// pieces fails with `PoolExhausted` although the pool is otherwise empty:
/// placing it (`bindable.rs`, `move_together`) evicts every page the launch
/// does not use, then looks for a free run as long as the range — but the
/// range's own frames, which the move copies out through a scratch buffer
/// anyway, stay allocated and cut the free frames into runs shorter than
/// it. Not about queues (a synchronous launch does it); the logic predates
/// them (bound access, 0d9b3ae).
#[test]
fn bound_range_in_pieces_is_placed_when_the_pool_is_free() {
    let Some((svm, step, mut t, _)) = fragmented_520_pages(false) else { return };
    let u = p(1);
    let r = svm.launch(
        &step,
        &LaunchDescriptor {
            bindings: &[Binding::read_write(&mut t), Binding::uniform(&u)],
            workgroups: [8320, 1, 1],
            ..Default::default()
        },
    );
    assert!(r.is_ok(), "a 520-page bound range in a 1536-page pool holding nothing else: {r:?}");
    let want = |i: usize| ((i as u32 ^ 0x5555_5555).wrapping_mul(2) + 1).wrapping_mul(2).wrapping_add(1);
    assert!((0..520 * 1024).step_by(997).all(|i| t[i] == want(i)));
}

/// Found by the stress (`SVM_MAPPED_POOL=0`, queue workers; mismatches of
/// whole 64 KiB fault chunks reading 0): on the staged path (pool not
/// host-mapped), a `write_discard` launch that fails after residency — here
/// `PoolExhausted` from the placement bug above — has already cleared on
/// the device the pages it covers whole and were host-owned (instead of
/// copying them in), and leaves them device-owned: their data is lost
/// (read back as zeros), though the launch did not run and `PoolExhausted`
/// promises nothing changed. Here: 11 CPU writes take 11 fault chunks of 16
/// pages back to the host, the refused launch zeroes all 176 pages.
#[test]
fn refused_write_discard_launch_keeps_the_data() {
    let Some((svm, step, mut t, mut want)) = fragmented_520_pages(true) else { return };
    let page = 1024usize;
    // The CPU takes some of t back (host-owned pages, which a discard
    // clears on the device instead of copying in).
    for i in (0..520 * page).step_by(48 * page) {
        t[i] = 1;
        want[i] = 1;
    }
    let u = p(1);
    let r = svm.launch(
        &step,
        &LaunchDescriptor {
            bindings: &[Binding::write_discard(&mut t), Binding::uniform(&u)],
            workgroups: [8320, 1, 1],
            ..Default::default()
        },
    );
    let Err(e) = r else {
        eprintln!("the launch was placed (the placement bug is fixed): nothing to check here");
        return;
    };
    let got = t.to_vec();
    let bad: Vec<usize> = (0..520 * page).filter(|&i| got[i] != want[i]).collect();
    assert!(
        bad.is_empty(),
        "refused ({e}), yet {} words changed, first [{}] = {:#x} (was {:#x})",
        bad.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

/// dst[i] = src[i] ^ (a xorshift run p.x times from i | 1): src is read
/// only after the spin.
const LATE_READ: &str = "struct P { x: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    if (g.x >= arrayLength(&dst)) { return; }
    var x = g.x | 1u;
    for (var k = 0u; k < p.x; k++) { x ^= x << 13u; x ^= x >> 17u; x ^= x << 5u; }
    dst[g.x] = src[g.x] ^ x;
}";

/// Launch LATE_READ from `src` (all 7) into `dst` on a queue, leak the
/// handle, write 9 to all of `src` at once, then read `dst`: the kernel
/// must have read 7s. `advise_src` is applied to `src` first.
fn leak_then_write_the_input(svm: &Svm, advise_src: Option<svm::Advice>, what: &str) {
    let spin = kernel(svm, "spin", SPIN);
    let late = kernel(svm, "late read", LATE_READ);
    let mut a = svm.alloc_vec::<u32>(64).expect("a");
    let iters = calibrate(svm, &spin, &mut a, Duration::from_millis(500));
    let mut src = svm.alloc_from_slice(&[7u32; 1024]).expect("src");
    if let Some(adv) = advise_src {
        svm.advise(src.as_ptr().cast(), 4096, adv).expect("advise");
    }
    let mut dst = svm.alloc_vec::<u32>(64).expect("dst");
    let want: Vec<u32> = (0..64u32).map(|i| 7 ^ spun(i, iters)).collect();
    let q = svm.create_queue();
    let u = p(iters);
    let binds = [Binding::read(&src), Binding::read_write(&mut dst), Binding::uniform(&u)];
    let pending = q.launch(&late, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
    let running = !pending.is_complete();
    std::mem::forget(pending);
    // Both borrows have ended: write the input while the kernel spins.
    src.iter_mut().for_each(|x| *x = 9);
    let got = dst.to_vec();
    let from_new = got.iter().zip(&want).filter(|(g, w)| **g == (**w ^ 7 ^ 9)).count();
    assert_eq!(
        got,
        want,
        "{what}, {:?} mode: the kernel (running at the forget: {running}) read the input written after the forget in {from_new} of 64 words",
        svm.mapping_mode()
    );
    assert!(src.iter().all(|&x| x == 9));
}

/// Found while extending the stress (`conformance::stress`, queue workers):
/// a leaked launch's *inputs*. Once its handle is forgotten, the shared
/// borrow of what it reads ends too, and safe code may write the input
/// while the kernel still runs. The kernel should still compute from the
/// input as it was at the launch (as a waited launch does): the write waits
/// for the kernel (as a write to its *output* does), or the kernel reads a
/// copy taken at the launch. Holds with migration (the software pool, any
/// backend, host-mapped or not; sparse): the kernel reads a device copy.
/// Fails in the coherent mode (the kernel reads the host page in place and
/// sees the CPU's write: 64 of 64 words computed from the new input).
#[test]
fn leaked_handle_inputs_written_after_the_forget() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        leak_then_write_the_input(&svm, None, &format!("{backend:?}"));
    }
}

/// The same for an input advised `AccessedBy` (used in place through the
/// coherent window) in the migrating modes.
#[test]
fn leaked_handle_accessed_by_inputs_written_after_the_forget() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        if svm.mapping_mode() == svm::MappingMode::Coherent {
            eprintln!("NOT APPLICABLE: AccessedBy is for the migrating modes");
            return;
        }
        if !crate::accessed_by_built(&svm) {
            return;
        }
        leak_then_write_the_input(&svm, Some(svm::Advice::AccessedBy), &format!("{backend:?}, AccessedBy"));
    }
}

/// A leaked launch's *output* advised `AccessedBy` (written in place
/// through the coherent window): a CPU read after the forget waits for the
/// kernel, as for migrated outputs.
#[test]
fn leaked_handle_accessed_by_output_waits_for_the_kernel() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        if svm.mapping_mode() == svm::MappingMode::Coherent {
            eprintln!("NOT APPLICABLE: AccessedBy is for the migrating modes");
            return;
        }
        if !crate::accessed_by_built(&svm) {
            return;
        }
        let spin = kernel(&svm, "spin", SPIN);
        let mut a = svm.alloc_from_slice(&(0..64u32).collect::<Vec<_>>()).expect("a");
        let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(500));
        let mut out = svm.alloc_from_slice(&(0..1024u32).collect::<Vec<_>>()).expect("out");
        svm.advise(out.as_ptr().cast(), 4096, svm::Advice::AccessedBy).expect("advise");
        let want: Vec<u32> = (0..1024u32).map(|v| if v >= 64 { v } else { spun(v, iters) }).collect();
        let q = svm.create_queue();
        let u = p(iters);
        // SPIN works on the first 64 words of what it is bound to.
        let binds = [Binding::read_write(&mut out), Binding::uniform(&u)];
        let pending = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
        let running = !pending.is_complete();
        std::mem::forget(pending);
        let got = out.to_vec();
        assert_eq!(got, want, "{backend:?}: read right after the forget (kernel running then: {running})");
    }
}

/// A `write_discard` launch that fails after its pages were made resident
/// (here: the binding straddles an `AccessedBy` range, found at placement)
/// gives the pages it cleared on the device instead of copying back to the
/// host: their data is intact (staged path, where discarding clears).
#[test]
fn a_write_discard_launch_failing_at_placement_keeps_the_data() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend).host_mapped_pool(false)) else { return };
        if svm.mapping_mode() == svm::MappingMode::Coherent {
            eprintln!("NOT APPLICABLE: the coherent mode discards nothing (pages used in place)");
            return;
        }
        if !crate::accessed_by_built(&svm) {
            return;
        }
        if !svm.coherent_mode_available() {
            // (Host import is what AccessedBy needs; CI's lavapipe has it.)
            assert!(std::env::var("SVM_REQUIRE_VK_CAPS").as_deref() != Ok("1"), "host import missing");
            eprintln!("SKIP: no host import on this device (AccessedBy)");
            return;
        }
        let step = kernel(&svm, "step", STEP);
        let start: Vec<u32> = (0..64 * 1024u32).collect();
        let mut t = svm.alloc_from_slice(&start).expect("t");
        // SAFETY-free: advice on a sub-range of t's pages.
        svm.advise(t.as_ptr().wrapping_add(10 * 1024).cast(), 10 * 4096, svm::Advice::AccessedBy).expect("advise");
        let u = p(1);
        let r = svm.launch(
            &step,
            &LaunchDescriptor {
                bindings: &[Binding::write_discard(&mut t), Binding::uniform(&u)],
                workgroups: [1024, 1, 1],
                ..Default::default()
            },
        );
        assert!(
            matches!(r, Err(LaunchError::Binding { reason: svm::BindError::StraddlesCoherent, .. })),
            "{backend:?}: {r:?}"
        );
        assert_eq!(t.to_vec(), start, "{backend:?}: the refused launch changed nothing");
    }
}

/// A second launch submitted while a long kernel runs must not hold the
/// runtime while its submission waits for the device (lavapipe's queue
/// takes a submission only once the previous one has run): alloc and free
/// on another thread go on meanwhile.
#[test]
fn a_second_launch_waiting_to_submit_does_not_stop_the_world() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let spin = kernel(&svm, "spin", SPIN);
    let step = kernel(&svm, "step", STEP);
    let mut a = svm.alloc_vec::<u32>(64).expect("a");
    let mut b = svm.alloc_vec::<u32>(64).expect("b");
    let iters = calibrate(&svm, &spin, &mut a, Duration::from_secs(2));
    let q = svm.create_queue();
    let u = p(iters);
    let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
    let t = Instant::now();
    let long = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("long");
    if crate::kernel_ran_inside_submit(
        &svm,
        t.elapsed() > Duration::from_secs(1),
        "a second launch behind a running kernel",
    ) {
        return;
    }
    let one = p(1);
    std::thread::scope(|s| {
        let (svm2, step2, one) = (&svm, &step, &one);
        let b = &mut b;
        let second = s.spawn(move || {
            let q2 = svm2.create_queue();
            let binds = [Binding::read_write(b), Binding::uniform(one)];
            q2.launch(step2, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("second").wait()
        });
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        for _ in 0..10 {
            let raw = svm.alloc(4096).expect("alloc");
            svm.free(raw.as_ptr()).expect("free");
        }
        let took = t.elapsed();
        assert!(
            !long.is_complete(),
            "alloc/free took {took:?}: they waited for the running kernel behind a second launch's submission"
        );
        second.join().expect("second thread").expect("second launch");
    });
    long.wait().expect("long");
}

/// A thread touching a running kernel's data waits for the kernel, and no
/// other thread's CPU fault waits behind it: the fault service parks the
/// first fault and serves the others (one service thread serves an arena;
/// a blocking wait there held every later fault until the kernel ended).
#[test]
fn a_fault_waiting_for_a_kernel_does_not_hold_up_other_faults() {
    use std::sync::atomic::{AtomicBool, Ordering};
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let spin = kernel(&svm, "spin", SPIN);
        let step = kernel(&svm, "step", STEP);
        let mut a = svm.alloc_from_slice(&(0..64u32).collect::<Vec<_>>()).expect("a");
        let n = 64 * 1024;
        let mut b = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("b");
        let iters = calibrate(&svm, &spin, &mut a, Duration::from_secs(2));
        let want: Vec<u32> = a.iter().map(|&v| spun(v, iters)).collect();
        make_device_owned(&svm, &step, &mut b);
        let q = svm.create_queue();
        let u = p(iters);
        let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
        let t = Instant::now();
        let pending = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("submit");
        if crate::kernel_ran_inside_submit(&svm, t.elapsed() > Duration::from_secs(1), "faults beside a waiting fault")
        {
            return;
        }
        // The borrow of `a` ends; a CPU access to it must wait for the kernel.
        std::mem::forget(pending);
        let a_read = AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let v = a.to_vec();
                a_read.store(true, Ordering::SeqCst);
                v
            });
            // Long enough for the reader's fault to reach the service.
            std::thread::sleep(Duration::from_millis(200));
            let t = Instant::now();
            let sum: u64 = (0..n).step_by(1024).map(|i| u64::from(b[i])).sum();
            let took = t.elapsed();
            let reader_still_waiting = !a_read.load(Ordering::SeqCst);
            let want_sum: u64 = (0..n).step_by(1024).map(|i| u64::from(i as u32 * 2 + 1)).sum();
            assert_eq!(sum, want_sum, "B read back right ({backend:?})");
            // On one GPU queue (lavapipe), staged and sparse d2h copies
            // queue behind the kernel: there B waits for it anyway.
            let copies_on_the_queue = !svm.pool_is_host_mapped() && svm.mapping_mode() != svm::MappingMode::Coherent;
            if !copies_on_the_queue {
                assert!(
                    reader_still_waiting,
                    "B's faults took {took:?}: they waited behind the fault on the kernel's data ({backend:?})"
                );
            }
            assert_eq!(reader.join().expect("reader"), want, "a read while its kernel ran ({backend:?})");
        });
    }
}

/// A launch's (and a prefetch's) host → device copies run with the update
/// lock released (its pages claimed by its flight): meanwhile another thread's CPU faults on
/// other device-owned data, allocations and frees go on, and every byte
/// comes out right on both sides — the launch's data after its kernel, the
/// other thread's data after its faults. Every path and both backends.
#[test]
fn launch_copies_run_unlocked_beside_faults_and_allocs() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        copies_beside_faults_and_allocs(&svm, backend);
    }
}

/// The body of [`launch_copies_run_unlocked_beside_faults_and_allocs`], for
/// any runtime (also one on the application's own device).
pub(crate) fn copies_beside_faults_and_allocs(svm: &Svm, backend: svm::FaultBackendKind) {
    {
        let step = kernel(svm, "step", STEP);
        // X: 8 MiB the CPU writes before each launch (its copies are the
        // launch's); B: 4 MiB the device owns, read back by CPU faults.
        let n = 2 << 20;
        let mut x = svm.alloc_vec::<u32>(n).expect("x");
        let m = 1 << 20;
        let mut b = svm.alloc_from_slice(&(0..m as u32).collect::<Vec<_>>()).expect("b");
        let migrating = svm.mapping_mode() != svm::MappingMode::Coherent;
        std::thread::scope(|s| {
            let step = &step;
            let x = &mut x;
            let launcher = s.spawn(move || {
                let mut unlocked = 0;
                for round in 0..4u32 {
                    for (i, v) in x.iter_mut().enumerate() {
                        *v = i as u32 ^ round;
                    }
                    let s0 = svm.stats();
                    svm.launch(
                        step,
                        &LaunchDescriptor {
                            bindings: &[Binding::read_write(&mut *x), Binding::uniform(&p(round))],
                            workgroups: [n as u32 / 64, 1, 1],
                            ..Default::default()
                        },
                    )
                    .expect("step over x");
                    let d = svm.stats().since(&s0);
                    unlocked += d.h2d_unlocked_pages;
                    let bad = x.iter().enumerate().filter(|&(i, &v)| v != (i as u32 ^ round) * 2 + round).count();
                    assert_eq!(bad, 0, "{backend:?} round {round}: X read back wrong");
                }
                (unlocked, x)
            });
            let mut rounds = 0;
            while !launcher.is_finished() || rounds == 0 {
                make_device_owned(svm, step, &mut b);
                rounds += 1;
                // CPU faults on B, one every 64 KiB, and alloc / free.
                for i in (0..m).step_by(16 * 1024) {
                    let want = (0..rounds).fold(i as u32, |v, _| v.wrapping_mul(2).wrapping_add(1));
                    assert_eq!(b[i], want, "{backend:?}: B[{i}] after {rounds} steps");
                    let raw = svm.alloc(4096).expect("alloc");
                    svm.free(raw.as_ptr()).expect("free");
                }
            }
            let (mut unlocked, x) = launcher.join().expect("launcher");
            // A replayable launch's first pass copies unlocked too.
            for (i, v) in x.iter_mut().enumerate() {
                *v = i as u32;
            }
            let s0 = svm.stats();
            svm.launch_with(
                step,
                &LaunchDescriptor {
                    bindings: &[Binding::read_write(&mut *x), Binding::uniform(&p(7))],
                    workgroups: [n as u32 / 64, 1, 1],
                    ..Default::default()
                },
                &svm::LaunchOptions::replayable(),
            )
            .expect("replayable step over x");
            unlocked += svm.stats().since(&s0).h2d_unlocked_pages;
            let bad = x.iter().enumerate().filter(|&(i, &v)| v != i as u32 * 2 + 7).count();
            assert_eq!(bad, 0, "{backend:?}: X after the replayable launch");
            // So does a prefetch to the device (its pages claimed meanwhile).
            for (i, v) in x.iter_mut().enumerate() {
                *v = i as u32 ^ 0x55;
            }
            let s0 = svm.stats();
            svm.prefetch(x.as_ptr().cast(), n * 4, svm::Location::Device).wait().expect("prefetch X");
            unlocked += svm.stats().since(&s0).h2d_unlocked_pages;
            let bad = x.iter().enumerate().filter(|&(i, &v)| v != i as u32 ^ 0x55).count();
            assert_eq!(bad, 0, "{backend:?}: X after its prefetch to the device and back");
            if migrating {
                // (Each launch and the prefetch copy X in, outside the lock:
                // 6 × 2048 pages.)
                assert!(unlocked >= 6 * 2048, "{backend:?}: {unlocked} pages copied with the lock released");
            } else {
                assert_eq!(unlocked, 0, "{backend:?}: the coherent mode copies nothing");
            }
        });
    }
}

/// `v[p] += 1` through a pointer argument (pointer access: the pass reads
/// the launch's extents or page table).
const BUMP: &str = "@compute @workgroup_size(1) fn main() {
    let p = svm_arg_ptr(0u);
    svm_store_u32(p, svm_load_u32(p) + 1u);
}";

/// Launches queued behind a running kernel go to the GPU as one batch, and
/// each still runs with its own declarations: its own arguments and page
/// table (a batch is one submission, and a write through the queue would
/// land before all of it: then the first launch would run with the last
/// one's rights). Page-table path (eleven separate ranges) and extent path,
/// an undeclared write refused in the middle of the batch.
#[test]
fn launches_batched_behind_a_running_kernel_keep_their_own_rights() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let spin = kernel(&svm, "spin", SPIN);
        let bump = kernel(&svm, "bump", BUMP);
        let mut a = svm.alloc_vec::<u32>(64).expect("a");
        let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(400));
        // Ten read-only ranges apart from each other (a spacer between):
        // with the written one, more extents than a pass checks.
        let mut keep = Vec::new();
        let xs: Vec<ManagedVec<u32>> = (0..10)
            .map(|i| {
                keep.push(svm.alloc_vec::<u32>(1024).expect("spacer"));
                svm.alloc_from_slice(&[i; 1024]).expect("x")
            })
            .collect();
        let mut w1 = svm.alloc_from_slice(&[7u32; 1024]).expect("w1");
        let mut w2 = svm.alloc_from_slice(&[7u32; 1024]).expect("w2");
        let mut w3 = svm.alloc_from_slice(&[7u32; 1024]).expect("w3");
        let w4 = svm.alloc_from_slice(&[7u32; 1024]).expect("w4");
        let (p1, p3) = (w1.addr_of(0), w3.addr_of(0));
        // Round 0 builds the kernel's variants (lavapipe compiles a
        // pipeline only once the running kernel is done); round 1 batches.
        for round in 0..2u32 {
            let s0 = svm.stats();
            let q = svm.create_queue();
            let u = p(iters);
            let t = Instant::now();
            let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
            let long = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("spin");
            let in_submit = crate::kernel_ran_inside_submit(&svm, t.elapsed() > Duration::from_millis(200), "batching");
            fn with_xs<'a>(xs: &'a [ManagedVec<u32>], w: Access<'a>) -> Vec<Access<'a>> {
                xs.iter().map(Access::read).chain([w]).collect()
            }
            fn desc<'a>(args: &'a [Arg], access: &'a [Access<'a>]) -> LaunchDescriptor<'a> {
                LaunchDescriptor { args, access, bindings: &[], workgroups: [1, 1, 1] }
            }
            let (args1, args3) = ([Arg::Ptr(p1)], [Arg::Ptr(p3)]);
            let acc1 = with_xs(&xs, Access::read_write(&mut w1));
            let acc2 = with_xs(&xs, Access::read_write(&mut w2));
            let acc3 = [Access::read_write(&mut w3)];
            let acc4 = [Access::read(&w4)];
            // 1: page-table path, writes w1. 2: the same pointer, w1 not
            // declared (w2 is). 3: extent path, writes w3. 4: w3 declared by
            // no one in this launch (w4 read).
            let l1 = q.launch(&bump, &desc(&args1, &acc1)).expect("1");
            let l2 = q.launch(&bump, &desc(&args1, &acc2)).expect("2");
            let l3 = q.launch(&bump, &desc(&args3, &acc3)).expect("3");
            let l4 = q.launch(&bump, &desc(&args3, &acc4)).expect("4");
            let still_running = !long.is_complete();
            long.wait().expect("spin");
            l1.wait().expect("1: its own declarations");
            let kinds = |r: Result<svm::LaunchReport, LaunchError>| match r {
                Err(LaunchError::Kernel { faults, .. }) => faults.iter().map(|f| (f.addr, f.kind)).collect::<Vec<_>>(),
                other => panic!("expected a refused write, got {other:?}"),
            };
            use svm::KernelFaultKind::NotDeclared;
            assert_eq!(kinds(l2.wait()), vec![(p1, NotDeclared)], "2 ran with another launch's rights ({backend:?})");
            l3.wait().expect("3: its own declarations");
            assert_eq!(kinds(l4.wait()), vec![(p3, NotDeclared)], "4 ran with another launch's rights ({backend:?})");
            drop((acc1, acc2, acc3, acc4));
            assert_eq!((w1[0], w2[0], w3[0], w4[0]), (8 + round, 7, 8 + round, 7), "{backend:?}");
            assert!(w1[1..].iter().chain(&w2[..]).chain(&w3[1..]).chain(&w4[..]).all(|&v| v == 7));
            let s = svm.stats().since(&s0);
            assert!(s.page_table_passes >= 2, "launches 1 and 2 use the page table: {s:?}");
            if round == 1 && !in_submit && still_running {
                assert!(s.batched_passes >= 3, "launches 2-4 waited in a batch: {s:?}");
                assert!(s.pass_submissions <= 3, "5 passes in at most 3 submissions: {s:?}");
            }
        }
        drop(keep);
    }
}

/// More launches than one batch holds, queued behind a running kernel, each
/// reading what the one before wrote (the pages shared between flights):
/// byte-exact, in fewer submissions than launches.
#[test]
fn a_long_dependent_chain_is_batched_and_exact() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let spin = kernel(&svm, "spin", SPIN);
    let step = kernel(&svm, "step", STEP);
    let mut a = svm.alloc_vec::<u32>(64).expect("a");
    let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(400));
    let n = 4096usize;
    let mut b = svm.alloc_from_slice(&(0..n as u32).collect::<Vec<_>>()).expect("b");
    make_device_owned(&svm, &step, &mut b);
    let launches = 100u32;
    let us: Vec<P> = (0..launches).map(p).collect();
    let bp: *const u8 = b.as_ptr().cast();
    let s0 = svm.stats();
    let q = svm.create_queue();
    let u = p(iters);
    let binds = [Binding::read_write(&mut a), Binding::uniform(&u)];
    let long = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("spin");
    // SAFETY: `b` lives and is not touched by the CPU until every launch is
    // waited for below.
    let chain: Vec<[Binding<'_>; 2]> =
        us.iter().map(|u| unsafe { [Binding::raw(bp, n * 4, AccessMode::ReadWrite), Binding::uniform(u)] }).collect();
    let pending: Vec<_> = chain
        .iter()
        .map(|binds| {
            q.launch(
                &step,
                &LaunchDescriptor { bindings: binds, workgroups: [n as u32 / 64, 1, 1], ..Default::default() },
            )
            .expect("step")
        })
        .collect();
    let still_running = !long.is_complete();
    long.wait().expect("spin");
    for h in pending {
        h.wait().expect("step");
    }
    let want: Vec<u32> = (0..n as u32)
        .map(|v| (0..launches).fold(v.wrapping_mul(2).wrapping_add(1), |x, k| x.wrapping_mul(2).wrapping_add(k)))
        .collect();
    assert!(b[..] == want[..], "the chain's result");
    let s = svm.stats().since(&s0);
    assert_eq!(s.launches, u64::from(launches) + 1, "{s:?}");
    if svm.device_info().backend == "Vulkan" && still_running {
        assert!(s.batched_passes > 0 && s.pass_submissions < s.launches, "{s:?}");
    }
}

/// Two queued launches writing the same pages in place (the coherent mode,
/// or `AccessedBy`) share them (the second does not wait for the first);
/// the first retiring while the second runs must not give the CPU the
/// pages back: a CPU read then waits for the second and sees its result
/// (both handles leaked, so nothing but the runtime orders the read).
#[test]
fn in_place_pages_shared_by_queued_launches_stay_taken_until_the_last_retires() {
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        if svm.mapping_mode() != svm::MappingMode::Coherent && !crate::accessed_by_built(&svm) {
            return;
        }
        let spin = kernel(&svm, "spin", SPIN);
        let mut a = svm.alloc_from_slice(&(0..64u32).collect::<Vec<_>>()).expect("a");
        let iters = calibrate(&svm, &spin, &mut a, Duration::from_millis(200));
        let mut v = svm.alloc_from_slice(&(0..1024u32).collect::<Vec<_>>()).expect("v");
        if svm.mapping_mode() != svm::MappingMode::Coherent {
            svm.advise(v.as_ptr().cast(), 4096, svm::Advice::AccessedBy).expect("advise");
        }
        let mut w = svm.alloc_vec::<u32>(64).expect("w");
        let (short, long) = (p(iters / 4), p(iters * 3));
        let want: Vec<u32> =
            (0..1024u32).map(|x| if x >= 64 { x } else { spun(spun(x, iters / 4), iters * 3) }).collect();
        let q = svm.create_queue();
        let t = Instant::now();
        let binds = [Binding::read_write(&mut v), Binding::uniform(&short)];
        let first = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("first");
        std::mem::forget(first);
        let binds = [Binding::read_write(&mut v), Binding::uniform(&long)];
        let second = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("second");
        let shared = t.elapsed() < Duration::from_millis(40);
        std::mem::forget(second);
        // The first is done by now; a launch on other data retires it while
        // the second still runs (about 600 ms).
        std::thread::sleep(Duration::from_millis(120));
        let binds = [Binding::read_write(&mut w), Binding::uniform(&short)];
        let third = q.launch(&spin, &LaunchDescriptor { bindings: &binds, ..Default::default() }).expect("third");
        let got = v.to_vec();
        third.wait().expect("third");
        assert_eq!(got, want, "{backend:?}: read after the first retired, while the second ran");
        if svm.device_info().backend == "Vulkan" {
            assert!(shared, "the second launch waited for the first ({backend:?})");
        }
    }
}

/// A launch handle parked in a task that the task's waker drops (an
/// executor whose waker holds the last reference to the task): `wake` runs
/// the handle's `Drop`, which retires the launch under the update lock. The
/// completion thread wakes a finished launch's task with none of the
/// runtime's locks held, on success and after a device loss; a wake under
/// the update lock would hang here.
#[test]
fn a_waker_that_drops_the_pending_handle_does_not_deadlock() {
    use std::future::Future;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Wake};
    type Slot = Mutex<Option<svm::Pending<'static>>>;
    struct DropOnWake(Arc<Slot>, Arc<std::sync::atomic::AtomicBool>);
    impl Wake for DropOnWake {
        fn wake(self: Arc<Self>) {
            let p = self.0.lock().unwrap().take();
            drop(p);
            self.1.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    for lose in [false, true] {
        let Some(svm) = ctx(small(BACKENDS[0])) else { return };
        // (Leaked: the handle outlives this frame inside the waker.)
        let svm: &'static crate::TestSvm = Box::leak(Box::new(svm));
        let spin: &'static svm::Kernel = Box::leak(Box::new(kernel(svm, "spin", SPIN)));
        let a: &'static mut ManagedVec<u32> = Box::leak(Box::new(svm.alloc_vec::<u32>(64).expect("a")));
        let iters = calibrate(svm, spin, a, Duration::from_millis(300));
        let q = svm.create_queue();
        let u: &'static _ = Box::leak(Box::new(p(iters)));
        let binds: &'static [Binding<'static>] = Box::leak(Box::new([Binding::read_write(a), Binding::uniform(u)]));
        let t = Instant::now();
        let pend = q.launch(spin, &LaunchDescriptor { bindings: binds, ..Default::default() }).expect("spin");
        if crate::kernel_ran_inside_submit(svm, t.elapsed() > Duration::from_millis(150), "a waker dropping its handle")
        {
            return;
        }
        let slot: Arc<Slot> = Arc::new(Mutex::new(Some(pend)));
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker = Arc::new(DropOnWake(slot.clone(), woken.clone())).into();
        let mut cx = Context::from_waker(&waker);
        {
            let mut g = slot.lock().unwrap();
            let polled = std::pin::Pin::new(g.as_mut().expect("the handle")).poll(&mut cx);
            assert!(polled.is_pending(), "the ~300 ms kernel was still running");
        }
        if lose {
            svm.destroy_device_for_testing();
        }
        let t = Instant::now();
        while !woken.load(std::sync::atomic::Ordering::Acquire) {
            assert!(t.elapsed() < Duration::from_secs(30), "lose={lose}: the waker dropping the handle never returned");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(slot.lock().unwrap().is_none());
        // The runtime still answers.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(svm.stats());
        });
        assert!(rx.recv_timeout(Duration::from_secs(30)).is_ok(), "lose={lose}: the runtime hung after the wake");
    }
}
