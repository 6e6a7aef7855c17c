//! Kernel compilation: WGSL → validated naga module → shader module and
//! pipeline layout, with the kernel's own bindings reflected for launches.
//!
//! A kernel that names no prelude function is compiled as it is (bound
//! access only: a plain wgpu kernel). One that does is compiled with the
//! prelude after its own source (so errors keep its line numbers), checked
//! not to reach the prelude's sealed internals, and its entry points wrapped
//! ([`svm_shaders::wrap_entry_points`]).

use std::collections::HashSet;
use std::sync::OnceLock;

use svm_shaders::{Windows, RUNTIME_GROUP};

use crate::error::KernelError;
use crate::gpu::Gpu;
use crate::kernel::{BindingType, Kernel, KernelBinding, KernelDescriptor};

/// Compile `desc` for `gpu`.
pub(crate) fn compile(gpu: &Gpu, runtime_id: u64, desc: &KernelDescriptor<'_>) -> Result<Kernel, KernelError> {
    gpu.check_lost()?;
    let label = desc.label;
    let compile = |message: String| KernelError::Compile { label: label.into(), message };
    let windows = gpu.windows;
    let caps = match windows {
        Windows::Fixed => naga::valid::Capabilities::empty(),
        Windows::Array => {
            naga::valid::Capabilities::STORAGE_BUFFER_BINDING_ARRAY
                | naga::valid::Capabilities::STORAGE_BUFFER_BINDING_ARRAY_NON_UNIFORM_INDEXING
        }
    };
    let validate = |m: &naga::Module| {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps).validate(m).map_err(Box::new)
    };
    // A kernel that stands alone uses no prelude: compile it unchanged.
    let alone = naga::front::wgsl::parse_str(desc.source).ok().and_then(|m| validate(&m).ok().map(|i| (m, i)));
    let (mut module, info, prelude) = match alone {
        Some((m, i)) => (m, i, false),
        None => {
            let src = svm_shaders::with_prelude_for(windows, desc.source);
            let m = naga::front::wgsl::parse_str(&src).map_err(|e| compile(e.emit_to_string(&src)))?;
            let i = validate(&m).map_err(|e| compile(e.emit_to_string(&src)))?;
            (m, i, true)
        }
    };
    let Some(ep) = module.entry_points.iter().position(|e| e.name == desc.entry_point) else {
        return Err(compile(format!("no entry point `{}`", desc.entry_point)));
    };
    if module.entry_points[ep].stage != naga::ShaderStage::Compute {
        return Err(compile(format!("entry point `{}` is not a compute shader", desc.entry_point)));
    }
    check_workgroup(&module.entry_points[ep], &gpu.device.limits()).map_err(compile)?;
    if prelude {
        check_sealed(&module, windows).map_err(|name| KernelError::Sealed { label: label.into(), name })?;
    }
    let reads_args = prelude && reads_args(&module, windows);
    let bindings = reflect(&mut module, &info, ep, prelude, windows, gpu.device.limits().max_bind_groups, label)?;
    if prelude {
        svm_shaders::wrap_entry_points(&mut module).map_err(|e| compile(e.to_string()))?;
    }
    validate(&module).map_err(|e| compile(format!("after preparing the kernel: {e}")))?;

    // Layouts: the kernel's groups, then (pointer access) the runtime's.
    let groups = bindings.iter().map(|b| b.group + 1).max().unwrap_or(0);
    let group_layouts: Vec<Option<wgpu::BindGroupLayout>> = (0..groups)
        .map(|g| {
            let entries: Vec<wgpu::BindGroupLayoutEntry> =
                bindings.iter().filter(|b| b.group == g).map(layout_entry).collect();
            (!entries.is_empty()).then(|| {
                gpu.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(label),
                    entries: &entries,
                })
            })
        })
        .collect();
    let mut layouts: Vec<Option<&wgpu::BindGroupLayout>> = group_layouts.iter().map(Option::as_ref).collect();
    if prelude {
        layouts.resize(RUNTIME_GROUP as usize, None);
        layouts.push(Some(&gpu.bgl));
    }
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let layout = gpu.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &layouts,
        immediate_size: 0,
    });
    let shader = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Naga(std::borrow::Cow::Owned(module)),
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(compile(e.to_string()));
    }
    Ok(Kernel {
        label: label.into(),
        entry_point: desc.entry_point.into(),
        module: core::mem::ManuallyDrop::new(shader),
        pipelines: core::mem::ManuallyDrop::new(parking_lot::Mutex::new(Vec::new())),
        runtime_id,
        pid: std::process::id(),
        bindings,
        group_layouts: core::mem::ManuallyDrop::new(group_layouts),
        layout: core::mem::ManuallyDrop::new(layout),
        prelude,
        reads_args,
    })
}

