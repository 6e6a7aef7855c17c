//! Kernels, their arguments and their declared accesses.

use core::marker::PhantomData;

use crate::managed::ManagedRange;

/// Creation parameters of a [`Kernel`].
#[derive(Clone, Debug)]
pub struct KernelDescriptor<'a> {
    /// Name for errors and traces.
    pub label: &'a str,
    /// WGSL source. Two ways to reach managed memory, mixable in one kernel:
    ///
    /// * **bound access**: the kernel declares its own storage (any WGSL
    ///   type, atomics included) and uniform bindings in groups 0-2, as any
    ///   wgpu kernel does, and each launch binds managed ranges to them
    ///   ([`Binding`]); the GPU translates and bounds-checks;
    /// * **pointer access**: the prelude's `svm_load_*` / `svm_store_*` /
    ///   `svm_load_ptr` through managed pointers stored in data or passed as
    ///   arguments, checked in software.
    ///
    /// A kernel that names a prelude function is compiled with the prelude
    /// (its bindings take group [`svm_shaders::RUNTIME_GROUP`], which the
    /// kernel may then not use, and its internals are sealed); one that does
    /// not is compiled as it is.
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
    pub(crate) module: core::mem::ManuallyDrop<wgpu::ShaderModule>,
    pub(crate) pipelines: core::mem::ManuallyDrop<parking_lot::Mutex<Vec<(Variant, wgpu::ComputePipeline)>>>,
    pub(crate) runtime_id: u64,
    /// The process that made it (a forked child leaks the device objects).
    pub(crate) pid: u32,
    /// The kernel's own bindings, in launch order (group, then binding).
    pub(crate) bindings: Vec<KernelBinding>,
    /// Layouts of groups 0..=2 (those the kernel uses).
    pub(crate) group_layouts: core::mem::ManuallyDrop<Vec<Option<wgpu::BindGroupLayout>>>,
    /// Groups 0..=2, then the runtime's when [`Self::prelude`].
    pub(crate) layout: core::mem::ManuallyDrop<wgpu::PipelineLayout>,
    /// Compiled with the prelude (pointer access): the runtime's group is
    /// bound and the entry points are wrapped.
    pub(crate) prelude: bool,
    /// A function of the kernel's own reads launch arguments (`svm_arg_*`).
    pub(crate) reads_args: bool,
}

/// What a kernel's own binding expects (from its WGSL declaration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KernelBinding {
    pub name: String,
    pub group: u32,
    pub binding: u32,
    pub ty: BindingType,
    /// Smallest range the type admits (a runtime-sized array: one element).
    pub min_size: u64,
    /// Alignment the range's start needs (the type's alignment).
    pub align: u32,
}

/// The kind of a kernel's own binding.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum BindingType {
    /// `var<storage, read>` (declared read-only) or `var<storage, read_write>`.
    Storage { read_only: bool },
    /// `var<uniform>`.
    Uniform,
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

impl Drop for Kernel {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A forked child: the device objects are the parent's.
            return;
        }
        // SAFETY: each field is dropped exactly once, here, and never used
        // again (`self` is being dropped).
        #[allow(unsafe_code, reason = "ManuallyDrop of device objects, so that a forked child can leak them")]
        unsafe {
            core::mem::ManuallyDrop::drop(&mut self.pipelines);
            core::mem::ManuallyDrop::drop(&mut self.layout);
            core::mem::ManuallyDrop::drop(&mut self.group_layouts);
            core::mem::ManuallyDrop::drop(&mut self.module);
        }
    }
}

impl Variant {
    /// The one variant of a kernel without the prelude.
    pub const PLAIN: Self = Self { segments: 0, extents: 0, replayable: false, coherent: false, speculative: 0 };
}

