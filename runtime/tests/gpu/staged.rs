//! The staged migration path (no host-mapped pool: discrete GPUs, and here
//! `host_mapped_pool(false)`): pipelined chunked copies both ways and the
//! read-ahead of sequential CPU-fault streams are byte-exact, under both
//! fault backends, in every mapping mode that migrates.

use svm::{Binding, LaunchDescriptor, Location, ManagedVec, Svm};

use crate::{ctx_migrating, kernel, small, BACKENDS};

/// `c[i] = a[i] * 3 + b[i] + c[i] ^ tag` over three bound ranges of
/// different lengths (`i` below each one's length).
const MIX: &str = "
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> c: array<u32>;
@group(0) @binding(3) var<uniform> tag: vec4<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = g.x + g.y * n.x * 64u;
    if (i < arrayLength(&c)) {
        c[i] = (a[i % arrayLength(&a)] * 3u + b[i % arrayLength(&b)] + c[i]) ^ tag.x;
    }
}";

/// Word counts: several MiB, none a multiple of a staging chunk (2 MiB
/// up, 512 KiB down) or of a 2 MiB fault region.
const A: usize = (5 << 20) / 4 + 3 * 1024 + 7;
const B: usize = (3 << 20) / 4 + 1024 + 1;
const C: usize = (6 << 20) / 4 + 5 * 1024 + 3;

fn pattern(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761).rotate_left(seed % 31) ^ seed).collect()
}

fn expect(a: &[u32], b: &[u32], c: &[u32], tag: u32) -> Vec<u32> {
    (0..c.len())
        .map(|i| (a[i % a.len()].wrapping_mul(3).wrapping_add(b[i % b.len()]).wrapping_add(c[i])) ^ tag)
        .collect()
}

fn launch(svm: &Svm, k: &svm::Kernel, a: &ManagedVec<u32>, b: &ManagedVec<u32>, c: &mut ManagedVec<u32>, tag: u32) {
    let t = [tag, 0u32, 0, 0];
    let groups = u32::try_from(c.len().div_ceil(64)).expect("fits");
    let (x, y) = (groups.min(4096), groups.div_ceil(4096));
    svm.launch(
        k,
        &LaunchDescriptor {
            bindings: &[Binding::read(a), Binding::read(b), Binding::read_write(c), Binding::uniform(&t)],
            workgroups: [x, y, 1],
            ..Default::default()
        },
    )
    .expect("launch");
}

/// Compare word by word, in order (a sequential CPU-fault stream), naming
/// the first difference.
fn check(what: &str, got: &ManagedVec<u32>, want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g == w, "{what}: word {i} (byte {:#x}) is {g:#x}, expected {w:#x}", i * 4);
    }
}

fn staged(backend: svm::FaultBackendKind) -> Option<crate::TestSvm> {
    let svm = ctx_migrating(small(backend).host_mapped_pool(false))?;
    Some(svm)
}

/// Large migrations both ways, several allocations in one launch, twice
/// (the second launch finds `c` on the host again after the CPU read it
/// back by faults, `a` and `b` as fresh read-only copies).
#[test]
fn large_migrations_are_byte_exact() {
    for backend in BACKENDS {
        let Some(svm) = staged(backend) else { return };
        let k = kernel(&svm, "mix", MIX);
        let (pa, pb, pc) = (pattern(1, A), pattern(2, B), pattern(3, C));
        let a = svm.alloc_from_slice(&pa).expect("alloc");
        let b = svm.alloc_from_slice(&pb).expect("alloc");
        let mut c = svm.alloc_from_slice(&pc).expect("alloc");
        launch(&svm, &k, &a, &b, &mut c, 0x5a5a);
        let want = expect(&pa, &pb, &pc, 0x5a5a);
        check(&format!("{backend}: after one launch"), &c, &want);
        launch(&svm, &k, &a, &b, &mut c, 7);
        let want2 = expect(&pa, &pb, &want, 7);
        check(&format!("{backend}: after two launches"), &c, &want2);
        // The host copies the kernel read are untouched.
        check(&format!("{backend}: a"), &a, &pa);
        check(&format!("{backend}: b"), &b, &pb);
        let s = svm.stats();
        assert!(s.h2d_pages > 0 && s.d2h_pages > 0, "{backend}: pages moved both ways: {s}");
    }
}

