//! # svm — shared virtual memory between the CPU and a GPU, over wgpu/Vulkan
//!
//! A program allocates managed memory, builds ordinary data in it on the CPU
//! (arrays, linked lists, graphs of raw pointers), launches a WGSL kernel
//! that follows the very same pointer values, and reads the results back by
//! plain dereference. Pages move to a GPU-private pool when a kernel needs
//! them and come back, by a real CPU page fault, when the CPU touches them.
//!
//! ```no_run
//! use svm::{Binding, KernelDescriptor, LaunchDescriptor, Svm};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svm = Svm::new()?;
//! let a = svm.alloc_from_slice(&[1.0f32, 2.0, 3.0])?;
//! let b = svm.alloc_from_slice(&[10.0f32, 20.0, 30.0])?;
//! let mut c = svm.alloc_vec::<f32>(3)?;
//! // An ordinary wgpu kernel, its own bindings bound to managed ranges.
//! let k = svm.create_kernel(&KernelDescriptor {
//!     label: "vadd",
//!     source: "@group(0) @binding(0) var<storage, read> a: array<f32>;
//!              @group(0) @binding(1) var<storage, read> b: array<f32>;
//!              @group(0) @binding(2) var<storage, read_write> c: array<f32>;
//!              @compute @workgroup_size(64)
//!              fn main(@builtin(global_invocation_id) g: vec3<u32>) {
//!                  if (g.x < arrayLength(&c)) { c[g.x] = a[g.x] + b[g.x]; }
//!              }",
//!     entry_point: "main",
//! })?;
//! svm.launch(&k, &LaunchDescriptor {
//!     bindings: &[Binding::read(&a), Binding::read(&b), Binding::read_write(&mut c)],
//!     workgroups: [1, 1, 1],
//!     ..Default::default()
//! })?;
//! assert_eq!(&c[..], &[11.0, 22.0, 33.0]); // a CPU fault brings c back
//! # Ok(()) }
//! ```
//!
//! The design (address spaces, the page table, the fault paths, the lock) is
//! in `ARCHITECTURE.md` at the repository root. In short:
//!
//! * [`svm_migrate::Arena`] gives one memfd two views: the *user view*
//!   programs dereference, and an *alias view* the runtime copies through.
//! * [`svm_pagetable::PageTable`] is the device page table, uploaded leaf by
//!   changed leaf before each launch; the WGSL prelude translates every
//!   managed pointer through it and refuses what is not declared.
//! * Bound access ([`Binding`]): a kernel's own storage bindings bound
//!   directly to the device memory of managed ranges; the GPU bounds-checks.
//! * CPU faults arrive through userfaultfd (default) or SIGSEGV and migrate
//!   a chunk (64 KiB by default) back.
//!
//! ## Cargo features
//!
//! * `vulkan` (default): wgpu's Vulkan backend and `svm::vk`, the Vulkan
//!   layer below wgpu (sparse binding, host-memory import, the raw timeline,
//!   validation capture). The sparse and coherent mapping modes and
//!   [`Advice::AccessedBy`] need it; without it they are refused with an
//!   error naming the feature, and the software mode runs on whatever
//!   backend wgpu is built with.
//! * `gl`: wgpu's GL backend (EGL on Linux), chosen with `WGPU_BACKEND=gl`.
#![deny(unsafe_code)]

mod advise;
mod bind;
#[allow(unsafe_code, reason = "the Allocator impl (an unsafe trait); its contract argued inline")]
mod collections;
mod compile;
mod error;
mod gpu;
mod kernel;
mod label;
#[allow(unsafe_code, reason = "Deref of managed arrays into the arena's user view; each block argued")]
mod managed;
mod queue;
mod runtime;
mod slab;
mod space;
mod staging;
mod stats;
#[cfg(feature = "vulkan")]
#[allow(unsafe_code, reason = "Vulkan interop below wgpu (ash, wgpu-hal); fenced in vk/, every block argued")]
pub mod vk;
/// Without the `vulkan` feature: the same names, uninhabited.
#[cfg(not(feature = "vulkan"))]
#[path = "vk_disabled.rs"]
mod vk;

pub use advise::{Advice, AdviseError, Location, Prefetch, RangeInfo};
pub use allocator_api2;
pub use error::{
    AllocError, BindError, DeviceError, FreeError, KernelError, KernelFault, KernelFaultKind, LabelError, LaunchError,
    SvmError,
};
pub use gpu::{create_wgpu_device, DeviceInfo, MappingMode, SharedDevice, MAPPING_MODE_ENV};
pub use kernel::{
    Access, AccessMode, Arg, Binding, Kernel, KernelDescriptor, LaunchDescriptor, LaunchOptions, LaunchReport,
};
pub use managed::{ManagedBox, ManagedPtr, ManagedRange, ManagedSlice, ManagedSliceMut, ManagedVec, PtrError};
pub use queue::{LaunchQueue, Pending};
pub use runtime::{Svm, SvmDescriptor};
pub use stats::Stats;
pub use svm_migrate::{FaultBackendKind, FAULT_BACKEND_ENV};
pub use svm_shaders as shaders;
pub use wgpu;
