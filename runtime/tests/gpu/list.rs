//! Pointer chasing: linked lists built on the CPU with raw pointers,
//! scattered over the arena, walked by a kernel through the same pointers.

use svm::{Access, AccessMode, Arg, LaunchDescriptor};

use crate::{ctx, ctx_migrating, kernel, small, BACKENDS};

pub use svm::shaders::kernels::ListNode as Node;

/// A pseudo-random permutation of 0..n (xorshift + Fisher-Yates).
pub fn permutation(n: usize, mut seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        p.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    p
}

#[test]
fn list_walk_both_backends() {
    for backend in BACKENDS {
        let Some(svm) = ctx_migrating(small(backend)) else { return };
        let k = kernel(&svm, "list", svm::shaders::kernels::LIST);
        let (n, lists) = (100_000usize, 256usize);
        let mut nodes = svm.alloc_vec::<Node>(n).expect("nodes");
        let mut heads = svm.alloc_vec::<u64>(lists).expect("heads");
        let mut out = svm.alloc_vec::<u32>(lists).expect("out");
        // Node j of list l is slot order[l + j * lists]: neighbours in a list
        // are far apart in memory.
        let order = permutation(n, 0x9e3779b97f4a7c15);
        let mut want = vec![0u32; lists];
        let base = nodes.as_mut_ptr();
        for (pos, &slot) in order.iter().enumerate() {
            let l = pos % lists;
            let value = (slot as u32).wrapping_mul(2654435761) >> 12;
            want[l] = want[l].wrapping_add(value);
            let next = order.get(pos + lists).map_or(0, |&s| base.wrapping_add(s) as u64);
            nodes[slot] = Node { next, value, pad: 0 };
            if pos < lists {
                heads[l] = base.wrapping_add(slot) as u64;
            }
        }
        let args = [Arg::ptr(heads.as_ptr()), Arg::ptr(out.as_ptr()), Arg::U32(lists as u32), Arg::U32(n as u32)];
        let before = svm.stats();
        svm.launch(
            &k,
            &LaunchDescriptor {
                args: &args,
                access: &[Access::read(&nodes), Access::read(&heads), Access::read_write(&mut out)],
                bindings: &[],
                workgroups: [(lists as u32).div_ceil(64), 1, 1],
            },
        )
        .expect("launch");
        assert_eq!(&out[..], &want[..], "{backend}");
        let s = svm.stats().since(&before);
        assert!(s.cpu_faults >= 1 && s.d2h_pages >= 1, "{backend}: out came back by fault: {s:?}");
    }
}

/// The same list reached through a raw declared range (no owner borrow).
#[test]
fn list_through_raw_range() {
    let Some(svm) = ctx(small(BACKENDS[0])) else { return };
    let k = kernel(&svm, "list", svm::shaders::kernels::LIST);
    let p = svm.alloc(3 * 16 + 8 + 4).expect("alloc").as_ptr();
    let base = p as usize as u64;
    // Three nodes at p, p+16, p+32 linked 2 -> 0 -> 1; head at p+48; out at p+56.
    let nodes = [
        Node { next: base + 16, value: 10, pad: 0 },
        Node { next: 0, value: 20, pad: 0 },
        Node { next: base, value: 30, pad: 0 },
    ];
    // SAFETY: p is a fresh allocation of 60 bytes; the writes stay inside.
    unsafe {
        core::ptr::copy_nonoverlapping(bytemuck::cast_slice::<Node, u8>(&nodes).as_ptr(), p, 48);
        (p.add(48) as *mut u64).write(base + 32);
    }
    let args = [Arg::Ptr(base + 48), Arg::Ptr(base + 56), Arg::U32(1), Arg::U32(10)];
    // SAFETY: no Rust reference into the range is alive.
    let access = [unsafe { Access::raw(p, 60, AccessMode::ReadWrite) }];
    svm.launch(&k, &LaunchDescriptor { args: &args, access: &access, bindings: &[], workgroups: [1, 1, 1] })
        .expect("launch");
    // SAFETY: inside the allocation; the runtime faults it back.
    assert_eq!(unsafe { (p.add(56) as *const u32).read() }, 60);
    svm.free(p).expect("free");
}
