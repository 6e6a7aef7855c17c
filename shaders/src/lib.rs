//! # svm-shaders
//!
//! The WGSL side of the runtime.
//!
//! * [`PRELUDE`]: included before every kernel. It declares the runtime's
//!   bindings (page table, launch arguments, error log, pool segments) and the
//!   typed loads and stores through managed pointers (`svm_load_f32(p)`,
//!   `svm_store_u32(p, v)`, `svm_load_ptr(p)`, …). A managed pointer is the
//!   CPU's 64-bit address as `vec2<u32>(low, high)`; naga cannot dereference
//!   64-bit device addresses, so translation is WGSL arithmetic: a check
//!   against the launch's extents, or one page-table load (see the prelude's
//!   header and [`overrides`]).
//! * [`wrap_entry_points`]: the module transformation the runtime applies
//!   to every kernel so that each invocation reports its refused accesses
//!   once, at its end, instead of branching to an atomic on every access.
//! * [`kernels`]: the demo kernels, written against the prelude only.
//!
//! The PTE bits and error kinds are defined once in Rust
//! ([`svm_pagetable::Pte`]) and mirrored in the prelude; the tests parse the
//! prelude with naga and fail if the two drift.
#![forbid(unsafe_code)]

/// The WGSL prelude (see the crate docs) with [`Windows::Fixed`], the
/// variant every device supports.
pub const PRELUDE: &str = concat!(include_str!("prelude.wgsl"), include_str!("windows_fixed.wgsl"));
/// The prelude with [`Windows::Array`].
pub const PRELUDE_ARRAY: &str =
    concat!("enable wgpu_binding_array;\n", include_str!("prelude.wgsl"), include_str!("windows_array.wgsl"));
/// [`PRELUDE_ARRAY`] without its `enable` directive (which
/// [`with_prelude_for`] puts on the kernel's first line instead).
const PRELUDE_ARRAY_BODY: &str = concat!(include_str!("prelude.wgsl"), include_str!("windows_array.wgsl"));
/// The prelude with atomics through managed pointers (`svm_atomic_*`),
/// [`Windows::Fixed`]: the windows are `array<atomic<u32>>`, so every
/// pointer access of such a kernel is an atomic load or store.
pub const PRELUDE_ATOMIC: &str =
    concat!(include_str!("prelude.wgsl"), include_str!("windows_fixed_atomic.wgsl"), include_str!("atomics.wgsl"));
/// [`PRELUDE_ATOMIC`] with [`Windows::Array`].
pub const PRELUDE_ARRAY_ATOMIC: &str = concat!(
    "enable wgpu_binding_array;\n",
    include_str!("prelude.wgsl"),
    include_str!("windows_array_atomic.wgsl"),
    include_str!("atomics.wgsl")
);
const PRELUDE_ARRAY_ATOMIC_BODY: &str =
    concat!(include_str!("prelude.wgsl"), include_str!("windows_array_atomic.wgsl"), include_str!("atomics.wgsl"));

/// Whether a kernel source uses atomics through managed pointers (then it
/// is compiled with [`PRELUDE_ATOMIC`] / [`PRELUDE_ARRAY_ATOMIC`]).
pub fn uses_pointer_atomics(body: &str) -> bool {
    body.contains("svm_atomic_")
}

/// The bind group the prelude's bindings use. Kernels may declare their own
/// storage and uniform bindings in the groups below it (bound access).
pub const RUNTIME_GROUP: u32 = 3;

/// The prelude functions kernels may call: typed loads and stores through
/// managed pointers, pointer arithmetic, launch arguments. Everything else
/// the prelude defines (its bindings, its private state, `svm_pool_write`,
/// `svm_translate`, ...) is sealed: `create_kernel` refuses a kernel that
/// names it, since it would bypass the access checks.
pub const PUBLIC_FUNCTIONS: &[&str] = &[
    "svm_load_u32",
    "svm_store_u32",
    "svm_load_f32",
    "svm_store_f32",
    "svm_load_i32",
    "svm_store_i32",
    "svm_ptr_add",
    "svm_index",
    "svm_is_null",
    "svm_load_ptr",
    "svm_store_ptr",
    "svm_arg_u32",
    "svm_arg_f32",
    "svm_arg_ptr",
    "svm_failed",
    "svm_load_vec4u",
    "svm_store_vec4u",
    "svm_load_vec4f",
    "svm_store_vec4f",
    "svm_load_u64",
    "svm_store_u64",
    "svm_atomic_add_u32",
    "svm_atomic_sub_u32",
    "svm_atomic_min_u32",
    "svm_atomic_max_u32",
    "svm_atomic_and_u32",
    "svm_atomic_or_u32",
    "svm_atomic_xor_u32",
    "svm_atomic_exchange_u32",
    "svm_atomic_compare_exchange_u32",
    "svm_atomic_add_i32",
    "svm_atomic_sub_i32",
    "svm_atomic_min_i32",
    "svm_atomic_max_i32",
    "svm_atomic_and_i32",
    "svm_atomic_or_i32",
    "svm_atomic_xor_i32",
    "svm_atomic_exchange_i32",
    "svm_atomic_compare_exchange_i32",
];

