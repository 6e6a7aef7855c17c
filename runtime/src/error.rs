//! Errors, one enum per operation (as wgpu-core does), plus the shared
//! [`DeviceError`].

use svm_migrate::MigrateError;

/// Result alias of this crate.
pub type Result<T, E = SvmError> = core::result::Result<T, E>;

/// Device failures the user cannot anticipate.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The device was lost; pages it owned could not be brought back.
    #[error("GPU device lost: {0}")]
    Lost(String),
    /// The driver reported an error the runtime did not expect.
    #[error("unexpected GPU error: {0}")]
    Unexpected(String),
    /// Used in a forked child: the runtime (its GPU device, its managed
    /// memory, its fault service) belongs to the process that created it.
    #[error("svm runtime of process {owner} used in process {current}: managed memory and the GPU are not inherited across fork")]
    NotInherited {
        /// The process that created the runtime.
        owner: u32,
        /// This process.
        current: u32,
    },
}

/// Creating a runtime failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SvmError {
    /// No adapter matched (`WGPU_ADAPTER_NAME`, `WGPU_BACKEND`).
    #[error(
        "no GPU adapter found ({0}); on Debian/Ubuntu install mesa-vulkan-drivers for the lavapipe software driver"
    )]
    NoAdapter(String),
    /// The adapter refused the device.
    #[error("request_device failed: {0}")]
    RequestDevice(String),
    /// The arena or fault backend could not be set up.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// Invalid descriptor.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The device failed during set-up.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// `alloc` failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// Zero-byte allocations are refused (they would have no address).
    #[error("zero-size allocation")]
    ZeroSize,
    /// More than the arena holds.
    #[error("allocation of {requested} bytes exceeds the arena ({arena} bytes)")]
    TooLarge {
        /// Bytes asked for.
        requested: usize,
        /// Arena size.
        arena: usize,
    },
    /// The arena has no free range large enough.
    #[error("arena exhausted: {requested} bytes asked, largest free range {largest_free} bytes")]
    ArenaExhausted {
        /// Bytes asked for.
        requested: usize,
        /// Largest free range.
        largest_free: usize,
    },
    /// The element type is aligned above a page (allocations are page
    /// aligned).
    #[error("alignment {align} exceeds the {max}-byte alignment of managed allocations")]
    Alignment {
        /// The type's alignment.
        align: usize,
        /// What allocations guarantee.
        max: usize,
    },
    /// Used in a forked child: managed memory is not inherited across fork.
    #[error("managed memory is not inherited across fork: this runtime belongs to the parent process")]
    NotInherited,
    /// Called inside this thread's own [`crate::Svm::with_bindings`] scope
    /// on memory a device maps in place (an `AccessedBy` range): unmapping
    /// it waits for every pass, the scope's own included, which ends only
    /// after the scope. Free it after the scope (an owner dropped there
    /// leaks it, with this error logged).
    #[error("{addr:#x} is mapped in place for a device (AccessedBy) and this thread's with_bindings scope is open: free it after the scope")]
    InOwnScope {
        /// The address passed.
        addr: usize,
    },
    /// The OS refused to change the mapping.
    #[error("arena mapping: {0}")]
    Os(String),
}

/// `set_label` failed; nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LabelError {
    /// The address is not inside a live allocation of this runtime.
    #[error("{addr:#x} is not inside a live allocation of this runtime")]
    NotAllocated {
        /// The address given.
        addr: usize,
    },
}

/// `free` failed; nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreeError {
    /// Not the start of a live allocation of this runtime: foreign pointer,
    /// interior pointer, or double free.
    #[error("{addr:#x} is not the start of a live allocation of this runtime (foreign, interior or already freed)")]
    NotAllocated {
        /// The address passed.
        addr: usize,
    },
    /// A typed owner ([`crate::ManagedVec`]) holds this allocation: it is
    /// freed when the owner is dropped, never through the raw `free`.
    #[error("{addr:#x} is held by a ManagedVec; drop the vector to free it")]
    Owned {
        /// The address passed.
        addr: usize,
    },
    /// Used in a forked child: managed memory is not inherited across fork.
    #[error("managed memory is not inherited across fork: this runtime belongs to the parent process")]
    NotInherited,
    /// Called inside this thread's own [`crate::Svm::with_bindings`] scope
    /// on memory a device maps in place (an `AccessedBy` range): unmapping
    /// it waits for every pass, the scope's own included, which ends only
    /// after the scope. Free it after the scope (an owner dropped there
    /// leaks it, with this error logged).
    #[error("{addr:#x} is mapped in place for a device (AccessedBy) and this thread's with_bindings scope is open: free it after the scope")]
    InOwnScope {
        /// The address passed.
        addr: usize,
    },
    /// The OS refused to change the mapping.
    #[error("arena mapping: {0}")]
    Os(String),
}

