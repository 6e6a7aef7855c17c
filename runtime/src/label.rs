//! Labels of allocations: a name the program gives an allocation
//! ([`Svm::set_label`], [`crate::ManagedVec::set_label`]), shown wherever an
//! address of it is: kernel errors (`LaunchError`'s messages), the trace
//! spans of migrations, [`Svm::label`].
//!
//! Managed addresses are process-wide (every arena is its own range of the
//! address space), so the registry is process-wide too: an error's message
//! names the allocation an address falls in without a handle to the
//! runtime. An allocation's label goes when it is freed, and an arena's
//! labels when the arena does (so a later mapping at the same addresses is
//! never mislabelled).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::LabelError;
use crate::runtime::Svm;

/// start → (end, label) of each labelled allocation, every arena's.
static LABELS: RwLock<BTreeMap<usize, (usize, Arc<str>)>> = RwLock::new(BTreeMap::new());

/// The label of the allocation holding `addr`, and `addr`'s offset in it.
pub(crate) fn lookup(addr: u64) -> Option<(Arc<str>, usize)> {
    let addr = usize::try_from(addr).ok()?;
    let map = LABELS.read();
    let (&start, (end, label)) = map.range(..=addr).next_back()?;
    (addr < *end).then(|| (label.clone(), addr - start))
}

/// `addr` as an error shows it: `0x… (`label`+0x40)` when labelled.
pub(crate) fn describe(addr: u64) -> String {
    match lookup(addr) {
        Some((label, off)) => format!("{addr:#x} (`{label}`+{off:#x})"),
        None => format!("{addr:#x}"),
    }
}

/// The label of `addr`'s allocation, for trace fields ("" when none).
pub(crate) fn trace_label(addr: usize) -> Arc<str> {
    lookup(addr as u64).map_or_else(|| Arc::from(""), |(l, _)| l)
}

/// Set (or replace) the label of the allocation `[start, end)`.
pub(crate) fn set(start: usize, end: usize, label: &str) {
    LABELS.write().insert(start, (end, Arc::from(label)));
}

/// Drop the labels of allocations starting in `[start, end)`.
pub(crate) fn forget(start: usize, end: usize) {
    let mut map = LABELS.write();
    let keys: Vec<usize> = map.range(start..end).map(|(&k, _)| k).collect();
    for k in keys {
        map.remove(&k);
    }
}

/// Forgets an arena's labels when dropped (held by the runtime, dropped
/// before the arena's mappings).
pub(crate) struct ArenaLabels {
    pub start: usize,
    pub end: usize,
}

impl Drop for ArenaLabels {
    fn drop(&mut self) {
        forget(self.start, self.end);
    }
}

impl Svm {
    /// Name the live allocation holding `ptr` (a page allocation or a
    /// sub-page block, whichever `ptr` lies in): errors about its addresses
    /// and the trace spans of its migrations show the name. Replaces an
    /// earlier label; the label goes when the allocation is freed.
    pub fn set_label(&self, ptr: *const u8, label: &str) -> Result<(), LabelError> {
        let addr = ptr as usize;
        let (start, len) = self.allocation_at(addr).ok_or(LabelError::NotAllocated { addr })?;
        set(start, start + len, label);
        Ok(())
    }

    /// The label of the allocation holding `ptr`, if it has one.
    pub fn label(&self, ptr: *const u8) -> Option<String> {
        let addr = ptr as usize;
        self.allocation_at(addr)?;
        lookup(addr as u64).map(|(l, _)| l.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_names_the_allocation_and_forget_drops_it() {
        // Addresses no arena uses (the registry is process-wide).
        let base = 0x7000_0000_0000usize;
        set(base, base + 4096, "edges");
        set(base + 8192, base + 8208, "node");
        assert_eq!(describe(base as u64 + 0x40), format!("{:#x} (`edges`+0x40)", base + 0x40));
        assert_eq!(describe(base as u64 + 4096), format!("{:#x}", base + 4096));
        assert_eq!(lookup(base as u64 + 8200).map(|(l, o)| (l.to_string(), o)), Some(("node".into(), 8)));
        forget(base, base + 8192);
        assert!(lookup(base as u64).is_none());
        assert!(lookup(base as u64 + 8192).is_some());
        forget(base, base + (1 << 20));
        assert!(lookup(base as u64 + 8192).is_none());
    }
}
