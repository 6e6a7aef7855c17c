//! The device page-table entry, shared bit for bit with the WGSL prelude
//! (`shaders/src/prelude.wgsl`). The `svm-shaders` crate has a test that parses
//! the WGSL constants with naga and fails if they drift from the ones here.

use bytemuck::{Pod, Zeroable};

/// Size of a managed page, in bytes. The arena, the device pool and the page
/// table all work in these units.
pub const PAGE_SIZE: usize = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

/// Index of a managed page inside one arena (`(addr - arena_base) >> PAGE_SHIFT`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageIndex(pub u32);

impl PageIndex {
    /// Byte offset of the page from the arena base.
    pub fn byte_offset(self) -> u64 {
        u64::from(self.0) << PAGE_SHIFT
    }
    /// The page that holds byte `offset` of the arena.
    pub fn containing(offset: u64) -> Option<Self> {
        u32::try_from(offset >> PAGE_SHIFT).ok().map(Self)
    }
}

/// Index of a page-sized frame in the device page pool.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrameIndex(
    // Invariant: < Pte::MAX_FRAMES, so that it fits the PTE's frame field.
    u32,
);

impl FrameIndex {
    /// Checked constructor: `None` when the frame does not fit a PTE.
    pub fn new(frame: u32) -> Option<Self> {
        (frame < Pte::MAX_FRAMES).then_some(Self(frame))
    }
    /// The frame number.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// One device page-table entry (32 bits).
///
/// ```text
///  31                              8 7     3   2     1     0
/// +---------------------------------+-------+-----+-----+-----+
/// |        pool frame (24 bits)     |  0    |ALLOC|WRITE|VALID|
/// +---------------------------------+-------+-----+-----+-----+
/// ```
///
/// * `VALID`: the page is resident in the device pool at `frame`; the kernel
///   may read it.
/// * `WRITE`: the kernel may also write it (only with `VALID`).
/// * `ALLOC`: the page belongs to a live allocation. A page with `ALLOC` but
///   not `VALID` is *not resident* (a fault, in the GPU-fault mode); a page
///   without `ALLOC` is unallocated or freed (always an error).
#[repr(transparent)]
#[derive(Copy, Clone, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct Pte(u32);

impl Pte {
    /// Resident in the device pool.
    pub const VALID: u32 = 1 << 0;
    /// Writable by the kernel.
    pub const WRITE: u32 = 1 << 1;
    /// Part of a live allocation.
    pub const ALLOC: u32 = 1 << 2;
    /// (with `VALID`) Host memory the device uses in place, through the
    /// coherent window; the frame field is unused.
    pub const COHERENT: u32 = 1 << 3;
    /// Position of the frame field.
    pub const FRAME_SHIFT: u32 = 8;
    /// Number of frames a PTE can name.
    pub const MAX_FRAMES: u32 = 1 << (32 - Self::FRAME_SHIFT);

    /// Unallocated page (the state of every page of a new table).
    pub const EMPTY: Pte = Pte(0);
    /// Allocated, not resident on the device.
    pub const ALLOCATED: Pte = Pte(Self::ALLOC);

    /// A resident page.
    pub fn resident(frame: FrameIndex, writable: bool) -> Self {
        let w = if writable { Self::WRITE } else { 0 };
        Pte(Self::ALLOC | Self::VALID | w | (frame.0 << Self::FRAME_SHIFT))
    }
    /// A page the device accesses in place in host memory (coherent mode).
    pub fn coherent(writable: bool) -> Self {
        let w = if writable { Self::WRITE } else { 0 };
        Pte(Self::ALLOC | Self::VALID | Self::COHERENT | w)
    }
    /// Is the page mapped coherently (host memory in place)?
    pub fn is_coherent(self) -> bool {
        self.0 & (Self::VALID | Self::COHERENT) == (Self::VALID | Self::COHERENT)
    }
    /// The raw bits, as the shader sees them.
    pub fn bits(self) -> u32 {
        self.0
    }
    /// Rebuild from raw bits (for tests and decoding a table read back).
    pub fn from_bits(bits: u32) -> Self {
        Pte(bits)
    }
    /// Is the page resident?
    pub fn is_valid(self) -> bool {
        self.0 & Self::VALID != 0
    }
    /// May the kernel write it?
    pub fn is_writable(self) -> bool {
        self.0 & (Self::VALID | Self::WRITE) == (Self::VALID | Self::WRITE)
    }
    /// Is the page part of a live allocation?
    pub fn is_allocated(self) -> bool {
        self.0 & Self::ALLOC != 0
    }
    /// Frame of a resident page.
    pub fn frame(self) -> Option<FrameIndex> {
        (self.is_valid() && !self.is_coherent()).then_some(FrameIndex(self.0 >> Self::FRAME_SHIFT))
    }
}

impl core::fmt::Debug for Pte {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.frame() {
            Some(fr) => write!(f, "Pte(frame {}, {})", fr.0, if self.is_writable() { "rw" } else { "ro" }),
            None if self.is_allocated() => f.write_str("Pte(allocated, not resident)"),
            None => f.write_str("Pte(unallocated)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let f = FrameIndex::new(Pte::MAX_FRAMES - 1).expect("fits");
        let p = Pte::resident(f, true);
        assert!(p.is_valid() && p.is_writable() && p.is_allocated());
        assert_eq!(p.frame(), Some(f));
        let r = Pte::resident(FrameIndex::new(7).expect("fits"), false);
        assert!(!r.is_writable());
        assert_eq!(r.bits(), (7 << 8) | 0b101);
        assert!(FrameIndex::new(Pte::MAX_FRAMES).is_none());
        assert!(!Pte::ALLOCATED.is_valid() && Pte::ALLOCATED.is_allocated());
        let c = Pte::coherent(true);
        assert!(c.is_coherent() && c.is_writable() && c.is_valid() && c.frame().is_none());
        assert!(!Pte::resident(f, true).is_coherent());
        assert_eq!(Pte::ALLOCATED.frame(), None);
    }
}
