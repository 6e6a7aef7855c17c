//! The device tables of an arena: the page table and the launch log (whose
//! fault bitmaps hold a bit per arena page), and the bind groups that bind
//! them with the windows. They cover the pages allocated so far (the arena's
//! high-water mark) and are replaced by larger ones as it rises, so that a
//! large reservation costs the device nothing until it is used.

use super::{make_bind_group, Gpu, LOG_READ_WORDS};

/// Fewest pages a table covers (64 MiB of arena: a 64 KiB page table).
pub(crate) const MIN_TABLE_PAGES: u32 = 1 << 14;

/// One generation of the device tables. A pass binds the generation that
/// was current when it was encoded; wgpu keeps a replaced one alive until
/// the passes using it are done.
pub(crate) struct Tables {
    /// Arena pages covered: the page table's entries, the bitmaps' bits.
    pub pages: u32,
    pub page_table: wgpu::Buffer,
    /// Launch log: errors, GPU faults, fault bitmaps (see the prelude).
    pub log: wgpu::Buffer,
    /// Words of each fault bitmap.
    pub fault_bitmap_words: u32,
    pub bind_group: wgpu::BindGroup,
    /// With several segments: bind group `k` binds segment `k` as the first
    /// (for launches that use only segment `k`).
    pub first_segment_bind_groups: Vec<wgpu::BindGroup>,
    /// Bytes the coherent view covered when the bind groups were made (see
    /// [`Gpu::rebind`]).
    pub coherent_covered: u64,
}

impl Tables {
    /// The capacity to grow to for `needed` pages of an arena of
    /// `arena_pages`: at least double the old one (`old`), so that a rising
    /// high-water mark replaces the tables O(log n) times.
    pub fn capacity_for(needed: u32, old: u32, arena_pages: u32) -> u32 {
        needed.max(old.saturating_mul(2)).max(MIN_TABLE_PAGES).next_power_of_two().min(arena_pages).max(needed)
    }
}

impl Gpu {
    /// New device tables for `pages` arena pages. The buffers start zeroed
    /// (wgpu initialises them): every entry `Pte::EMPTY`.
    pub fn tables(&self, pages: u32) -> Tables {
        let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let page_table = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("svm page table"),
            size: u64::from(pages.max(1)) * 4,
            usage: storage,
            mapped_at_creation: false,
        });
        let fault_bitmap_words = pages.div_ceil(32).max(1);
        let log = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("svm launch log"),
            size: (LOG_READ_WORDS + 2 * u64::from(fault_bitmap_words)) * 4,
            usage: storage,
            mapped_at_creation: false,
        });
        let (bind_group, first_segment_bind_groups, coherent_covered) = self.bind_groups(&page_table, &log);
        Tables { pages, page_table, log, fault_bitmap_words, bind_group, first_segment_bind_groups, coherent_covered }
    }

    /// Make `tables`' bind groups again (the coherent view was imported
    /// again since they were made).
    pub fn rebind(&self, tables: &mut Tables) {
        let (bg, first, covered) = self.bind_groups(&tables.page_table, &tables.log);
        (tables.bind_group, tables.first_segment_bind_groups, tables.coherent_covered) = (bg, first, covered);
    }

    /// The bind group binding the tables with every window, the one per
    /// segment binding it first, and the coherent view's coverage they bind.
    fn bind_groups(
        &self,
        page_table: &wgpu::Buffer,
        log: &wgpu::Buffer,
    ) -> (wgpu::BindGroup, Vec<wgpu::BindGroup>, u64) {
        let core = [page_table, &self.args, log];
        // (Read before the views: imports happen under the update lock,
        // which the caller holds, so the two agree.)
        let imported = self.coherent_covered();
        let views = self.window_views();
        let bind_group =
            make_bind_group(&self.device, &self.bgl, core, &views, &self.coherent_placeholder, self.windows);
        // Launches whose pages all lie in one segment bind it first and run
        // the one-segment specialization of their kernel.
        let first_segment_bind_groups = if self.segments_used > 1 {
            (0..self.segments_used as usize)
                .map(|k| {
                    let mut v = views.to_vec();
                    v[0] = views[k].clone();
                    make_bind_group(&self.device, &self.bgl, core, &v, &self.coherent_placeholder, self.windows)
                })
                .collect()
        } else {
            Vec::new()
        };
        (bind_group, first_segment_bind_groups, imported)
    }

    /// The bind group of `tables` with `coherent` as the coherent window.
    pub fn bind_group_with(&self, tables: &Tables, coherent: &wgpu::Buffer) -> wgpu::BindGroup {
        let core = [&tables.page_table, &self.args, &tables.log];
        make_bind_group(&self.device, &self.bgl, core, &self.window_views(), coherent, self.windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_doubles_covers_the_need_and_stops_at_the_arena() {
        assert_eq!(Tables::capacity_for(1, 0, 1 << 24), MIN_TABLE_PAGES);
        assert_eq!(Tables::capacity_for(MIN_TABLE_PAGES + 1, MIN_TABLE_PAGES, 1 << 24), 2 * MIN_TABLE_PAGES);
        assert_eq!(Tables::capacity_for(5 << 20, 1 << 16, 1 << 24), 8 << 20);
        assert_eq!(Tables::capacity_for(100, 0, 64), 100, "never below the need");
        assert_eq!(Tables::capacity_for(60, 0, 64), 64);
        assert_eq!(Tables::capacity_for(3 << 20, 1 << 21, 3 << 20), 3 << 20);
    }
}
