//! Property test: random mixes of small (sub-page, through the runtime's
//! `Allocator`) and large (page-granular `ManagedVec`) allocations, frees,
//! CPU writes and kernel XORs, checked byte for byte against a model after
//! every step: neighbours in a shared slab page never see another block's
//! kernel writes, freed blocks come back zeroed, data survives migrations
//! both ways. Runs in the current mapping mode (CI runs every mode) with both
//! fault backends; `SVM_MIXED_CASES` sets the number of cases (default 6).

use proptest::prelude::*;
use svm::allocator_api2::vec::Vec as AVec;
use svm::{Access, Arg, LaunchDescriptor, ManagedVec, Svm};

use crate::{ctx, kernel, small, BACKENDS};

/// p[i] ^= key for i < n. Args: p, n, key.
const XOR: &str = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let p = svm_arg_ptr(0u); let n = svm_arg_u32(2u); let key = svm_arg_u32(3u);
    for (var i = g.x; i < n; i += nw.x * 64u) {
        let q = svm_index(p, i, 4u);
        svm_store_u32(q, svm_load_u32(q) ^ key);
    }
}";

#[derive(Clone, Debug)]
enum Op {
    /// A sub-page block of `words` u32 (4 B – 2 KiB).
    Small { words: usize },
    /// Page-granular: `words` u32 (a page or more; some past 2 MiB).
    Large { words: usize },
    /// Free the allocation `i % live`.
    Free { i: usize },
    /// The CPU writes `value` to word `at % len` of allocation `i % live`.
    Write { i: usize, at: usize, value: u32 },
    /// A kernel XORs every word of allocation `i % live` with `key`.
    Xor { i: usize, key: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..=512).prop_map(|words| Op::Small { words }),
        1 => prop_oneof![9 => 1024usize..=16 * 1024, 1 => 512 * 1024usize..=600 * 1024].prop_map(|words| Op::Large { words }),
        2 => any::<usize>().prop_map(|i| Op::Free { i }),
        3 => (any::<usize>(), any::<usize>(), any::<u32>()).prop_map(|(i, at, value)| Op::Write { i, at, value }),
        3 => (any::<usize>(), any::<u32>()).prop_map(|(i, key)| Op::Xor { i, key }),
    ]
}

enum Owner {
    Small(AVec<u32, Svm>),
    Large(ManagedVec<u32>),
}

impl Owner {
    fn words(&self) -> &[u32] {
        match self {
            Owner::Small(v) => v,
            Owner::Large(v) => v,
        }
    }
    fn words_mut(&mut self) -> &mut [u32] {
        match self {
            Owner::Small(v) => v,
            Owner::Large(v) => v,
        }
    }
}

fn run(svm: &Svm, k: &svm::Kernel, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut live: Vec<(Owner, Vec<u32>)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Small { words } => {
                let mut v = AVec::with_capacity_in(words, svm.clone());
                v.resize(words, 0u32);
                live.push((Owner::Small(v), vec![0; words]));
            }
            Op::Large { words } => {
                let v = svm.alloc_vec::<u32>(words).expect("large allocation");
                prop_assert!(v.iter().all(|&x| x == 0), "step {step}: a new allocation reads zero");
                live.push((Owner::Large(v), vec![0; words]));
            }
            Op::Free { i } if !live.is_empty() => {
                let n = live.len();
                drop(live.swap_remove(i % n));
            }
            Op::Write { i, at, value } if !live.is_empty() => {
                let n = live.len();
                let (owner, model) = &mut live[i % n];
                let at = at % model.len();
                owner.words_mut()[at] = value;
                model[at] = value;
            }
            Op::Xor { i, key } if !live.is_empty() => {
                let n = live.len();
                let (owner, model) = &mut live[i % n];
                let (ptr, len) = (owner.words().as_ptr(), owner.words().len());
                let args = [Arg::ptr(ptr), Arg::U32(len as u32), Arg::U32(key)];
                let access = match owner {
                    Owner::Small(v) => Access::read_write(v),
                    Owner::Large(v) => Access::read_write(v),
                };
                svm.launch(
                    k,
                    &LaunchDescriptor { args: &args, access: &[access], bindings: &[], workgroups: [4, 1, 1] },
                )
                .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
                model.iter_mut().for_each(|x| *x ^= key);
            }
            _ => {}
        }
        for (j, (owner, model)) in live.iter().enumerate() {
            prop_assert!(owner.words() == &model[..], "step {step} ({op:?}): allocation {j} differs from the model");
        }
    }
    Ok(())
}

#[test]
fn mixed_allocations_kernels_and_cpu_writes_match_a_model() {
    let cases = std::env::var("SVM_MIXED_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6);
    for backend in BACKENDS {
        let Some(svm) = ctx(small(backend)) else { return };
        let k = kernel(&svm, "xor", XOR);
        let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
        proptest::test_runner::TestRunner::new(config)
            .run(&proptest::collection::vec(op(), 1..40), |ops| run(&svm, &k, &ops))
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
        assert_eq!(svm.live_allocations(), 0, "{backend:?}: every allocation freed");
    }
}