/// The entry point's workgroup within the device's limits (naga does not
/// know them; the pipeline, built at the first launch, would fail there).
/// A size set by overrides is checked when the pipeline is built.
fn check_workgroup(ep: &naga::EntryPoint, l: &wgpu::Limits) -> Result<(), String> {
    if ep.workgroup_size_overrides.is_some() {
        return Ok(());
    }
    let [x, y, z] = ep.workgroup_size;
    let max = [l.max_compute_workgroup_size_x, l.max_compute_workgroup_size_y, l.max_compute_workgroup_size_z];
    let invocations = u64::from(x) * u64::from(y) * u64::from(z);
    if x > max[0] || y > max[1] || z > max[2] || invocations > u64::from(l.max_compute_invocations_per_workgroup) {
        return Err(format!(
            "@workgroup_size({x}, {y}, {z}) exceeds the device's limits: at most {} x {} x {}, {} invocations",
            max[0], max[1], max[2], l.max_compute_invocations_per_workgroup
        ));
    }
    Ok(())
}

fn layout_entry(b: &KernelBinding) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding: b.binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: match b.ty {
                // Read-only bindings are declared read_write in the compiled
                // module (see `reflect`).
                BindingType::Storage { .. } => wgpu::BufferBindingType::Storage { read_only: false },
                BindingType::Uniform => wgpu::BufferBindingType::Uniform,
            },
            has_dynamic_offset: false,
            min_binding_size: wgpu::BufferSize::new(b.min_size),
        },
        count: None,
    }
}

/// The entry point's own bindings, sorted by (group, binding). Read-only
/// storage bindings become read_write in `module`: the pool (or arena view)
/// is one buffer, so a read-only and a read-write range of it in one
/// dispatch would be conflicting uses of one buffer for wgpu. WGSL already
/// refused every write to them when the source was validated, and nothing
/// is added, so the kernel still cannot write them.
fn reflect(
    module: &mut naga::Module,
    info: &naga::valid::ModuleInfo,
    ep: usize,
    prelude: bool,
    windows: Windows,
    max_groups: u32,
    label: &str,
) -> Result<Vec<KernelBinding>, KernelError> {
    let mut layouter = naga::proc::Layouter::default();
    layouter
        .update(module.to_ctx())
        .map_err(|e| KernelError::Compile { label: label.into(), message: format!("type layout: {e}") })?;
    let uses = info.get_entry_point(ep);
    let mut out = Vec::new();
    let mut promote = Vec::new();
    for (h, g) in module.global_variables.iter() {
        let Some(rb) = &g.binding else { continue };
        let name = g.name.clone().unwrap_or_else(|| "(unnamed)".into());
        if prelude && windows.bindings().contains(&name.as_str()) {
            continue;
        }
        if uses[h].is_empty() {
            continue;
        }
        let err = |reason: String| KernelError::Binding {
            label: label.into(),
            name: name.clone(),
            group: rb.group,
            binding: rb.binding,
            reason,
        };
        if prelude && rb.group == RUNTIME_GROUP {
            return Err(err(format!(
                "group {RUNTIME_GROUP} is the runtime's in a kernel that uses the prelude; use groups 0-{}",
                RUNTIME_GROUP - 1
            )));
        }
        if rb.group >= max_groups {
            return Err(err(format!("the device has {max_groups} bind groups")));
        }
        let ty = match g.space {
            naga::AddressSpace::Storage { access } => {
                let read_only = !access.contains(naga::StorageAccess::STORE);
                if read_only {
                    promote.push(h);
                }
                BindingType::Storage { read_only }
            }
            naga::AddressSpace::Uniform => BindingType::Uniform,
            other => {
                return Err(err(format!(
                    "only storage and uniform buffers can be bound to managed memory, not {other:?}"
                )))
            }
        };
        let layout = &layouter[g.ty];
        out.push(KernelBinding {
            name: name.clone(),
            group: rb.group,
            binding: rb.binding,
            ty,
            min_size: u64::from(module.types[g.ty].inner.size(module.to_ctx())).max(4),
            align: layout.alignment.round_up(1),
        });
    }
    for h in promote {
        module.global_variables.get_mut(h).space =
            naga::AddressSpace::Storage { access: naga::StorageAccess::LOAD | naga::StorageAccess::STORE };
    }
    out.sort_by_key(|b| (b.group, b.binding));
    Ok(out)
}

