//! Leadership follows the writer: where a group's commands come from.
//!
//! Any node accepts any request and forwards a command to its group's leader
//! (a peer round trip: two more wake-ups, two more socket writes). When one
//! node's gateway sends nearly all of a group's commands, the group's leader
//! moves there and the hop disappears. Clients that keep a connection to one
//! node per session (the common case, and every load balancer with
//! affinity) thus write to a local leader; clients that spread one session's
//! writes over nodes see no change.
//!
//! Each core counts, per group, the commands proposed through it by origin
//! node (the slot of the node whose gateway received the client's request,
//! the same for every incarnation of that node). Every
//! balancing round (`EngineLoop::move_leadership`) reads and resets the tally:
//! a group it leads whose commands came from one other node's voter (at least
//! `share_pct`% of at least `min_commands`) is handed to that voter, and the
//! leader balancer leaves alone the groups whose writer is local. Pure
//! decision logic, no I/O: the engine loop owns the tally.

use std::collections::HashMap;

/// When a group's leadership follows its writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowPolicy {
    /// Commands in a round below which nothing moves (a quiet group's
    /// leadership is not worth a transfer).
    pub min_commands: u32,
    /// Share of the round's commands, in percent, one node must have sent.
    pub share_pct: u32,
    /// Transfers one core starts per round at most.
    pub max_moves: usize,
}

impl FollowPolicy {
    /// Production: a round is 2 s (`BALANCE_EVERY_TICKS`), so a group moves
    /// once it sees 50 commands in 2 s, 90% of them from one node.
    pub const DEFAULT: FollowPolicy = FollowPolicy {
        min_commands: 50,
        share_pct: 90,
        max_moves: 16,
    };
}

/// Where one group's commands came from in this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    total: u32,
    /// `(origin raft id, commands)`; a few writers at most in practice.
    by_origin: Vec<(u64, u32)>,
}

/// Origins tracked per group; more distinct writers than this is "mixed".
const MAX_ORIGINS: usize = 8;

impl Tally {
    fn record(&mut self, origin: u64) {
        self.total = self.total.saturating_add(1);
        if let Some(slot) = self.by_origin.iter_mut().find(|(o, _)| *o == origin) {
            slot.1 = slot.1.saturating_add(1);
        } else if self.by_origin.len() < MAX_ORIGINS {
            self.by_origin.push((origin, 1));
        }
    }

    /// The origin that sent at least `share_pct`% of at least `min_commands`.
    fn dominant(&self, policy: &FollowPolicy) -> Option<u64> {
        if self.total < policy.min_commands.max(1) {
            return None;
        }
        let (origin, n) = self.by_origin.iter().max_by_key(|(_, n)| *n)?;
        (u64::from(*n) * 100 >= u64::from(self.total) * u64::from(policy.share_pct))
            .then_some(*origin)
    }
}

/// What the balancer should do with a group this core leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// Its writer is another node: hand leadership to it.
    Remote(u64),
    /// Its writer is this node: keep leading it.
    Local,
    /// No dominant writer (or too few commands): leader balancing decides.
    None,
}

/// Per-group tallies of one core for the current round.
#[derive(Debug, Default)]
pub struct WriterTally {
    groups: HashMap<u32, Tally>,
}

impl WriterTally {
    /// Counts a command for `group` that `origin`'s gateway received.
    pub fn record(&mut self, group: u32, origin: u64) {
        self.groups.entry(group).or_default().record(origin);
    }

    /// Ends the round: the affinity of every group that saw commands, as
    /// seen from node `me`; the tally starts again from zero.
    pub fn end_round(&mut self, me: u64, policy: &FollowPolicy) -> HashMap<u32, Affinity> {
        self.groups
            .drain()
            .map(|(group, tally)| {
                let affinity = match tally.dominant(policy) {
                    Some(origin) if origin == me => Affinity::Local,
                    Some(origin) => Affinity::Remote(origin),
                    None => Affinity::None,
                };
                (group, affinity)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: FollowPolicy = FollowPolicy {
        min_commands: 10,
        share_pct: 90,
        max_moves: 4,
    };

    fn tally(records: &[(u32, u64, u32)]) -> WriterTally {
        let mut t = WriterTally::default();
        for &(group, origin, n) in records {
            for _ in 0..n {
                t.record(group, origin);
            }
        }
        t
    }

    #[test]
    fn one_remote_writer_takes_the_group() {
        let mut t = tally(&[(7, 2, 19), (7, 1, 1)]);
        assert_eq!(t.end_round(1, &P)[&7], Affinity::Remote(2));
    }

    #[test]
    fn a_local_writer_keeps_it() {
        let mut t = tally(&[(7, 1, 30)]);
        assert_eq!(t.end_round(1, &P)[&7], Affinity::Local);
    }

    #[test]
    fn mixed_or_quiet_groups_stay_with_the_balancer() {
        // 85% is under the 90% share; 9 commands are under the minimum.
        let mut t = tally(&[(7, 2, 17), (7, 3, 3), (8, 2, 9)]);
        let a = t.end_round(1, &P);
        assert_eq!(a[&7], Affinity::None);
        assert_eq!(a[&8], Affinity::None);
    }

    #[test]
    fn a_round_starts_from_zero() {
        let mut t = tally(&[(7, 2, 30)]);
        assert_eq!(t.end_round(1, &P).len(), 1);
        assert!(t.end_round(1, &P).is_empty());
        t.record(7, 3);
        assert_eq!(t.end_round(1, &P)[&7], Affinity::None);
    }

    #[test]
    fn many_writers_count_in_the_total() {
        // Ten origins: the ninth and tenth are not tracked, but their
        // commands still count against the share.
        let mut t = WriterTally::default();
        for origin in 0..10u64 {
            for _ in 0..3 {
                t.record(1, 100 + origin);
            }
        }
        for _ in 0..200 {
            t.record(1, 100);
        }
        // 203 of 230 = 88%.
        assert_eq!(t.end_round(1, &P)[&1], Affinity::None);
    }
}
