//! The block allocator of a [`SparseArena`]'s pool: free blocks kept as
//! coalesced runs inside the `vkAllocateMemory` chunks ([`FreeRuns`]), and
//! the arena's block allocation on top of it.

use super::{BlockId, SparseArena, SparseError};

/// Free blocks as maximal runs of consecutive blocks inside one chunk,
/// indexed by start (to coalesce) and by length (best fit).
#[derive(Debug, Default)]
pub(super) struct FreeRuns {
    chunk_blocks: u32,
    /// start → length.
    pub(super) by_start: std::collections::BTreeMap<u32, u32>,
    /// (length, start).
    by_len: std::collections::BTreeSet<(u32, u32)>,
    pub(super) total: u32,
}

impl FreeRuns {
    pub(super) fn new(pool_blocks: u32, chunk_blocks: u32) -> Self {
        let mut f = Self { chunk_blocks, ..Self::default() };
        let mut s = 0;
        while s < pool_blocks {
            let n = chunk_blocks.min(pool_blocks - s);
            f.insert(s, n);
            s += n;
        }
        f
    }

    fn insert(&mut self, start: u32, len: u32) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
        self.total += len;
    }

    fn remove(&mut self, start: u32, len: u32) {
        self.by_start.remove(&start);
        self.by_len.remove(&(len, start));
        self.total -= len;
    }

    /// Up to `want` consecutive blocks: the shortest free run that holds
    /// them all (lowest start among equals), else the longest run.
    pub(super) fn alloc(&mut self, want: u32) -> Option<(u32, u32)> {
        let want = want.max(1);
        let (len, start) = match self.by_len.range((want, 0)..).next() {
            Some(&r) => r,
            None => *self.by_len.last()?,
        };
        self.remove(start, len);
        let n = len.min(want);
        if n < len {
            self.insert(start + n, len - n);
        }
        Some((start, n))
    }

    /// Give back `[start, start + len)` (inside one chunk, not free),
    /// merged with its free neighbours in the same chunk.
    pub(super) fn free(&mut self, mut start: u32, mut len: u32) {
        debug_assert_eq!(start / self.chunk_blocks, (start + len - 1) / self.chunk_blocks, "run crosses a chunk");
        if !start.is_multiple_of(self.chunk_blocks) {
            if let Some((&ls, &ll)) = self.by_start.range(..start).next_back() {
                debug_assert!(ls + ll <= start, "double free of block {start}");
                if ls + ll == start {
                    self.remove(ls, ll);
                    start = ls;
                    len += ll;
                }
            }
        }
        let end = start + len;
        if !end.is_multiple_of(self.chunk_blocks) {
            if let Some(&rl) = self.by_start.get(&end) {
                self.remove(end, rl);
                len += rl;
            }
        }
        self.insert(start, len);
    }
}

impl SparseArena {
    /// Take a block from the pool (`None`: exhausted).
    pub fn alloc_block(&mut self) -> Option<BlockId> {
        self.alloc_run(1).map(|(b, _)| b)
    }

    /// Take up to `want` consecutive blocks of one chunk from the pool, as
    /// (first block, count ≥ 1); `None`: exhausted. Fewer than `want` only
    /// when no free run is that long (the longest is taken).
    pub fn alloc_run(&mut self, want: u32) -> Option<(BlockId, u32)> {
        let (b, n) = self.free.alloc(want)?;
        self.allocated[b as usize..(b + n) as usize].fill(true);
        Some((BlockId(b), n))
    }

    /// Give a block back; it must not be bound anywhere.
    pub fn free_block(&mut self, block: BlockId) -> Result<(), SparseError> {
        let i = block.0 as usize;
        if !self.allocated.get(i).copied().unwrap_or(false) {
            return Err(SparseError::BadBlock(block));
        }
        if self.bind_count[i] != 0 {
            return Err(SparseError::BlockInUse { block, pages: self.bind_count[i] });
        }
        self.allocated[i] = false;
        self.free.free(block.0, 1);
        Ok(())
    }

    /// Give back allocated, unbound blocks, coalescing runs of consecutive
    /// ones (in the order given).
    pub(super) fn free_unbound(&mut self, blocks: &[u32]) {
        let mut i = 0;
        while i < blocks.len() {
            let s = blocks[i];
            let mut n = 1;
            while i + (n as usize) < blocks.len()
                && blocks[i + n as usize] == s + n
                && !(s + n).is_multiple_of(self.chunk_blocks)
            {
                n += 1;
            }
            for b in s..s + n {
                debug_assert!(self.allocated[b as usize] && self.bind_count[b as usize] == 0);
                self.allocated[b as usize] = false;
            }
            self.free.free(s, n);
            i += n as usize;
        }
    }
}
