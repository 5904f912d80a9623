//! The faults both worlds inject, one implementation for both: one-link and one-way cuts,
//! process pauses, storage stalls (with the network up or cut), forward clock jumps, and the
//! fate of control frames (lost, duplicated, delayed) and of writes (failed, landed anyway).
//! [`Faults`] keeps what is in force per node and per directed link in the world's global
//! time; each draw takes its lengths in units of the world's lease (a six-hundredth of it:
//! the runtime's millisecond), so the membership world (the runtime's timings) and the
//! instance world (the runtime's divided by 50) see the same faults relative to their lease.
//!
//! Test support: it owns no protocol decision and never schedules anything (each world owns
//! its clock and its events and asks here what is in force).

use interconnect::Service;
use interconnect::sim::SimRng;
use std::collections::BTreeMap;
use std::time::Duration;

/// A fault drawn and put in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `from` → `to` drops (control) or holds (engine streams) everything until `until`;
    /// `both`: the other direction too.
    Cut {
        /// One end.
        from: usize,
        /// The other.
        to: usize,
        /// Both directions (else only `from` → `to`).
        both: bool,
        /// When it heals.
        until: Duration,
    },
    /// The process takes no steps until `until` (SIGSTOP, then SIGCONT).
    Pause {
        /// Whose.
        node: usize,
        /// When it resumes.
        until: Duration,
    },
    /// Its storage I/O is held until `until`; with `network_cut`, every link of it too.
    Stall {
        /// Whose.
        node: usize,
        /// When it ends.
        until: Duration,
        /// Its network is cut for as long.
        network_cut: bool,
    },
    /// Its clock jumps forward by `by` (within the lease's margin for clock rates).
    Jump {
        /// Whose.
        node: usize,
        /// How far.
        by: Duration,
    },
}

/// The faults in force (global time).
#[derive(Debug, Clone)]
pub struct Faults {
    lease: Duration,
    paused_until: Vec<Duration>,
    stalled_until: Vec<Duration>,
    clock_offset: Vec<Duration>,
    /// Directed links cut until a time.
    cut_until: BTreeMap<(usize, usize), Duration>,
}

impl Faults {
    /// No fault in force among `nodes` whose lease is `lease`.
    pub fn new(nodes: usize, lease: Duration) -> Self {
        Self {
            lease,
            paused_until: vec![Duration::ZERO; nodes],
            stalled_until: vec![Duration::ZERO; nodes],
            clock_offset: vec![Duration::ZERO; nodes],
            cut_until: BTreeMap::new(),
        }
    }

    /// `k` six-hundredths of the lease (the runtime's milliseconds).
    fn units(&self, k: u64) -> Duration {
        self.lease * u32::try_from(k).unwrap_or(u32::MAX) / 600
    }

    /// Cuts the link of `victim` to another node drawn among `nodes`, one way or (2 in 3)
    /// both, for half a lease to eight.
    pub fn cut(&mut self, rng: &mut SimRng, victim: usize, nodes: usize, now: Duration) -> Fault {
        let other = (victim + 1 + rng.below(nodes as u64 - 1) as usize) % nodes;
        let until = now + self.units(rng.between(300, 5_000));
        let both = rng.chance(2, 3);
        let fault = Fault::Cut {
            from: victim,
            to: other,
            both,
            until,
        };
        self.apply(fault);
        fault
    }

    /// Pauses `victim` for a third of a lease to almost seven (short of the lease, it only
    /// misses heartbeats; past it, it is voted out and must stop itself on resume).
    pub fn pause(&mut self, rng: &mut SimRng, victim: usize, now: Duration) -> Fault {
        let until = now + self.units(rng.between(200, 4_000));
        let fault = Fault::Pause {
            node: victim,
            until,
        };
        self.apply(fault);
        fault
    }

    /// Stalls `victim`'s storage for half a lease to almost seven, with its network cut too
    /// half the times.
    pub fn stall(&mut self, rng: &mut SimRng, victim: usize, now: Duration) -> Fault {
        let until = now + self.units(rng.between(300, 4_000));
        let fault = Fault::Stall {
            node: victim,
            until,
            network_cut: rng.chance(1, 2),
        };
        self.apply(fault);
        fault
    }