impl Kernel {
    /// The kernel's label.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The kernel's own bindings as `(name, group, binding)`, in the order a
    /// launch lists them ([`LaunchDescriptor::bindings`]).
    pub fn bindings(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.bindings.iter().map(|b| (b.name.as_str(), b.group, b.binding))
    }
    /// Whether the kernel uses the prelude (pointer access).
    pub fn uses_prelude(&self) -> bool {
        self.prelude
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
    /// The kernel may read `v` (a [`crate::ManagedVec`] or a slice of one).
    pub fn read<R: ManagedRange + ?Sized>(v: &'a R) -> Self {
        let (addr, len) = v.byte_range();
        Self { addr, len, mode: AccessMode::Read, _borrow: PhantomData }
    }
    /// The kernel may read and write `v`.
    pub fn read_write<R: ManagedRange + ?Sized>(v: &'a mut R) -> Self {
        let (addr, len) = v.byte_range();
        Self { addr, len, mode: AccessMode::ReadWrite, _borrow: PhantomData }
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

/// What a launch binds to one of the kernel's own bindings: a managed
/// range (for `var<storage, ...>`) or a plain value (for `var<uniform>`).
///
/// A managed binding is also the launch's declared access to that range:
/// read for [`Binding::read`], read and write for [`Binding::read_write`]
/// (which borrows the owner exclusively, so no Rust reference can observe
/// the kernel's writes). The runtime makes the range resident and binds its
/// device memory directly: the kernel's accesses are bounds-checked by the
/// GPU against the range (robust buffer access), with no software check.
#[derive(Copy, Clone, Debug)]
pub struct Binding<'a> {
    pub(crate) target: BindTarget<'a>,
}

#[derive(Copy, Clone, Debug)]
pub(crate) enum BindTarget<'a> {
    /// `discard`: the range's whole pages need not be copied to the device
    /// (they start zeroed there).
    Managed {
        addr: usize,
        len: usize,
        mode: AccessMode,
        discard: bool,
    },
    Uniform(&'a [u8]),
}

impl<'a> Binding<'a> {
    /// Bind `v` (a [`crate::ManagedVec`] or a slice of one) read-only; the
    /// kernel declares it `var<storage, read>`.
    pub fn read<R: ManagedRange + ?Sized>(v: &'a R) -> Self {
        let (addr, len) = v.byte_range();
        Self { target: BindTarget::Managed { addr, len, mode: AccessMode::Read, discard: false } }
    }
    /// Bind `v` read-write; the kernel declares it `var<storage, read_write>`
    /// (or `var<storage, read>`).
    pub fn read_write<R: ManagedRange + ?Sized>(v: &'a mut R) -> Self {
        let (addr, len) = v.byte_range();
        Self { target: BindTarget::Managed { addr, len, mode: AccessMode::ReadWrite, discard: false } }
    }
    /// Bind `v` read-write *for output*: its previous contents need not be
    /// copied to the device — on the staged path (discrete GPUs) and in the
    /// sparse mode the pages the range covers whole start zeroed on the
    /// device instead; a host-mapped pool copies anyway (zeroing costs the
    /// same there) and the coherent modes use the host pages in place. So
    /// bytes the kernel does not write read as zero or as their old value
    /// afterwards. For results a kernel writes whole, it saves the copy in
    /// (explicit-copy code simply does not upload outputs).
    pub fn write_discard<R: ManagedRange + ?Sized>(v: &'a mut R) -> Self {
        let (addr, len) = v.byte_range();
        Self { target: BindTarget::Managed { addr, len, mode: AccessMode::ReadWrite, discard: true } }
    }
    /// Bind a plain value as a uniform buffer (`var<uniform> p: Params;`):
    /// typed arguments read by field. `T` must have the WGSL struct's layout
    /// (`#[repr(C)]`, fields padded as WGSL's uniform layout rules say).
    pub fn uniform<T: bytemuck::Pod>(v: &'a T) -> Self {
        Self { target: BindTarget::Uniform(bytemuck::bytes_of(v)) }
    }
    /// Bind a raw range of managed memory.
    ///
    /// # Safety
    /// With [`AccessMode::ReadWrite`], no Rust reference to any byte of the
    /// range may be alive during the launch: the kernel's writes would
    /// change memory behind it. (Raw pointers are fine.)
    #[allow(unsafe_code, reason = "the contract is on the caller; the body does nothing unsafe")]
    pub unsafe fn raw(addr: *const u8, len: usize, mode: AccessMode) -> Self {
        Self { target: BindTarget::Managed { addr: addr as usize, len, mode, discard: false } }
    }
}

/// A launch: kernel arguments, bindings, declared accesses, dispatch size.
/// `..Default::default()` fills what a launch does not use.
#[derive(Clone, Debug)]
pub struct LaunchDescriptor<'a> {
    /// Argument words for the prelude's `svm_arg_*`, in order.
    pub args: &'a [Arg],
    /// One [`Binding`] per binding of the kernel's own, in the order of
    /// [`Kernel::bindings`]: by group, then by binding number. Bound ranges
    /// are declared accesses too.
    pub bindings: &'a [Binding<'a>],
    /// Further ranges the kernel may reach through pointers. Pointer
    /// accesses outside the declared and bound ranges are refused on the
    /// device and reported as [`crate::LaunchError::Kernel`].
    pub access: &'a [Access<'a>],
    /// Workgroups in x, y, z.
    pub workgroups: [u32; 3],
}

impl Default for LaunchDescriptor<'_> {
    fn default() -> Self {
        Self { args: &[], bindings: &[], access: &[], workgroups: [1, 1, 1] }
    }
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
    /// GPU write faults are served anywhere in the arena, not only in
    /// ranges declared read-write ([`Self::allow_undeclared_writes`]).
    pub(crate) undeclared_writes: bool,
    /// Longest a pass may run ([`crate::LaunchError::Timeout`] beyond; the
    /// device is then treated as lost). `None`: no limit.
    pub timeout: Option<core::time::Duration>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self { replayable: false, max_replays: 256, undeclared_writes: false, timeout: None }
    }
}

impl LaunchOptions {
    /// Replayable, with the default bound.
    pub fn replayable() -> Self {
        Self { replayable: true, ..Self::default() }
    }
    /// A replayable launch may also write pages it did not declare
    /// read-write: their write faults are served read-write (the page
    /// becomes device-owned) instead of refused as `NotDeclared` /
    /// `ReadOnly`. Without it, a replayable launch reads anything allocated
    /// but writes only what it declared read-write (and the pages the
    /// device already owns are mapped read-only unless so declared).
    ///
    /// # Safety
    /// The kernel may then write any allocated byte of the arena: no Rust
    /// reference (`&`, `&mut`, a `ManagedVec`'s deref) to any byte the
    /// kernel writes may be alive during the launch.
    #[allow(unsafe_code, reason = "the contract is on the caller; the body does nothing unsafe")]
    pub unsafe fn allow_undeclared_writes(mut self) -> Self {
        self.undeclared_writes = true;
        self
    }
    /// Give up on a pass that runs longer than `after`: the launch returns
    /// [`crate::LaunchError::Timeout`] and the device is treated as lost (a
    /// kernel cannot be stopped once it runs): every later operation fails
    /// with `DeviceError::Lost`, and [`crate::Svm::lost_ranges`] lists the
    /// pages whose only current copy was the device's (or that the kernel
    /// was writing in place; they are taken from the CPU). Zero is refused
    /// at launch ([`crate::LaunchError::ZeroTimeout`]).
    pub fn timeout(mut self, after: core::time::Duration) -> Self {
        self.timeout = Some(after);
        self
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