/// Compiling a kernel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The WGSL did not compile or validate.
    #[error("kernel {label:?} does not compile: {message}")]
    Compile {
        /// Kernel label.
        label: String,
        /// The compiler's message.
        message: String,
    },
    /// The kernel names a sealed part of the prelude (its bindings, private
    /// state or internal functions such as `svm_pool_write`): that would
    /// bypass the access checks. Only [`svm_shaders::PUBLIC_FUNCTIONS`] may
    /// be called.
    #[error("kernel {label:?} uses `{name}`, a sealed part of the prelude; kernels may call only {}", svm_shaders::PUBLIC_FUNCTIONS.join(", "))]
    Sealed {
        /// Kernel label.
        label: String,
        /// What it names.
        name: String,
    },
    /// One of the kernel's own bindings cannot be served.
    #[error("kernel {label:?}: binding `{name}` (@group({group}) @binding({binding})): {reason}")]
    Binding {
        /// Kernel label.
        label: String,
        /// The binding's WGSL name.
        name: String,
        /// Its group.
        group: u32,
        /// Its binding number.
        binding: u32,
        /// Why.
        reason: String,
    },
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// Why a launch's [`crate::Binding`] does not fit the kernel's binding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// A managed range for a uniform binding, or a value for a storage one.
    #[error("the kernel declares {declared}; the launch gives {given}")]
    WrongKind {
        /// What the kernel declares.
        declared: &'static str,
        /// What the launch gives.
        given: &'static str,
    },
    /// `Binding::read` for a binding the kernel may write.
    #[error("the kernel declares it read_write; bind it with Binding::read_write")]
    NotWritable,
    /// The range is not inside live allocations of this runtime (freed,
    /// foreign, or outside the arena).
    #[error("range {addr:#x}+{len:#x} is not inside live allocations of this runtime")]
    NotAllocated {
        /// Start of the range.
        addr: usize,
        /// Its length.
        len: usize,
    },
    /// Larger than one binding may be on this device.
    #[error("{len} bytes exceed the device's {limit_name} of {limit} bytes")]
    TooLarge {
        /// Bytes given.
        len: u64,
        /// The limit.
        limit: u64,
        /// Its name in wgpu's limits.
        limit_name: &'static str,
    },
    /// Smaller than the WGSL type (a runtime-sized array: one element).
    #[error("{len} bytes, but the WGSL type needs at least {min}")]
    TooSmall {
        /// Bytes given.
        len: u64,
        /// The type's minimum.
        min: u64,
    },
    /// Bindings are sized in multiples of 4 bytes.
    #[error("{len} bytes is not a multiple of 4")]
    Length {
        /// Bytes given.
        len: u64,
    },
    /// The start is not aligned as the binding needs.
    #[error("address {addr:#x} is not aligned to {align} bytes ({why})")]
    Misaligned {
        /// Start of the range.
        addr: usize,
        /// Alignment needed.
        align: u64,
        /// The type's alignment or the device's offset alignment.
        why: &'static str,
    },
    /// Part of the range is advised `AccessedBy` and part is not.
    #[error("the range straddles the AccessedBy range: bind it whole inside or outside")]
    StraddlesCoherent,
}

/// What a kernel's refused access was.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KernelFaultKind {
    /// Outside the arena (null included).
    OutOfArena,
    /// Not part of a live allocation (never allocated, or freed).
    Unallocated,
    /// Allocated, but the launch did not declare it.
    NotDeclared,
    /// A write to a range declared read-only.
    ReadOnly,
    /// Not 4-byte aligned.
    Misaligned,
    /// A code the runtime does not know (a corrupted error log).
    Unknown(u32),
}

impl KernelFaultKind {
    pub(crate) fn from_code(c: u32) -> Self {
        use svm_shaders::err;
        match c {
            err::OUT_OF_ARENA => Self::OutOfArena,
            err::UNALLOCATED => Self::Unallocated,
            err::NOT_DECLARED => Self::NotDeclared,
            err::READ_ONLY => Self::ReadOnly,
            err::MISALIGNED => Self::Misaligned,
            other => Self::Unknown(other),
        }
    }
}

/// One refused access of a kernel.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KernelFault {
    /// The managed address the kernel used.
    pub addr: u64,
    /// Why it was refused.
    pub kind: KernelFaultKind,
}