/// How the prelude binds the windows of the pool / arena view.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Windows {
    /// Four plain bindings, 3 to 6 (`svm_pool0..3`): any device.
    Fixed,
    /// One binding array of [`MAX_WINDOWS`] at binding 3 (`svm_pool`):
    /// devices with storage-buffer binding arrays and non-uniform indexing.
    Array,
}

impl Windows {
    /// How many windows the prelude can address.
    pub fn count(self) -> u32 {
        match self {
            Windows::Fixed => POOL_SEGMENTS,
            Windows::Array => MAX_WINDOWS,
        }
    }
    /// The prelude's source.
    /// The prelude with pointer atomics.
    pub fn prelude_atomic(self) -> &'static str {
        match self {
            Windows::Fixed => PRELUDE_ATOMIC,
            Windows::Array => PRELUDE_ARRAY_ATOMIC,
        }
    }
    /// The prelude's source (without pointer atomics).
    pub fn prelude(self) -> &'static str {
        match self {
            Windows::Fixed => PRELUDE,
            Windows::Array => PRELUDE_ARRAY,
        }
    }
    /// The prelude's bound resources (group [`RUNTIME_GROUP`]), by binding.
    pub fn bindings(self) -> &'static [&'static str] {
        match self {
            Windows::Fixed => &PRELUDE_BINDINGS,
            Windows::Array => &["svm_pt", "svm_args", "svm_log", "svm_pool", "svm_coherent"],
        }
    }
}

/// Number of pool segment bindings of [`Windows::Fixed`] (`svm_pool0..3`).
pub const POOL_SEGMENTS: u32 = 4;
/// Windows in the binding array of [`Windows::Array`] (`SVM_MAX_WINDOWS`).
pub const MAX_WINDOWS: u32 = 32;
/// Binding of the first window (or of the window array).
pub const WINDOWS_BINDING: u32 = 3;
/// Binding of the coherent window.
pub const COHERENT_BINDING: u32 = 7;

/// Launch argument words (`SVM_MAX_ARG_WORDS`).
pub const MAX_ARG_WORDS: u32 = 64;
/// Error records kept per launch (`SVM_ERR_RECORDS`).
pub const ERROR_RECORDS: u32 = 16;
/// Word offset of the fault section in the launch log (`SVM_LOG_FAULTS`).
pub const LOG_FAULTS: u32 = 65;

/// The bound resources (group [`RUNTIME_GROUP`]) of the prelude with [`Windows::Fixed`].
pub const PRELUDE_BINDINGS: [&str; 8] =
    ["svm_pt", "svm_args", "svm_log", "svm_pool0", "svm_pool1", "svm_pool2", "svm_pool3", "svm_coherent"];

/// Extent slots in the launch arguments (`SVM_MAX_EXTENTS`).
pub const MAX_EXTENTS: u32 = 8;

/// Names of the prelude's pipeline-overridable constants, which the runtime
/// sets when it specializes a kernel.
pub mod overrides {
    /// Pool / arena-view bindings in use (1..=4).
    pub const SEGMENTS: &str = "SVM_SEGMENTS";
    /// log2 of the pages per segment.
    pub const SEGMENT_PAGE_SHIFT: &str = "SVM_SEGMENT_PAGE_SHIFT";
    /// Extent slots checked per access (0: the page-table path).
    pub const EXTENTS: &str = "SVM_EXTENTS";
    /// Non-resident accesses are recorded as faults for replay.
    pub const REPLAYABLE: &str = "SVM_REPLAYABLE";
    /// The coherent window is bound.
    pub const COHERENT: &str = "SVM_COHERENT";
    /// Any word of a segment may be read where an access is refused.
    pub const SPECULATIVE_READS: &str = "SVM_SPECULATIVE_READS";
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
    /// Refused on the extent path; the runtime finds which of the above
    /// applies from its page table.
    pub const REFUSED: u32 = 6;
}