/// A sequential CPU-fault stream leaves the next span in flight (read
/// ahead); whatever happens to those pages before the stream gets there —
/// a launch that rewrites them, a free and a new allocation in their place,
/// an eviction — the CPU sees the current bytes.
#[test]
fn fault_stream_with_pages_in_flight() {
    for backend in BACKENDS {
        let Some(svm) = staged(backend) else { return };
        let k = kernel(&svm, "mix", MIX);
        let (pa, pb, pc) = (pattern(4, A), pattern(5, B), pattern(6, C));
        let a = svm.alloc_from_slice(&pa).expect("alloc");
        let b = svm.alloc_from_slice(&pb).expect("alloc");
        let mut c = svm.alloc_from_slice(&pc).expect("alloc");
        launch(&svm, &k, &a, &b, &mut c, 1);
        let want = expect(&pa, &pb, &pc, 1);

        // 1. Read the first 2.5 MiB in order (the stream's next span is
        // then in flight), launch again (the kernel rewrites the pages in
        // flight), and read everything.
        let n = (5 << 20) / 8;
        assert!(c[..n].iter().zip(&want[..n]).all(|(x, y)| x == y), "{backend}: stream prefix");
        launch(&svm, &k, &a, &b, &mut c, 2);
        let want2 = expect(&pa, &pb, &want, 2);
        check(&format!("{backend}: after a launch over pages in flight"), &c, &want2);

        // 2. Stream part of `c`, free it while its next span is in flight,
        // allocate the same size again (the same pages), fill it on the
        // CPU, move it to the device without a launch, and stream it back.
        launch(&svm, &k, &a, &b, &mut c, 3);
        assert!(c[..n].iter().zip(expect(&pa, &pb, &want2, 3)).all(|(x, y)| *x == y), "{backend}: stream prefix");
        drop(c);
        let pd = pattern(7, C);
        let d = svm.alloc_from_slice(&pd).expect("alloc");
        svm.prefetch(d.as_ptr().cast(), C * 4, Location::Device).wait().expect("prefetch to device");
        assert!(svm.stats().h2d_pages > 0);
        check(&format!("{backend}: a new allocation where pages were in flight"), &d, &pd);

        // 3. Several streams interleaved (each fault breaks the other's
        // sequence), then everything back by prefetch to the host.
        let mut e = svm.alloc_from_slice(&pattern(8, C)).expect("alloc");
        let mut f = svm.alloc_from_slice(&pattern(9, C)).expect("alloc");
        launch(&svm, &k, &a, &b, &mut e, 4);
        launch(&svm, &k, &a, &b, &mut f, 5);
        let (we, wf) = (expect(&pa, &pb, &pattern(8, C), 4), expect(&pa, &pb, &pattern(9, C), 5));
        for i in (0..C).step_by(1024) {
            assert_eq!(e[i], we[i], "{backend}: interleaved e[{i}]");
            assert_eq!(f[i], wf[i], "{backend}: interleaved f[{i}]");
        }
        check(&format!("{backend}: e"), &e, &we);
        launch(&svm, &k, &a, &b, &mut f, 6);
        let wf2 = expect(&pa, &pb, &wf, 6);
        // A stream into `f` leaves a read-ahead in flight; the prefetch
        // (several spans, each read ahead of the copy-out of the one
        // before) takes it or drops it.
        assert!(v_prefix_ok(&f, &wf2, n), "{backend}: stream prefix of f");
        svm.prefetch(f.as_ptr().cast(), C * 4, Location::Host).wait().expect("prefetch to host");
        check(&format!("{backend}: f after prefetch to host"), &f, &wf2);
        check(&format!("{backend}: a"), &a, &pa);
    }
}

/// More pages than the pool holds: eviction moves device pages back
/// through the staged path while a fault stream's read-ahead may be in
/// flight.
#[test]
fn eviction_through_the_staged_path() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(
            svm::SvmDescriptor::default()
                .arena_size(128 << 20)
                .pool_size(16 << 20)
                .fault_backend(backend)
                .host_mapped_pool(false),
        ) else {
            return;
        };
        let k = kernel(&svm, "mix", MIX);
        let words = (6 << 20) / 4 + 1024 + 5;
        let (pa, pb) = (pattern(10, 1024), pattern(11, 1024));
        let a = svm.alloc_from_slice(&pa).expect("alloc");
        let b = svm.alloc_from_slice(&pb).expect("alloc");
        let init: Vec<Vec<u32>> = (0..4).map(|j| pattern(20 + j, words)).collect();
        let mut v: Vec<ManagedVec<u32>> = init.iter().map(|p| svm.alloc_from_slice(p).expect("alloc")).collect();
        let mut want: Vec<Vec<u32>> = Vec::new();
        for j in 0..v.len() {
            launch(&svm, &k, &a, &b, &mut v[j], 100 + j as u32);
            want.push(expect(&pa, &pb, &init[j], 100 + j as u32));
            if j == 1 {
                // Start a stream on the first vector (still on the device).
                let n = (5 << 20) / 8;
                assert!(v_prefix_ok(&v[0], &want[0], n), "{backend}: stream prefix");
            }
        }
        assert!(svm.stats().evicted_pages > 0, "{backend}: the pool was oversubscribed");
        for (j, x) in v.iter().enumerate() {
            check(&format!("{backend}: vector {j}"), x, &want[j]);
        }
    }
}

fn v_prefix_ok(v: &ManagedVec<u32>, want: &[u32], n: usize) -> bool {
    v[..n].iter().zip(&want[..n]).all(|(x, y)| x == y)
}
