//! # svm-shaders
//!
//! The WGSL side of the runtime.
//!
//! * [`PRELUDE`]: included before every kernel. It declares the runtime's
//!   bindings (page table, launch arguments, error log, pool segments) and the
//!   typed loads and stores through managed pointers (`svm_load_f32(p)`,
//!   `svm_store_u32(p, v)`, `svm_load_ptr(p)`, …). A managed pointer is the
//!   CPU's 64-bit address as `vec2<u32>(low, high)`; naga cannot dereference
//!   64-bit device addresses, so translation is WGSL arithmetic plus one
//!   page-table load.
//! * [`kernels`]: the demo kernels, written against the prelude only.
//!
//! The PTE bits and error kinds are defined once in Rust
//! ([`svm_pagetable::Pte`]) and mirrored in the prelude; the tests parse the
//! prelude with naga and fail if the two drift.
#![forbid(unsafe_code)]

/// The WGSL prelude (see the crate docs).
pub const PRELUDE: &str = include_str!("prelude.wgsl");

/// Number of pool segment bindings the prelude declares (`svm_pool0..3`).
pub const POOL_SEGMENTS: u32 = 4;
/// Launch argument words (`SVM_MAX_ARG_WORDS`).
pub const MAX_ARG_WORDS: u32 = 64;
/// Error records kept per launch (`SVM_ERR_RECORDS`).
pub const ERROR_RECORDS: u32 = 16;
/// Word offset of the fault section in the launch log (`SVM_LOG_FAULTS`).
pub const LOG_FAULTS: u32 = 65;

/// Launch flags (`SVM_FLAG_*`).
pub mod flags {
    /// Faults on non-resident pages are recorded for replay.
    pub const REPLAYABLE: u32 = 1;
}

/// Error kinds the prelude records (`SVM_ERR_*`).
pub mod err {
    /// Address outside the arena (null included).
    pub const OUT_OF_ARENA: u32 = 1;
    /// Page not part of a live allocation (never allocated, or freed).
    pub const UNALLOCATED: u32 = 2;
    /// Allocated page the launch did not declare.
    pub const NOT_DECLARED: u32 = 3;
    /// Write to a page declared read-only.
    pub const READ_ONLY: u32 = 4;
    /// Address not aligned to 4 bytes.
    pub const MISALIGNED: u32 = 5;
}

/// Demo kernels (bodies only; the runtime prepends [`PRELUDE`]).
pub mod kernels {
    /// `c[i] = a[i] + b[i]`.
    pub const VADD: &str = include_str!("kernels/vadd.wgsl");
    /// Sum the values of CPU-built linked lists.
    pub const LIST: &str = include_str!("kernels/list.wgsl");
    /// `y[i] = a * x[i] + y[i]`.
    pub const SAXPY: &str = include_str!("kernels/saxpy.wgsl");
    /// Batch lookups in a CPU-built binary search tree.
    pub const TREE: &str = include_str!("kernels/tree.wgsl");
    /// One level of a level-synchronous BFS over CPU-built adjacency.
    pub const BFS: &str = include_str!("kernels/bfs.wgsl");
    /// CSR sparse matrix-vector product.
    pub const SPMV: &str = include_str!("kernels/spmv.wgsl");
    /// PolyBench 2DCONV (3x3 stencil).
    pub const CONV2D: &str = include_str!("kernels/conv2d.wgsl");
    /// PolyBench GEMM.
    pub const GEMM: &str = include_str!("kernels/gemm.wgsl");
    /// PolyBench ATAX (entry points `ax` and `aty`).
    pub const ATAX: &str = include_str!("kernels/atax.wgsl");
    /// PolyBench BICG.
    pub const BICG: &str = include_str!("kernels/bicg.wgsl");
}

/// Every kernel shipped in this crate, with its name.
pub const ALL_KERNELS: &[(&str, &str)] = &[
    ("vadd", kernels::VADD),
    ("list", kernels::LIST),
    ("saxpy", kernels::SAXPY),
    ("tree", kernels::TREE),
    ("bfs", kernels::BFS),
    ("spmv", kernels::SPMV),
    ("conv2d", kernels::CONV2D),
    ("gemm", kernels::GEMM),
    ("atax", kernels::ATAX),
    ("bicg", kernels::BICG),
];

