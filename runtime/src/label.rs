//! Labels of allocations: a name the program gives an allocation
//! ([`Svm::set_label`], [`crate::ManagedVec::set_label`]), shown wherever an
//! address of it is: kernel errors (`LaunchError`'s messages), the trace
//! spans of migrations, [`Svm::label`].
//!
//! Managed addresses are process-wide (every arena is its own range of the
//! address space), so the registry is process-wide too: an error's message
//! names the allocation an address falls in without a handle to the
//! runtime. A freed allocation's label stays, marked freed, for errors
//! formatted after its owner dropped, until its addresses are allocated
//! again; an arena's labels go with the arena (so a later mapping at the
//! same addresses is never mislabelled).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::LabelError;
use crate::runtime::Svm;

/// A labelled range: where it ends, its label, and whether its allocation
/// was freed (kept so that an error formatted after the owner dropped
/// still names it, until the addresses are allocated again).
struct Entry {
    end: usize,
    label: Arc<str>,
    freed: bool,
}

/// start → entry of each labelled allocation, every arena's.
static LABELS: RwLock<BTreeMap<usize, Entry>> = RwLock::new(BTreeMap::new());

/// The label of the allocation holding `addr`, `addr`'s offset in it, and
/// whether it was freed.
fn lookup_entry(addr: u64) -> Option<(Arc<str>, usize, bool)> {
    let addr = usize::try_from(addr).ok()?;
    let map = LABELS.read();
    let (&start, e) = map.range(..=addr).next_back()?;
    (addr < e.end).then(|| (e.label.clone(), addr - start, e.freed))
}

/// The label of the live allocation holding `addr`, and `addr`'s offset.
pub(crate) fn lookup(addr: u64) -> Option<(Arc<str>, usize)> {
    lookup_entry(addr).filter(|e| !e.2).map(|(l, o, _)| (l, o))
}

/// `addr` as an error shows it: `0x… (`label`+0x40)` when labelled
/// (`(`label`+0x40, freed)` once its allocation is gone).
pub(crate) fn describe(addr: u64) -> String {
    match lookup_entry(addr) {
        Some((label, off, false)) => format!("{addr:#x} (`{label}`+{off:#x})"),
        Some((label, off, true)) => format!("{addr:#x} (`{label}`+{off:#x}, freed)"),
        None => format!("{addr:#x}"),
    }
}

/// The label of `addr`'s allocation, for trace fields ("" when none).
pub(crate) fn trace_label(addr: usize) -> Arc<str> {
    lookup(addr as u64).map_or_else(|| Arc::from(""), |(l, _)| l)
}

/// Set (or replace) the label of the allocation `[start, end)`. Called
/// under the runtime's update lock (the allocation cannot go meanwhile).
pub(crate) fn set(start: usize, end: usize, label: Arc<str>) {
    LABELS.write().insert(start, Entry { end, label, freed: false });
}

/// The allocation `[start, end)` was freed: its label stays, marked, for
/// messages formatted later (under the update lock).
pub(crate) fn freed(start: usize, end: usize) {
    let mut map = LABELS.write();
    for (_, e) in map.range_mut(start..end) {
        e.freed = true;
    }
}

/// `[start, end)` is allocated again: labels of what was there go
/// (under the update lock).
pub(crate) fn reuse(start: usize, end: usize) {
    let mut map = LABELS.write();
    let mut keys: Vec<usize> = map.range(start..end).map(|(&k, _)| k).collect();
    if let Some((&k, e)) = map.range(..start).next_back() {
        if e.end > start {
            keys.push(k);
        }
    }
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
        reuse(self.start, self.end);
    }
}

impl Svm {
    /// Name the live allocation holding `ptr` (a page allocation or a
    /// sub-page block, whichever `ptr` lies in): errors about its addresses
    /// and the trace spans of its migrations show the name. Replaces an
    /// earlier label; the label goes when the allocation is freed.
    pub fn set_label(&self, ptr: *const u8, label: &str) -> Result<(), LabelError> {
        let addr = ptr as usize;
        // Copied before any lock: the string may itself be managed memory,
        // whose read can fault (the fault service takes the update lock).
        let label: Arc<str> = Arc::from(label);
        // (Under the update lock: the allocation cannot be freed and its
        // addresses reused in between.)
        self.with_allocation_at(addr, |start, len| set(start, start + len, label))
            .ok_or(LabelError::NotAllocated { addr })
    }

    /// The label of the allocation holding `ptr`, if it has one.
    pub fn label(&self, ptr: *const u8) -> Option<String> {
        let addr = ptr as usize;
        self.with_allocation_at(addr, |_, _| lookup(addr as u64).map(|(l, _)| l.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_outlive_the_free_until_the_addresses_are_reused() {
        // Addresses no arena uses (the registry is process-wide).
        let base = 0x7000_0000_0000usize;
        set(base, base + 4096, "edges".into());
        set(base + 8192, base + 8208, "node".into());
        assert_eq!(describe(base as u64 + 0x40), format!("{:#x} (`edges`+0x40)", base + 0x40));
        assert_eq!(describe(base as u64 + 4096), format!("{:#x}", base + 4096));
        assert_eq!(lookup(base as u64 + 8200).map(|(l, o)| (l.to_string(), o)), Some(("node".into(), 8)));
        freed(base, base + 8192);
        assert!(lookup(base as u64).is_none(), "freed: not a live allocation's label");
        assert_eq!(describe(base as u64 + 0x40), format!("{:#x} (`edges`+0x40, freed)", base + 0x40));
        assert!(lookup(base as u64 + 8192).is_some());
        // Allocated again across the old range's middle: its label goes.
        reuse(base + 2048, base + 3072);
        assert_eq!(describe(base as u64), format!("{base:#x}"));
        reuse(base, base + (1 << 20));
        assert!(lookup(base as u64 + 8192).is_none());
    }
}