/// Demo kernels (bodies only; the runtime prepends [`PRELUDE`]).
pub mod kernels {
    /// `c[i] = a[i] + b[i]`.
    pub const VADD: &str = include_str!("kernels/vadd.wgsl");
    /// Sum the values of CPU-built linked lists (nodes: [`ListNode`]).
    pub const LIST: &str = include_str!("kernels/list.wgsl");

    /// The node [`LIST`] walks (16 bytes, as the kernel reads it).
    #[repr(C)]
    #[derive(Copy, Clone, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct ListNode {
        /// Managed address of the next node; 0 ends the list.
        pub next: u64,
        /// The value summed.
        pub value: u32,
        /// Padding to 16 bytes.
        pub pad: u32,
    }
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

    // Bound-access kernels: plain WGSL with their own bindings (a uniform
    // `Params` at group 0 binding 0, then storage arrays), no prelude. The
    // same source runs on managed ranges and on plain wgpu buffers.

    /// `c[i] = a[i] + b[i]` (bound).
    pub const VADD_BOUND: &str = include_str!("kernels/vadd_bound.wgsl");
    /// `y[i] = a * x[i] + y[i]` (bound).
    pub const SAXPY_BOUND: &str = include_str!("kernels/saxpy_bound.wgsl");
    /// CSR sparse matrix-vector product (bound).
    pub const SPMV_BOUND: &str = include_str!("kernels/spmv_bound.wgsl");
    /// PolyBench 2DCONV (bound).
    pub const CONV2D_BOUND: &str = include_str!("kernels/conv2d_bound.wgsl");
    /// PolyBench GEMM (bound).
    pub const GEMM_BOUND: &str = include_str!("kernels/gemm_bound.wgsl");
    /// PolyBench ATAX (bound; entry points `ax` and `aty`).
    pub const ATAX_BOUND: &str = include_str!("kernels/atax_bound.wgsl");
    /// PolyBench BICG (bound).
    pub const BICG_BOUND: &str = include_str!("kernels/bicg_bound.wgsl");
    /// Histogram with `array<atomic<u32>>` bins (bound).
    pub const HISTOGRAM_BOUND: &str = include_str!("kernels/histogram_bound.wgsl");
    /// One level of a top-down BFS with an atomic frontier queue (bound).
    pub const BFS_TOPDOWN_BOUND: &str = include_str!("kernels/bfs_topdown_bound.wgsl");
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

/// The bound-access kernels (no prelude functions: compiled as they are,
/// and valid standalone WGSL), with their names.
pub const BOUND_KERNELS: &[(&str, &str)] = &[
    ("vadd_bound", kernels::VADD_BOUND),
    ("saxpy_bound", kernels::SAXPY_BOUND),
    ("spmv_bound", kernels::SPMV_BOUND),
    ("conv2d_bound", kernels::CONV2D_BOUND),
    ("gemm_bound", kernels::GEMM_BOUND),
    ("atax_bound", kernels::ATAX_BOUND),
    ("bicg_bound", kernels::BICG_BOUND),
    ("histogram_bound", kernels::HISTOGRAM_BOUND),
    ("bfs_topdown_bound", kernels::BFS_TOPDOWN_BOUND),
];

/// The full source of a kernel: prelude ([`Windows::Fixed`]) + body.
pub fn with_prelude(body: &str) -> String {
    with_prelude_for(Windows::Fixed, body)
}

/// The full source of a kernel: body + the prelude for `windows`. The body
/// comes first (WGSL declarations may appear in any order) so that compile
/// errors name the kernel's own line numbers; the prelude's `enable`
/// directive, where it has one, shares the body's first line.
pub fn with_prelude_for(windows: Windows, body: &str) -> String {
    let atomics = uses_pointer_atomics(body);
    let (enable, prelude) = match (windows, atomics) {
        (Windows::Fixed, false) => ("", PRELUDE),
        (Windows::Fixed, true) => ("", PRELUDE_ATOMIC),
        (Windows::Array, false) => ("enable wgpu_binding_array; ", PRELUDE_ARRAY_BODY),
        (Windows::Array, true) => ("enable wgpu_binding_array; ", PRELUDE_ARRAY_ATOMIC_BODY),
    };
    let mut s = String::with_capacity(enable.len() + prelude.len() + body.len() + 1);
    s.push_str(enable);
    s.push_str(body);
    s.push('\n');
    s.push_str(prelude);
    s
}

