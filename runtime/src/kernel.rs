//! Kernels, their arguments and their declared accesses.

use core::marker::PhantomData;

use crate::managed::ManagedVec;

/// Creation parameters of a [`Kernel`].
#[derive(Clone, Debug)]
pub struct KernelDescriptor<'a> {
    /// Name for errors and traces.
    pub label: &'a str,
    /// WGSL body written against the prelude (`svm_shaders::PRELUDE` is
    /// prepended; the kernel declares no bindings of its own).
    pub source: &'a str,
    /// Compute entry point.
    pub entry_point: &'a str,
}

/// A compiled kernel, usable with the runtime that made it.
///
/// One source, several pipelines: the runtime specializes the prelude per
/// launch kind (extent or page-table path, replayable, windows bound) and
/// compiles each variant the first time a launch needs it.
#[derive(Debug)]
pub struct Kernel {
    pub(crate) label: String,
    pub(crate) entry_point: String,
    /// The validated module, entry points wrapped (see
    /// [`svm_shaders::wrap_entry_points`]).
    pub(crate) module: wgpu::ShaderModule,
    pub(crate) pipelines: parking_lot::Mutex<Vec<(Variant, wgpu::ComputePipeline)>>,
    pub(crate) runtime_id: u64,
}

/// How a launch specializes the prelude (its pipeline-overridable
/// constants; the per-device ones, segments, are fixed per runtime).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Variant {
    /// Pool / view bindings read (`SVM_SEGMENTS`).
    pub segments: u32,
    /// Extent slots checked per access; 0: the page-table path.
    pub extents: u32,
    pub replayable: bool,
    pub coherent: bool,
    /// How loads may read before the check's outcome is known (the
    /// prelude's `SVM_SPECULATIVE_READS`: 0 no, 1 any index, 2 refused loads
    /// read the launch's safe word).
    pub speculative: u32,
}

impl Kernel {
    /// The kernel's label.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// One launch argument. Pointers take two words (low, high), scalars one; the
/// kernel reads them with `svm_arg_ptr(i)` / `svm_arg_u32(i)` /
/// `svm_arg_f32(i)` at the word index where they start.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Arg {
    /// A managed pointer (any address; the kernel's accesses are checked).
    Ptr(u64),
    /// A 32-bit unsigned scalar.
    U32(u32),
    /// A 32-bit float scalar.
    F32(f32),
}

impl Arg {
    /// A pointer argument from a raw pointer.
    pub fn ptr<T>(p: *const T) -> Self {
        Arg::Ptr(p as usize as u64)
    }
    pub(crate) fn push_words(self, out: &mut Vec<u32>) {
        match self {
            // Splitting the address into its halves is the point.
            #[allow(clippy::cast_possible_truncation, reason = "low and high halves")]
            Arg::Ptr(p) => out.extend([p as u32, (p >> 32) as u32]),
            Arg::U32(v) => out.push(v),
            Arg::F32(v) => out.push(v.to_bits()),
        }
    }
}

/// Whether a launch may write a declared range.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// Read only: pages stay readable on the CPU; the device copy is
    /// discarded after the launch.
    Read,
    /// Read and write: pages belong to the device after the launch, until the
    /// CPU touches them.
    ReadWrite,
}

/// A range a launch declares it may access. Safe constructors borrow the
/// owner (shared for reads, exclusive for writes), so no Rust reference can
/// observe the kernel's writes.
#[derive(Copy, Clone, Debug)]
pub struct Access<'a> {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) mode: AccessMode,
    _borrow: PhantomData<&'a ()>,
}

impl<'a> Access<'a> {
    /// The kernel may read `v`.
    pub fn read<T: bytemuck::Pod>(v: &'a ManagedVec<T>) -> Self {
        Self {
            addr: v.as_ptr() as usize,
            len: core::mem::size_of_val(&**v),
            mode: AccessMode::Read,
            _borrow: PhantomData,
        }
    }
    /// The kernel may read and write `v`.
    pub fn read_write<T: bytemuck::Pod>(v: &'a mut ManagedVec<T>) -> Self {
        Self {
            addr: v.as_ptr() as usize,
            len: core::mem::size_of_val(&**v),
            mode: AccessMode::ReadWrite,
            _borrow: PhantomData,
        }
    }
    /// A raw range of managed memory (for data reached through raw pointers).
    ///
    /// # Safety
    /// With [`AccessMode::ReadWrite`], no Rust reference to any byte of the
    /// range may be alive during the launch: the kernel's writes would
    /// change memory behind it. (Raw pointers are fine.)
    #[allow(unsafe_code, reason = "the contract is on the caller; the body does nothing unsafe")]
    pub unsafe fn raw(addr: *const u8, len: usize, mode: AccessMode) -> Self {
        Self { addr: addr as usize, len, mode, _borrow: PhantomData }
    }
}

/// A launch: kernel arguments, declared accesses, dispatch size.
#[derive(Clone, Debug)]
pub struct LaunchDescriptor<'a> {
    /// Argument words, in order.
    pub args: &'a [Arg],
    /// Every range the kernel may touch. Accesses outside them are refused
    /// on the device and reported as [`crate::LaunchError::Kernel`].
    pub access: &'a [Access<'a>],
    /// Workgroups in x, y, z.
    pub workgroups: [u32; 3],
}

/// How a launch treats accesses outside what is resident.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaunchOptions {
    /// The kernel's result does not depend on how many times it runs (its
    /// writes are idempotent). Then an access to an allocated page that is
    /// not mapped is a *GPU fault*: the access yields 0 and does nothing, the
    /// runtime migrates the faulted pages (and the chunk around them) after
    /// the pass, and runs the kernel again, until a pass completes without
    /// faults. Declared ranges are still migrated up front (a prefetch), and
    /// may be empty. Without it, undeclared accesses are errors.
    pub replayable: bool,
    /// Upper bound on replays ([`crate::LaunchError::ReplayLimit`] beyond).
    pub max_replays: u32,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self { replayable: false, max_replays: 256 }
    }
}

impl LaunchOptions {
    /// Replayable, with the default bound.
    pub fn replayable() -> Self {
        Self { replayable: true, ..Self::default() }
    }
    /// Set the replay bound.
    pub fn max_replays(mut self, n: u32) -> Self {
        self.max_replays = n;
        self
    }
}

/// What a launch did.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LaunchReport {
    /// Extra passes run after GPU faults.
    pub replays: u32,
    /// Distinct pages that faulted on the GPU, over all passes.
    pub gpu_fault_pages: u64,
    /// Pages migrated host → device by this launch (declared + faulted).
    pub migrated_pages: u64,
}
