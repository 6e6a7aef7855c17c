//! Page leases of an address space several members mirror (the runtime's
//! several devices over one arena, `Svm::mirror`): which member may have
//! each page anywhere but on the host.
//!
//! The protocol around the table (the runtime's `mirror.rs`):
//! * a member moves a page off the host only holding its own update lock
//!   and the page's lease ([`Leases::holds`]), decided *after* its last wait
//!   (a wait releases the lock, and the lease may go meanwhile);
//! * a member gives leases away only under its own update lock, after
//!   bringing the pages home ([`Leases::hand_over`]);
//! * a member that needs another's pages releases its own lock, asks the
//!   holder to give them up, and decides again;
//! * a CPU access goes to the page's holder, which checks the lease under
//!   its lock and hands the access back if it moved.
//!
//! So no two members ever have one page off the host. `loom_tests` checks
//! this on the real table with a model of the members, and that deciding
//! without looking again after the ask (the natural mistake) breaks it.

use crate::loom::Mutex;

/// A member of the group: 0 is the arena's own runtime.
pub type Member = u8;

/// A page whose only copy was on a member's device when that device was
/// lost: its data is gone. Never a member.
pub const LOST: Member = Member::MAX;

/// Per page: the member that may have it anywhere but on the host.
#[derive(Debug)]
pub struct Leases {
    /// Zero bits (member 0) for pages never asked for: a calloc'd vector
    /// the OS commits as it is written.
    holders: Mutex<Vec<Member>>,
}

/// Pages in the table (a table has at most 2^32 pages).
fn len32(holders: &[Member]) -> u32 {
    u32::try_from(holders.len()).unwrap_or(u32::MAX)
}

impl Leases {
    /// `pages` pages, every one member 0's.
    pub fn new(pages: usize) -> Self {
        Self { holders: Mutex::new(vec![0; pages]) }
    }

    /// The member holding page `p`'s lease (or [`LOST`]).
    pub fn holder(&self, p: u32) -> Member {
        self.holders.lock()[p as usize]
    }

    /// Whether `me` holds page `p`'s lease.
    pub fn holds(&self, p: u32, me: Member) -> bool {
        self.holder(p) == me
    }

    /// Maximal runs of `ranges` whose lease another member holds (or that
    /// are [`LOST`]): `(a, b, holder)`. Pages past the table are none.
    pub fn foreign_runs(&self, ranges: impl IntoIterator<Item = (u32, u32)>, me: Member) -> Vec<(u32, u32, Member)> {
        let holders = self.holders.lock();
        let mut out: Vec<(u32, u32, Member)> = Vec::new();
        for (a, b) in ranges {
            for p in a..b.min(len32(&holders)) {
                let h = holders[p as usize];
                if h == me {
                    continue;
                }
                match out.last_mut() {
                    Some(l) if l.1 == p && l.2 == h => l.1 = p + 1,
                    _ => out.push((p, p + 1, h)),
                }
            }
        }
        out
    }

    /// Maximal runs of `[a, b)` whose lease `me` holds.
    pub fn held_runs(&self, a: u32, b: u32, me: Member) -> Vec<(u32, u32)> {
        let holders = self.holders.lock();
        let b = b.min(len32(&holders));
        let mut out: Vec<(u32, u32)> = Vec::new();
        for p in a..b {
            if holders[p as usize] != me {
                continue;
            }
            match out.last_mut() {
                Some(l) if l.1 == p => l.1 = p + 1,
                _ => out.push((p, p + 1)),
            }
        }
        out
    }

    /// Give the pages of `[a, b)` that `from` holds to `to`, except those
    /// `keep` names (pages `from` could not bring home). The caller holds
    /// `from`'s update lock and has brought the others home.
    pub fn hand_over(&self, a: u32, b: u32, from: Member, to: Member, keep: impl Fn(u32) -> bool) {
        let mut holders = self.holders.lock();
        let b = b.min(len32(&holders));
        for p in a..b {
            if holders[p as usize] == from && !keep(p) {
                holders[p as usize] = to;
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn runs_and_hand_over() {
        let l = Leases::new(16);
        assert!(l.foreign_runs([(0, 16)], 0).is_empty());
        assert_eq!(l.foreign_runs([(2, 6), (5, 9)], 1), vec![(2, 6, 0), (5, 9, 0)]);
        l.hand_over(4, 8, 0, 1, |p| p == 6);
        assert_eq!(l.foreign_runs([(0, 16)], 0), vec![(4, 6, 1), (7, 8, 1)]);
        assert_eq!(l.held_runs(0, 16, 1), vec![(4, 6), (7, 8)]);
        l.hand_over(0, 16, 1, LOST, |_| false);
        assert_eq!(l.holder(5), LOST);
        assert!(l.holds(6, 0));
        assert!(l.foreign_runs([(20, 30)], 0).is_empty(), "past the table: none");
    }
}
