//! Network membership: heartbeats, peer liveness (up / suspect / down) and the epoch filter.
//!
//! [`Membership`] is a sans-IO state machine. Its driver feeds it every frame header it
//! receives ([`Membership::on_frame`], which also drops frames from an older epoch and counts
//! them) and the time ([`Membership::handle_timeout`]); it returns the peers to send a
//! heartbeat to ([`Membership::poll_transmit`]), liveness changes ([`Membership::poll_event`])
//! and its next deadline ([`Membership::poll_timeout`]). Any frame from a peer counts as a sign
//! of life, so a busy link needs no extra heartbeats to stay up.
//!
//! A peer silent for `suspect_after_missed` heartbeat intervals is *suspect*; silent for
//! `down_after` it is *down*. A frame from a suspect or down peer makes it *up* again. The
//! decision that a down peer is dead (and the fencing that goes with it) belongs to the
//! instance's failure handling, which also consults the disk heartbeats; this module must
//! never reconfigure anything itself.
//!
//! Driver order: `on_frame` for each received frame, then `handle_timeout(now)`, then drain
//! `poll_transmit` and `poll_event`, then sleep until `poll_timeout`.

use crate::{Epoch, InstanceId, InstanceSet, MAX_INSTANCES, Timestamp};
use std::collections::VecDeque;
use std::time::Duration;

/// Heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often to send a heartbeat to each peer (default 100 ms).
    pub heartbeat_interval: Duration,
    /// Missed intervals before a peer is suspect (default 3).
    pub suspect_after_missed: u32,
    /// Silence before a suspect peer is reported down (default 2 s: the grace that keeps a
    /// latency spike from evicting a healthy instance).
    pub down_after: Duration,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            suspect_after_missed: 3,
            down_after: Duration::from_secs(2),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipConfigError {
    /// A zero interval or miss count.
    #[error("heartbeat interval and miss count must be positive")]
    Zero,
    /// `down_after` is not longer than the suspicion time.
    #[error("down_after ({down_after:?}) must exceed the suspicion time ({suspect:?})")]
    DownBeforeSuspect {
        /// Configured down time.
        down_after: Duration,
        /// Interval x missed count.
        suspect: Duration,
    },
}

impl MembershipConfig {
    /// Checks the settings are consistent.
    pub fn validate(&self) -> Result<(), MembershipConfigError> {
        if self.heartbeat_interval.is_zero() || self.suspect_after_missed == 0 {
            return Err(MembershipConfigError::Zero);
        }
        let suspect = self.suspect_after();
        if self.down_after <= suspect {
            return Err(MembershipConfigError::DownBeforeSuspect {
                down_after: self.down_after,
                suspect,
            });
        }
        Ok(())
    }

    fn suspect_after(&self) -> Duration {
        self.heartbeat_interval * self.suspect_after_missed
    }
}

/// What this instance believes about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Never heard from since start (or since it was reported down and not back).
    Unknown,
    /// Heard from recently.
    Up,
    /// Silent past the suspicion threshold.
    Suspect,
    /// Silent past `down_after`.
    Down,
}

/// A liveness change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipEvent {
    /// The peer is heard from (first time, or again after suspect/down).
    Up(InstanceId),
    /// The peer missed its heartbeats.
    Suspect(InstanceId),
    /// The peer has been silent for `down_after`.
    Down(InstanceId),
}

/// Whether a received frame may be processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameVerdict {
    /// Current epoch (or newer: the instance learns of a reconfiguration it must join).
    Accept,
    /// From an older epoch: drop it.
    Stale,
    /// From an instance that is not a configured peer: drop it.
    NotAPeer,
}

/// Heartbeat-driven liveness of the configured peers.
#[derive(Debug)]
pub struct Membership {
    config: MembershipConfig,
    local: InstanceId,
    peers: InstanceSet,
    epoch: Epoch,
    state: [PeerState; MAX_INSTANCES],
    last_heard: [Timestamp; MAX_INSTANCES],
    next_heartbeat: Timestamp,
    transmit: VecDeque<InstanceId>,
    events: VecDeque<MembershipEvent>,
    stale_dropped: u64,
}