/// The full source of a kernel: prelude + body.
pub fn with_prelude(body: &str) -> String {
    let mut s = String::with_capacity(PRELUDE.len() + body.len() + 1);
    s.push_str(PRELUDE);
    s.push('\n');
    s.push_str(body);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use svm_pagetable::{Pte, PAGE_SHIFT, PAGE_SIZE};

    fn module(src: &str) -> naga::Module {
        naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)))
    }

    /// Value of a `const NAME: u32 = ...u;` of the prelude, evaluated by naga.
    fn wgsl_const(m: &naga::Module, name: &str) -> u32 {
        let (_, c) = m
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("prelude lacks const {name}"));
        match m.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v,
            ref e => panic!("{name} is not a u32 literal: {e:?}"),
        }
    }

    #[test]
    fn pte_layout_matches_rust() {
        let m = module(PRELUDE);
        assert_eq!(wgsl_const(&m, "SVM_PTE_VALID"), Pte::VALID);
        assert_eq!(wgsl_const(&m, "SVM_PTE_WRITE"), Pte::WRITE);
        assert_eq!(wgsl_const(&m, "SVM_PTE_ALLOC"), Pte::ALLOC);
        assert_eq!(wgsl_const(&m, "SVM_PTE_COHERENT"), Pte::COHERENT);
        assert_eq!(wgsl_const(&m, "SVM_PTE_FRAME_SHIFT"), Pte::FRAME_SHIFT);
        assert_eq!(wgsl_const(&m, "SVM_PAGE_SHIFT"), PAGE_SHIFT);
        assert_eq!(wgsl_const(&m, "SVM_PAGE_WORDS") as usize, PAGE_SIZE / 4);
    }

    #[test]
    fn error_kinds_and_sizes_match_rust() {
        let m = module(PRELUDE);
        assert_eq!(wgsl_const(&m, "SVM_ERR_OUT_OF_ARENA"), err::OUT_OF_ARENA);
        assert_eq!(wgsl_const(&m, "SVM_ERR_UNALLOCATED"), err::UNALLOCATED);
        assert_eq!(wgsl_const(&m, "SVM_ERR_NOT_DECLARED"), err::NOT_DECLARED);
        assert_eq!(wgsl_const(&m, "SVM_ERR_READ_ONLY"), err::READ_ONLY);
        assert_eq!(wgsl_const(&m, "SVM_ERR_MISALIGNED"), err::MISALIGNED);
        assert_eq!(wgsl_const(&m, "SVM_ERR_RECORDS"), ERROR_RECORDS);
        assert_eq!(wgsl_const(&m, "SVM_MAX_ARG_WORDS"), MAX_ARG_WORDS);
        assert_eq!(wgsl_const(&m, "SVM_FLAG_REPLAYABLE"), flags::REPLAYABLE);
        assert_eq!(wgsl_const(&m, "SVM_LOG_FAULTS"), LOG_FAULTS);
        assert_eq!(LOG_FAULTS, 1 + ERROR_RECORDS * 4, "the fault section follows the error records");
        let pools = m
            .global_variables
            .iter()
            .filter(|(_, g)| g.name.as_deref().is_some_and(|n| n.starts_with("svm_pool")))
            .count();
        assert_eq!(pools as u32, POOL_SEGMENTS);
        let bindings = m.global_variables.iter().filter(|(_, g)| g.binding.is_some()).count();
        assert_eq!(bindings, 8, "the prelude stays within wgpu's default 8 storage buffers per stage");
    }

    #[test]
    fn every_kernel_validates() {
        for (name, body) in ALL_KERNELS {
            let src = with_prelude(body);
            let m = module(&src);
            let mut v =
                naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
            v.validate(&m).unwrap_or_else(|e| panic!("kernel {name}: {}", e.emit_to_string(&src)));
        }
    }
}