/// The prelude's function and global names, per windows variant.
fn prelude_names(windows: Windows) -> &'static (HashSet<String>, HashSet<String>) {
    static NAMES: OnceLock<[(HashSet<String>, HashSet<String>); 2]> = OnceLock::new();
    let all = NAMES.get_or_init(|| {
        [Windows::Fixed, Windows::Array].map(|w| {
            // The atomic prelude's names are a superset of the plain one's.
            let m = naga::front::wgsl::parse_str(w.prelude_atomic()).expect("the prelude parses (svm-shaders tests)");
            let functions = m.functions.iter().filter_map(|(_, f)| f.name.clone()).collect();
            let globals = m.global_variables.iter().filter_map(|(_, g)| g.name.clone()).collect();
            (functions, globals)
        })
    });
    &all[usize::from(windows == Windows::Array)]
}

/// The functions of the kernel's own and its entry points.
fn own_functions(module: &naga::Module, windows: Windows) -> impl Iterator<Item = &naga::Function> {
    let (functions, _) = prelude_names(windows);
    let is_prelude = |f: &naga::Function| f.name.as_ref().is_some_and(|n| functions.contains(n));
    module
        .functions
        .iter()
        .map(|(_, f)| f)
        .filter(move |f| !is_prelude(f))
        .chain(module.entry_points.iter().map(|e| &e.function))
}

/// Whether a function of the kernel's own calls one of the prelude's
/// launch-argument readers (`svm_arg_*`): launch arguments given to a
/// kernel that never reads them are refused at launch.
fn reads_args(module: &naga::Module, windows: Windows) -> bool {
    let mut reads = false;
    for f in own_functions(module, windows) {
        walk_calls(&f.body, &mut |callee| {
            let name = module.functions[callee].name.as_deref().unwrap_or("");
            reads |= name.starts_with("svm_arg_") && svm_shaders::PUBLIC_FUNCTIONS.contains(&name);
        });
    }
    reads
}

/// `Err(name)` when a function of the kernel's own names a prelude global
/// or calls a prelude function that is not public.
fn check_sealed(module: &naga::Module, windows: Windows) -> Result<(), String> {
    let (functions, globals) = prelude_names(windows);
    for f in own_functions(module, windows) {
        for (_, e) in f.expressions.iter() {
            if let naga::Expression::GlobalVariable(g) = e {
                if let Some(n) = module.global_variables[*g].name.as_ref().filter(|n| globals.contains(*n)) {
                    return Err(n.clone());
                }
            }
        }
        let mut bad = None;
        walk_calls(&f.body, &mut |callee| {
            let callee = &module.functions[callee];
            if let Some(n) = callee.name.as_ref() {
                if functions.contains(n) && !svm_shaders::PUBLIC_FUNCTIONS.contains(&n.as_str()) && bad.is_none() {
                    bad = Some(n.clone());
                }
            }
        });
        if let Some(n) = bad {
            return Err(n);
        }
    }
    Ok(())
}

/// Every function a block calls, nested blocks included.
fn walk_calls(block: &naga::Block, f: &mut impl FnMut(naga::Handle<naga::Function>)) {
    use naga::Statement as S;
    for s in block.iter() {
        match s {
            S::Call { function, .. } => f(*function),
            S::Block(b) => walk_calls(b, f),
            S::If { accept, reject, .. } => {
                walk_calls(accept, f);
                walk_calls(reject, f);
            }
            S::Switch { cases, .. } => cases.iter().for_each(|c| walk_calls(&c.body, f)),
            S::Loop { body, continuing, .. } => {
                walk_calls(body, f);
                walk_calls(continuing, f);
            }
            _ => {}
        }
    }
}