    /// Moves `victim`'s clock forward by up to a sixteenth of the lease (the lease keeps an
    /// eighth as margin for clock rates).
    pub fn jump(&mut self, rng: &mut SimRng, victim: usize) -> Fault {
        let fault = Fault::Jump {
            node: victim,
            by: self.units(rng.between(1, 600 / 16)),
        };
        self.apply(fault);
        fault
    }

    /// Puts `fault` in force.
    pub fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Cut {
                from,
                to,
                both,
                until,
            } => {
                self.cut_link(from, to, until);
                if both {
                    self.cut_link(to, from, until);
                }
            }
            Fault::Pause { node, until } => {
                self.paused_until[node] = self.paused_until[node].max(until);
            }
            Fault::Stall {
                node,
                until,
                network_cut,
            } => {
                self.stalled_until[node] = self.stalled_until[node].max(until);
                if network_cut {
                    self.isolate(node, until);
                }
            }
            Fault::Jump { node, by } => self.clock_offset[node] += by,
        }
    }

    /// Cuts every link of `node`, both ways, until `until`.
    pub fn isolate(&mut self, node: usize, until: Duration) {
        for other in (0..self.paused_until.len()).filter(|o| *o != node) {
            self.cut_link(node, other, until);
            self.cut_link(other, node, until);
        }
    }

    fn cut_link(&mut self, from: usize, to: usize, until: Duration) {
        let at = self.cut_until.entry((from, to)).or_default();
        *at = (*at).max(until);
    }

    /// Heals every link of `node` now.
    pub fn heal(&mut self, node: usize) {
        self.cut_until.retain(|(a, b), _| *a != node && *b != node);
    }

    /// Heals every link now.
    pub fn heal_all(&mut self) {
        self.cut_until.clear();
    }

    /// A new process of `node` starts: it is not paused (its storage and links stay as they
    /// are: they are the host's).
    pub fn restart(&mut self, node: usize) {
        self.paused_until[node] = Duration::ZERO;
    }

    /// Whether `from` → `to` carries frames at `now`.
    pub fn linked(&self, from: usize, to: usize, now: Duration) -> bool {
        self.cut_until
            .get(&(from, to))
            .is_none_or(|until| *until <= now)
    }

    /// When `from` → `to` heals, if it is cut at `now`.
    pub fn cut_ends(&self, from: usize, to: usize, now: Duration) -> Option<Duration> {
        self.cut_until
            .get(&(from, to))
            .copied()
            .filter(|until| *until > now)
    }

    /// When `node` resumes, if it is paused at `now`.
    pub fn paused_until(&self, node: usize, now: Duration) -> Option<Duration> {
        Some(self.paused_until[node]).filter(|until| *until > now)
    }

    /// When `node`'s storage stall ends, if it is stalled at `now`.
    pub fn stalled_until(&self, node: usize, now: Duration) -> Option<Duration> {
        Some(self.stalled_until[node]).filter(|until| *until > now)
    }

    /// How much longer `node`'s storage holds an I/O submitted at `now`.
    pub fn io_hold(&self, node: usize, now: Duration) -> Duration {
        self.stalled_until[node].saturating_sub(now)
    }

    /// How far `node`'s clock is ahead of global time.
    pub fn clock_offset(&self, node: usize) -> Duration {
        self.clock_offset[node]
    }

    /// Whether any pause, stall or cut is in force at `now`.
    pub fn any_in_force(&self, now: Duration) -> bool {
        self.paused_until.iter().any(|t| *t > now)
            || self.stalled_until.iter().any(|t| *t > now)
            || self.cut_until.values().any(|t| *t > now)
    }
}

/// How many copies of a control frame of `service` arrive: none 1 in 40 (lost), two 1 in 30
/// for a cluster message (duplicated), else one.
pub fn control_copies(rng: &mut SimRng, service: Service) -> usize {
    if rng.chance(1, 40) {
        0
    } else if service == Service::Instance && rng.chance(1, 30) {
        2
    } else {
        1
    }
}

/// The fate of a write, drawn when it is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteFate {
    /// It completes without error.
    pub ok: bool,
    /// It lands on storage (a failed write may still have landed).
    pub lands: bool,
}

/// A write that fails 1 in `one_in`, landing half of those times anyway.
pub fn write_fate(rng: &mut SimRng, one_in: u64) -> WriteFate {
    let fails = rng.chance(1, one_in);
    WriteFate {
        ok: !fails,
        lands: !fails || rng.chance(1, 2),
    }
}