/// Name of the prelude function every wrapped entry point calls last.
pub const REPORT_FN: &str = "svm_report";
/// Name of the prelude function every wrapped entry point calls first.
pub const INIT_FN: &str = "svm_init";

/// Why [`wrap_entry_points`] could not transform a module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The module lacks the prelude's `svm_init` / `svm_report` (not built
    /// with [`with_prelude`]).
    #[error("the module has no `{INIT_FN}` / `{REPORT_FN}` functions: was the prelude included?")]
    NoReport,
    /// An entry point that is not a compute shader.
    #[error("entry point `{0}` is not a compute shader")]
    NotCompute(String),
}

/// Make every compute entry point report its invocation's refused access
/// after it returns: the entry's body moves to a plain function
/// (`<name>_svm_body`), and the entry point becomes
/// `svm_init(); body(args); svm_report();`.
///
/// This is what lets the prelude record errors without branching on every
/// access (see its header): kernels return from anywhere, and the report
/// still runs exactly once per invocation.
pub fn wrap_entry_points(module: &mut naga::Module) -> Result<(), WrapError> {
    use naga::{Block, Expression, Function, Span, Statement};
    let find = |name: &str| module.functions.iter().find(|(_, f)| f.name.as_deref() == Some(name)).map(|(h, _)| h);
    let (init, report) = find(INIT_FN).zip(find(REPORT_FN)).ok_or(WrapError::NoReport)?;
    for ep in &mut module.entry_points {
        if ep.stage != naga::ShaderStage::Compute {
            return Err(WrapError::NotCompute(ep.name.clone()));
        }
        let mut body = core::mem::take(&mut ep.function);
        let arguments = body.arguments.clone();
        // Builtin bindings belong to the entry point only.
        body.arguments.iter_mut().for_each(|a| a.binding = None);
        body.name = Some(format!("{}_svm_body", ep.name));
        let body = module.functions.append(body, Span::UNDEFINED);
        let mut f = Function { name: Some(ep.name.clone()), arguments, ..Function::default() };
        let args = (0..f.arguments.len())
            .map(|i| f.expressions.append(Expression::FunctionArgument(i as u32), Span::UNDEFINED))
            .collect();
        f.body = Block::from_vec(vec![
            Statement::Call { function: init, arguments: Vec::new(), result: None },
            Statement::Call { function: body, arguments: args, result: None },
            Statement::Call { function: report, arguments: Vec::new(), result: None },
            Statement::Return { value: None },
        ]);
        ep.function = f;
    }
    Ok(())
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
        assert_eq!(wgsl_const(&m, "SVM_ERR_REFUSED"), err::REFUSED);
        assert_eq!(wgsl_const(&m, "SVM_MAX_EXTENTS"), MAX_EXTENTS);
        for name in [
            overrides::SEGMENTS,
            overrides::SEGMENT_PAGE_SHIFT,
            overrides::EXTENTS,
            overrides::REPLAYABLE,
            overrides::COHERENT,
            overrides::SPECULATIVE_READS,
        ] {
            assert!(m.overrides.iter().any(|(_, o)| o.name.as_deref() == Some(name)), "prelude lacks override {name}");
        }
        assert_eq!(wgsl_const(&m, "SVM_LOG_FAULTS"), LOG_FAULTS);
        assert_eq!(LOG_FAULTS, 1 + ERROR_RECORDS * 4, "the fault section follows the error records");
        let pools = m
            .global_variables
            .iter()
            .filter(|(_, g)| g.name.as_deref().is_some_and(|n| n.starts_with("svm_pool")))
            .count();
        assert_eq!(pools as u32, POOL_SEGMENTS);
        for w in [Windows::Fixed, Windows::Array] {
            let m = module(w.prelude());
            let mut bindings: Vec<(u32, &str)> = m
                .global_variables
                .iter()
                .filter_map(|(_, g)| Some((g.binding.as_ref()?.binding, g.name.as_deref()?)))
                .collect();
            bindings.sort_unstable();
            let names: Vec<&str> = bindings.iter().map(|&(_, n)| n).collect();
            assert_eq!(names, w.bindings(), "{w:?}: bindings() lists the prelude's bindings in order");
            assert!(bindings.len() <= 8, "the prelude stays within wgpu's default 8 storage buffers per stage");
            let find = |name: &str| bindings.iter().find(|&&(_, n)| n == name).map(|&(b, _)| b);
            assert_eq!(find("svm_coherent"), Some(COHERENT_BINDING), "{w:?}");
            assert_eq!(find(if w == Windows::Fixed { "svm_pool0" } else { "svm_pool" }), Some(WINDOWS_BINDING));
        }
        assert_eq!(wgsl_const(&module(PRELUDE_ARRAY), "SVM_MAX_WINDOWS"), MAX_WINDOWS);
    }

    fn validate(m: &naga::Module) -> Result<naga::valid::ModuleInfo, String> {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(m)
            .map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn every_kernel_validates_wrapped() {
        for (name, body, w) in ALL_KERNELS.iter().flat_map(|&(n, b)| [(n, b, Windows::Fixed), (n, b, Windows::Array)]) {
            let src = with_prelude_for(w, body);
            let mut m = module(&src);
            validate(&m).unwrap_or_else(|e| panic!("kernel {name}: {e}"));
            let entries: Vec<String> = m.entry_points.iter().map(|e| e.name.clone()).collect();
            wrap_entry_points(&mut m).expect("wrap");
            validate(&m).unwrap_or_else(|e| panic!("kernel {name} wrapped: {e}"));
            for (ep, name) in m.entry_points.iter().zip(&entries) {
                assert_eq!(&ep.name, name);
                // body(args); svm_report(); return
                let calls: Vec<_> = ep
                    .function
                    .body
                    .iter()
                    .filter_map(|s| match s {
                        naga::Statement::Call { function, .. } => m.functions[*function].name.clone(),
                        _ => None,
                    })
                    .collect();
                assert_eq!(calls, [INIT_FN.to_string(), format!("{name}_svm_body"), REPORT_FN.to_string()]);
            }
        }
    }

    #[test]
    fn prelude_bindings_are_in_the_runtime_group_and_public_functions_exist() {
        for w in [Windows::Fixed, Windows::Array] {
            let m = module(w.prelude_atomic());
            // The atomic prelude binds the same resources, as atomics.
            let names = |m: &naga::Module| {
                let mut v: Vec<(u32, String)> = m
                    .global_variables
                    .iter()
                    .filter_map(|(_, g)| Some((g.binding.as_ref()?.binding, g.name.clone()?)))
                    .collect();
                v.sort_unstable();
                v
            };
            assert_eq!(names(&m), names(&module(w.prelude())), "{w:?}");
            for (_, g) in m.global_variables.iter() {
                if let Some(b) = &g.binding {
                    assert_eq!(b.group, RUNTIME_GROUP, "{w:?}: {:?}", g.name);
                }
            }
            for f in PUBLIC_FUNCTIONS {
                assert!(m.functions.iter().any(|(_, x)| x.name.as_deref() == Some(*f)), "{w:?} lacks {f}");
            }
        }
    }

    /// The kernel's body comes first: an error on its line 2 is reported on
    /// line 2 with either prelude.
    #[test]
    fn errors_name_the_kernels_own_lines() {
        let body = "@compute @workgroup_size(1)\nfn main() { let x: u32 = undefined_thing; }\n";
        for w in [Windows::Fixed, Windows::Array] {
            let src = with_prelude_for(w, body);
            let e = naga::front::wgsl::parse_str(&src).expect_err("undefined identifier");
            let loc = e.location(&src).expect("a location");
            assert_eq!(loc.line_number, 2, "{w:?}");
        }
    }

    /// Bound kernels parse and validate standalone, name no `svm_` item
    /// (so the runtime compiles them without the prelude) and bind only
    /// groups below the runtime's.
    #[test]
    fn bound_kernels_validate_standalone() {
        for &(name, src) in BOUND_KERNELS {
            assert!(!src.contains("svm_"), "{name} names a prelude item");
            assert!(ALL_KERNELS.iter().all(|&(_, b)| b != src), "{name} is in ALL_KERNELS");
            let m = module(src);
            validate(&m).unwrap_or_else(|e| panic!("bound kernel {name}: {e}"));
            assert!(!m.entry_points.is_empty(), "{name} has no entry point");
            for (_, g) in m.global_variables.iter() {
                if let Some(b) = &g.binding {
                    assert!(b.group < RUNTIME_GROUP, "{name}: {:?} in group {}", g.name, b.group);
                }
            }
        }
    }

    #[test]
    fn wrapping_needs_the_prelude() {
        let mut m = module("@compute @workgroup_size(1) fn main() {}");
        assert_eq!(wrap_entry_points(&mut m), Err(WrapError::NoReport));
    }
}
