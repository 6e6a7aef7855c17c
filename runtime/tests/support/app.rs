//! The application's own pipeline and pass on the runtime's device, for the
//! tests of `Svm::with_bindings` and the stress (which includes this file).

use svm::{wgpu, Svm};

/// `source` (plain bindings, entry point `main`) as an application pipeline
/// on the runtime's device (layout from the shader).
pub fn app_pipeline(svm: &Svm, label: &str, source: &str) -> wgpu::ComputePipeline {
    let module = svm.device().create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    svm.device().create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// One dispatch of `groups` workgroups of `pipeline`, group 0 binding `i`
/// = `resources[i]`, submitted with `Svm::submit_commands`.
pub fn app_pass(svm: &Svm, pipeline: &wgpu::ComputePipeline, resources: &[wgpu::BindingResource<'_>], groups: u32) {
    let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
        .collect();
    let bg = svm.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("app pass"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut enc = svm.device().create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups, 1, 1);
    }
    svm.submit_commands([enc.finish()]);
}