impl Membership {
    /// Membership of `local` among `peers` (which must not include `local`), at `epoch`.
    pub fn new(
        config: MembershipConfig,
        local: InstanceId,
        mut peers: InstanceSet,
        epoch: Epoch,
        now: Timestamp,
    ) -> Result<Self, MembershipConfigError> {
        config.validate()?;
        peers.remove(local);
        Ok(Self {
            config,
            local,
            peers,
            epoch,
            state: [PeerState::Unknown; MAX_INSTANCES],
            last_heard: [now; MAX_INSTANCES],
            next_heartbeat: now,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            stale_dropped: 0,
        })
    }

    /// The current epoch (frames from older ones are dropped).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Moves to a new epoch (reconfiguration). Never moves backwards.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        self.epoch = self.epoch.max(epoch);
    }

    /// The configured peers.
    pub fn peers(&self) -> InstanceSet {
        self.peers
    }

    /// What this instance believes about `peer`.
    pub fn peer_state(&self, peer: InstanceId) -> PeerState {
        self.state[peer.index()]
    }

    /// Peers currently up.
    pub fn up_peers(&self) -> InstanceSet {
        self.peers
            .iter()
            .filter(|p| self.state[p.index()] == PeerState::Up)
            .collect()
    }

    /// Frames dropped for carrying an older epoch.
    pub fn stale_dropped(&self) -> u64 {
        self.stale_dropped
    }

    /// Records a received frame from `from` carrying `epoch`. Any accepted frame is a sign of
    /// life.
    pub fn on_frame(&mut self, from: InstanceId, epoch: Epoch, now: Timestamp) -> FrameVerdict {
        if !self.peers.contains(from) {
            return FrameVerdict::NotAPeer;
        }
        if epoch < self.epoch {
            self.stale_dropped += 1;
            return FrameVerdict::Stale;
        }
        self.last_heard[from.index()] = self.last_heard[from.index()].max(now);
        if self.state[from.index()] != PeerState::Up {
            self.state[from.index()] = PeerState::Up;
            self.events.push_back(MembershipEvent::Up(from));
        }
        FrameVerdict::Accept
    }

    /// Advances timers: queues heartbeats that are due and detects silent peers.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if now >= self.next_heartbeat {
            self.transmit.extend(self.peers.iter());
            // Keep the cadence; if the driver was late, do not send a burst to catch up.
            self.next_heartbeat = (self.next_heartbeat + self.config.heartbeat_interval).max(now);
        }
        let suspect_after = self.config.suspect_after();
        for peer in self.peers.iter() {
            let silent = now.saturating_since(self.last_heard[peer.index()]);
            let state = &mut self.state[peer.index()];
            match *state {
                PeerState::Up if silent >= self.config.down_after => {
                    // The driver slept through the suspicion window: report both, in order.
                    *state = PeerState::Down;
                    self.events.push_back(MembershipEvent::Suspect(peer));
                    self.events.push_back(MembershipEvent::Down(peer));
                }
                PeerState::Up if silent >= suspect_after => {
                    *state = PeerState::Suspect;
                    self.events.push_back(MembershipEvent::Suspect(peer));
                }
                PeerState::Suspect | PeerState::Unknown if silent >= self.config.down_after => {
                    *state = PeerState::Down;
                    self.events.push_back(MembershipEvent::Down(peer));
                }
                _ => {}
            }
        }
    }

    /// The next peer to send a heartbeat to (a `Service::Membership` frame with an empty body
    /// at `Priority::Critical`).
    pub fn poll_transmit(&mut self) -> Option<InstanceId> {
        self.transmit.pop_front()
    }

    /// The next liveness change.
    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Timestamp {
        let suspect_after = self.config.suspect_after();
        let mut next = self.next_heartbeat;
        for peer in self.peers.iter() {
            let heard = self.last_heard[peer.index()];
            let deadline = match self.state[peer.index()] {
                PeerState::Up => heard + suspect_after,
                PeerState::Suspect | PeerState::Unknown => heard + self.config.down_after,
                PeerState::Down => continue,
            };
            next = next.min(deadline);
        }
        next
    }

    /// This instance.
    pub fn local(&self) -> InstanceId {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> InstanceId {
        InstanceId::new(raw).unwrap()
    }

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_nanos(n * 1_000_000)
    }

    fn drain(m: &mut Membership) -> Vec<MembershipEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    #[test]
    fn silent_peer_goes_suspect_then_down_and_comes_back() {
        let peers: InstanceSet = [id(0), id(1), id(2)].into_iter().collect();
        let mut m =
            Membership::new(MembershipConfig::default(), id(0), peers, Epoch(1), ms(0)).unwrap();
        assert_eq!(m.peers().len(), 2, "the local instance is not its own peer");
        m.on_frame(id(1), Epoch(1), ms(10));
        m.on_frame(id(2), Epoch(1), ms(10));
        assert_eq!(
            drain(&mut m),
            vec![MembershipEvent::Up(id(1)), MembershipEvent::Up(id(2))]
        );
        // Peer 2 keeps talking, peer 1 goes silent.
        let mut t = 10;
        while t < 2_500 {
            t = m.poll_timeout().as_nanos() / 1_000_000;
            m.on_frame(id(2), Epoch(1), ms(t));
            m.handle_timeout(ms(t));
            while m.poll_transmit().is_some() {}
            for event in drain(&mut m) {
                match event {
                    MembershipEvent::Suspect(p) => {
                        assert_eq!(p, id(1));
                        assert_eq!(t, 310, "suspect after 3 x 100 ms of silence");
                    }
                    MembershipEvent::Down(p) => {
                        assert_eq!(p, id(1));
                        assert_eq!(t, 2_010, "down after the 2 s grace");
                    }
                    MembershipEvent::Up(p) => panic!("unexpected up {p:?}"),
                }
            }
        }
        assert_eq!(m.peer_state(id(1)), PeerState::Down);
        assert_eq!(m.peer_state(id(2)), PeerState::Up);
        m.on_frame(id(1), Epoch(1), ms(t));
        assert_eq!(drain(&mut m), vec![MembershipEvent::Up(id(1))]);
    }

    #[test]
    fn heartbeats_go_to_every_peer_each_interval() {
        let peers: InstanceSet = [id(1), id(2), id(3)].into_iter().collect();
        let mut m =
            Membership::new(MembershipConfig::default(), id(1), peers, Epoch(1), ms(0)).unwrap();
        m.handle_timeout(ms(0));
        let first: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
        assert_eq!(first, vec![id(2), id(3)]);
        m.handle_timeout(ms(50));
        assert_eq!(m.poll_transmit(), None, "not due yet");
        m.handle_timeout(ms(100));
        assert_eq!(std::iter::from_fn(|| m.poll_transmit()).count(), 2);
    }

    #[test]
    fn stale_epochs_and_strangers_are_dropped_and_counted() {
        let peers: InstanceSet = [id(0), id(1)].into_iter().collect();
        let mut m =
            Membership::new(MembershipConfig::default(), id(0), peers, Epoch(5), ms(0)).unwrap();
        assert_eq!(m.on_frame(id(1), Epoch(4), ms(1)), FrameVerdict::Stale);
        assert_eq!(m.on_frame(id(9), Epoch(5), ms(1)), FrameVerdict::NotAPeer);
        assert_eq!(m.on_frame(id(1), Epoch(6), ms(1)), FrameVerdict::Accept);
        assert_eq!(m.stale_dropped(), 1);
        m.set_epoch(Epoch(3));
        assert_eq!(m.epoch(), Epoch(5), "epochs never go backwards");
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let config = MembershipConfig {
            down_after: Duration::from_millis(200),
            ..Default::default()
        };
        assert!(matches!(
            config.validate(),
            Err(MembershipConfigError::DownBeforeSuspect { .. })
        ));
        let config = MembershipConfig {
            suspect_after_missed: 0,
            ..Default::default()
        };
        assert_eq!(config.validate(), Err(MembershipConfigError::Zero));
    }
}