/// `launch` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A declared range is not inside live allocations of this runtime.
    #[error("declared range {}+{len:#x} is not inside live allocations of this runtime", crate::label::describe(*.addr as u64))]
    BadRange {
        /// Start of the range.
        addr: usize,
        /// Its length.
        len: usize,
    },
    /// The launch's bindings do not match the kernel's own bindings in
    /// number.
    #[error("kernel {kernel:?} declares {expected} bindings ({names}); the launch gives {given}")]
    BindingCount {
        /// Kernel label.
        kernel: String,
        /// Bindings the kernel declares.
        expected: usize,
        /// Bindings given.
        given: usize,
        /// Their names, in launch order.
        names: String,
    },
    /// A binding cannot be bound as given; nothing was migrated or changed.
    #[error("binding {index} `{name}` (@group({group}) @binding({binding})): {reason}")]
    Binding {
        /// Position in [`crate::LaunchDescriptor::bindings`].
        index: usize,
        /// The kernel's name for it.
        name: String,
        /// Its group.
        group: u32,
        /// Its binding number.
        binding: u32,
        /// Why.
        reason: BindError,
    },
    /// A pass ran past [`crate::LaunchOptions::timeout`]; the device is now
    /// treated as lost (see [`crate::Svm::lost_ranges`]).
    #[error("kernel still running after {after:?}: the device is treated as lost")]
    Timeout {
        /// The timeout.
        after: core::time::Duration,
    },
    /// `LaunchOptions::timeout(Duration::ZERO)`: every kernel runs past
    /// it, and a timeout declares the device lost; refused before anything
    /// runs.
    #[error("a launch timeout of zero: every kernel would run past it (and a timeout loses the device)")]
    ZeroTimeout,
    /// The kernel was made by another runtime.
    #[error("kernel {0:?} belongs to another runtime")]
    ForeignKernel(String),
    /// Launch arguments given to a kernel that reads none (no function of
    /// its own calls `svm_arg_u32` / `svm_arg_f32` / `svm_arg_ptr`): a bound
    /// kernel takes its data through bindings.
    #[error("kernel {kernel:?} reads no launch arguments (it calls no svm_arg_*), but {given} were given")]
    ArgsUnread {
        /// The kernel's label.
        kernel: String,
        /// Arguments given.
        given: usize,
    },
    /// More argument words than the prelude has room for.
    #[error("{words} argument words given, at most {max}")]
    TooManyArgs {
        /// Words given.
        words: usize,
        /// The limit.
        max: usize,
    },
    /// The declared working set does not fit the device pool.
    #[error("device pool exhausted: the launch needs {needed} more pages, {free} of {total} are free")]
    PoolExhausted {
        /// Pages the launch needs to bring in.
        needed: usize,
        /// Free pool pages.
        free: usize,
        /// Pool size in pages.
        total: usize,
    },
    /// Dispatch size out of the device's limits, or zero (a launch that
    /// would run nothing).
    #[error("workgroup count {workgroups:?}: each must be between 1 and the device limit {max}")]
    BadDispatch {
        /// Requested workgroups.
        workgroups: [u32; 3],
        /// Limit per dimension.
        max: u32,
    },
    /// The kernel made refused accesses; they did nothing (loads yielded 0).
    /// Each invocation that made some reports one (its last); `faults` holds
    /// the first reports to arrive, `total` counts the invocations.
    #[error("{total} kernel invocations made refused accesses; first: {}", first_faults(.faults))]
    Kernel {
        /// One refused access per reporting invocation, the first
        /// `svm_shaders::ERROR_RECORDS` reports.
        faults: Vec<KernelFault>,
        /// Invocations that made refused accesses.
        total: u32,
    },
    /// A replayable launch still faulted after `replays` replays. The
    /// ranges it may write hold the results of an incomplete pass.
    #[error("kernel still faulting after {replays} replays (its outputs are incomplete); pending pages at {}", addrs(.pending))]
    ReplayLimit {
        /// Replays run.
        replays: u32,
        /// Addresses of (some of) the pages that faulted in the last pass.
        pending: Vec<u64>,
    },
    /// A replay pass faulted only on pages that were already mapped as
    /// asked: replaying again could not make progress.
    #[error("GPU faults made no progress at {}", addrs(.pages))]
    NoProgress {
        /// Addresses of the faulting pages.
        pages: Vec<u64>,
    },
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Changing the arena's mappings failed.
    #[error("arena mapping: {0}")]
    Os(String),
    /// The application's own GPU work inside [`crate::Svm::with_bindings`]
    /// raised a wgpu error (validation, out of memory) that no error scope
    /// of its own caught. The scope was closed as usual; the runtime and its
    /// device go on (the error is the application's, not a lost device).
    #[error("the application's GPU work in with_bindings failed: {0}")]
    Application(String),
}

// Addresses in messages name their allocation's label, if it has one
// (`crate::label`).
fn addrs(v: &[u64]) -> String {
    v.iter().take(8).map(|&a| crate::label::describe(a)).collect::<Vec<_>>().join(", ")
}

fn first_faults(f: &[KernelFault]) -> String {
    f.iter()
        .take(4)
        .map(|k| format!("{:?} at {}", k.kind, crate::label::describe(k.addr)))
        .collect::<Vec<_>>()
        .join(", ")
}
