//! alloc + free beside another thread's application pass (`with_bindings`):
//! the long kernel's code on an application pipeline, no launch.

use super::*;

impl Ctx {
    /// Like [`Self::while_another_thread`], but the other thread's long
    /// work is the application's own pass (no launch): `with_bindings` over
    /// a vector D of its own, [`SPIN`] on an application pipeline for the
    /// calibrated iterations, submitted inside `f`. Returns the op's ms and
    /// whether the scope was still open when it ended.
    pub(super) fn while_an_app_pass(&mut self, delay: Duration, op: impl FnOnce(&Svm)) -> (f64, bool) {
        let svm = &self.svm;
        let device = svm.device();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("app spin"),
            source: wgpu::ShaderSource::Wgsl(SPIN.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("app spin"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let u = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("app spin iterations"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        svm.queue().write_buffer(&u, 0, bytemuck::bytes_of(&P { v: self.iters, pad: [0; 3] }));
        let mut d = svm.alloc_from_slice(&(0..64u32).collect::<Vec<_>>()).expect("D");
        let open = AtomicBool::new(true);
        let (pipeline, u, dm, open_ref) = (&pipeline, &u, &mut d, &open);
        let ms = std::thread::scope(|s| {
            let app = s.spawn(move || {
                svm.with_bindings(&[Binding::read_write(dm)], |views| {
                    let bg = svm.device().create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("app spin"),
                        layout: &pipeline.get_bind_group_layout(0),
                        entries: &[
                            wgpu::BindGroupEntry {
                                binding: 0,
                                resource: wgpu::BindingResource::Buffer(views[0].clone()),
                            },
                            wgpu::BindGroupEntry { binding: 1, resource: u.as_entire_binding() },
                        ],
                    });
                    let mut enc = svm.device().create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        pass.set_pipeline(pipeline);
                        pass.set_bind_group(0, &bg, &[]);
                        pass.dispatch_workgroups(1, 1, 1);
                    }
                    svm.submit_commands([enc.finish()]);
                })
                .expect("with_bindings");
                open_ref.store(false, Ordering::SeqCst);
            });
            std::thread::sleep(delay);
            let ms = ms_of(|| op(svm));
            let still = open.load(Ordering::SeqCst);
            app.join().expect("the application's thread");
            (ms, still)
        });
        assert_ne!(d[0], 0, "the application's pass");
        ms
    }
}
