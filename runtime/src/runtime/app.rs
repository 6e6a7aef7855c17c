//! Managed ranges in the application's own GPU work: the residency a
//! launch does for its bindings, around passes the application records and
//! submits itself (on the runtime's device: `Svm::device`, or the
//! application's own, shared with `SvmDescriptor::device`).

use super::*;
use crate::bind::{Checked, Placed};
use crate::error::BindError;
use crate::kernel::{BindTarget, Binding};

impl Svm {
    /// Make `bindings` resident and placed as a launch would, hand their
    /// device ranges to `f` as `wgpu::BufferBinding`s (in order) for the
    /// application's own bind groups, compute or render passes, wait for
    /// everything submitted by the time `f` returns, and settle the pages by
    /// the rules of a launch (ranges bound read-write belong to the device
    /// until the CPU touches them; read-only copies are dropped; advice
    /// holds). Only managed ranges ([`Binding::read`],
    /// [`Binding::read_write`], slices, [`Binding::raw`]) can be bound here;
    /// bind them as `read_write` storage in the application's layouts
    /// unless every binding of that buffer in the pass is read-only (the
    /// pool is one buffer per segment, and wgpu refuses a read-only and a
    /// read-write use of one buffer in one dispatch).
    ///
    /// `f` runs under the runtime's update lock: inside it, touching
    /// managed memory on the CPU or calling the runtime (a launch, an
    /// allocation) would wait for `f` itself. Record, submit, return.
    pub fn with_bindings<R>(
        &self,
        bindings: &[Binding<'_>],
        f: impl FnOnce(&[wgpu::BufferBinding<'_>]) -> R,
    ) -> Result<R, LaunchError> {
        let inner = &*self.inner;
        let gpu = &inner.gpu;
        inner.check_process()?;
        let error = |index: usize, reason: BindError| LaunchError::Binding {
            index,
            name: format!("binding {index}"),
            group: 0,
            binding: index as u32,
            reason,
        };
        let limits = gpu.device.limits();
        let mut checked = Vec::with_capacity(bindings.len());
        for (i, b) in bindings.iter().enumerate() {
            let BindTarget::Managed { addr, len, mode, .. } = b.target else {
                return Err(error(i, BindError::WrongKind { declared: "a managed range", given: "a uniform value" }));
            };
            crate::bind::check_storage_range(addr, len, &limits).map_err(|why| error(i, why))?;
            if len == 0 || len % 4 != 0 {
                return Err(error(i, BindError::Length { len: len as u64 }));
            }
            // (Discarding is a launch's optimization; here the contents stay.)
            let write = mode == crate::kernel::AccessMode::ReadWrite;
            checked.push(Checked::Managed { addr, len, write, discard: false });
        }
        let mut guard = inner.state.lock();
        // The application's passes may use anything it binds in any way:
        // they run alone (every launch in flight retired first).
        inner.wait_all_flights(&mut guard);
        let st = &mut *guard;
        gpu.check_lost()?;
        let mut decl = Vec::with_capacity(checked.len());
        for (i, c) in checked.iter().enumerate() {
            let Checked::Managed { addr, len, write, .. } = *c else { continue };
            let (a, b) =
                inner.page_range(st, addr, len).ok_or_else(|| error(i, BindError::NotAllocated { addr, len }))?;
            decl.push((a, b, write));
        }
        let decl = merge_ranges(decl);
        st.epoch = st.epoch.wrapping_add(1);
        let mut temporary = Vec::new();
        let mut report = LaunchReport::default();
        let result = (|| -> Result<R, LaunchError> {
            inner.map_ranges(
                st,
                &decl,
                &mut temporary,
                &mut report,
                Mapping { pin: true, ptes: false, evict: true },
            )?;
            let placed: Vec<Placed> = inner.place_bindings(st, &error, &checked)?.into_iter().flatten().collect();
            let views: Vec<wgpu::BufferBinding<'_>> = placed
                .iter()
                .map(|p| wgpu::BufferBinding {
                    buffer: &p.buffer,
                    offset: p.offset,
                    size: wgpu::BufferSize::new(p.size),
                })
                .collect();
            let r = f(&views);
            // The application's work wrote host memory in place (coherent):
            // make it visible to the CPU; then wait for all of it.
            if st.coherent.is_some() || gpu.mode == MappingMode::Coherent {
                let barrier =
                    crate::vk::host_read_barrier(&gpu.device).map_err(|e| DeviceError::Unexpected(e.to_string()))?;
                gpu.submit([barrier]);
            }
            gpu.wait()?;
            Ok(r)
        })();
        st.pinned.clear();
        // (Everything submitted was waited for, or failed: see the helper.)
        inner.release_deferred_now(st);
        let post = inner
            .settle_copies(st, temporary)
            .and_then(|()| inner.flush_preferred_host(st, &decl).map_err(LaunchError::from));
        Counters::add(&inner.stats.app_scopes, 1);
        let r = result?;
        post.map(|()| r)
    }
}
