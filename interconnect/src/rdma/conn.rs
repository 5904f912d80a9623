//! The life of one peer's RDMA connection, sans-IO: the TCP control connection comes up
//! (authenticated by the usual handshake), both sides exchange [`QpInfo`], each moves its
//! queue pair to ready-to-send and says [`ControlMessage::Ready`]; traffic flows only once
//! both are ready, so no SEND reaches a queue pair that cannot take it yet. When the control
//! connection drops (the peer restarted or died), the queue pair fails, or the exchange takes
//! too long, the queue pair is torn down and the control connection is closed; the TCP
//! transport then redials and the exchange starts again with a fresh queue pair.
//!
//! ```text
//! Idle --control_up--> Exchanging --remote Info--> Connecting --qp_connected--> AwaitingReady
//!  ^                                                                   (peer Ready) |
//!  +----- control_down / qp_failed / timeout / bad message (from any) --- Ready <---+
//! ```
//!
//! The peer's Ready may come before our queue pair is connected; it is remembered. This
//! module owns the states and decides; it never creates queue pairs or sockets: it returns
//! [`ConnAction`]s for the driver to carry out.

use super::qp_info::{ControlMessage, QpInfo};
use std::time::{Duration, Instant};

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnAction {
    /// Send these bytes to the peer over the control connection.
    SendControl(Vec<u8>),
    /// Move the local queue pair to ready-to-receive and ready-to-send towards `remote`,
    /// then call [`Connection::qp_connected`] (or [`Connection::qp_failed`]).
    ConnectQp(QpInfo),
    /// The connection carries traffic from now: report the peer connected.
    Up,
    /// Destroy the queue pair; report the peer disconnected when `was_up`; close the control
    /// connection when `close_control` (it is still up but this pairing is broken).
    TearDown {
        /// Why.
        reason: String,
        /// The peer had been reported connected.
        was_up: bool,
        /// The control connection must be closed too.
        close_control: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Exchanging { since: Instant },
    Connecting { since: Instant, peer_ready: bool },
    AwaitingReady { since: Instant },
    Ready,
}

/// One peer's connection state.
#[derive(Debug, Clone)]
pub struct Connection {
    state: State,
    /// How long the exchange may take before the pairing is given up.
    setup_timeout: Duration,
}

impl Connection {
    /// A connection with no control connection yet.
    pub fn new(setup_timeout: Duration) -> Self {
        Self {
            state: State::Idle,
            setup_timeout,
        }
    }

    /// Whether traffic may flow.
    pub fn is_up(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether a local queue pair exists for this pairing (anything but Idle).
    pub fn is_pairing(&self) -> bool {
        self.state != State::Idle
    }

    /// The control connection is up and authenticated; the driver has created a local queue
    /// pair described by `local`.
    pub fn control_up(&mut self, local: QpInfo, now: Instant) -> Vec<ConnAction> {
        let mut actions = self.reset("control connection replaced", false);
        self.state = State::Exchanging { since: now };
        actions.push(ConnAction::SendControl(
            ControlMessage::Info(local).encode(),
        ));
        actions
    }

    /// A set-up message arrived on the control connection.
    pub fn control_message(&mut self, bytes: &[u8], now: Instant) -> Vec<ConnAction> {
        let message = match ControlMessage::decode(bytes) {
            Ok(message) => message,
            Err(e) => return self.reset(&format!("bad RDMA set-up message: {e}"), true),
        };
        match (&self.state, message) {
            (State::Exchanging { .. }, ControlMessage::Info(remote)) => {
                self.state = State::Connecting {
                    since: now,
                    peer_ready: false,
                };
                vec![ConnAction::ConnectQp(remote)]
            }
            (State::Exchanging { .. }, ControlMessage::Ready) => {
                self.reset("peer ready before it sent its queue pair", true)
            }
            (State::Connecting { since, .. }, ControlMessage::Ready) => {
                self.state = State::Connecting {
                    since: *since,
                    peer_ready: true,
                };
                Vec::new()
            }
            (State::AwaitingReady { .. }, ControlMessage::Ready) => {
                self.state = State::Ready;
                vec![ConnAction::Up]
            }
            // Messages for a pairing we no longer have (a control connection that has
            // since closed cannot deliver, so this is a confused peer).
            (State::Idle, _) => Vec::new(),
            (_, message) => self.reset(&format!("unexpected RDMA set-up {message:?}"), true),
        }
    }

    /// The local queue pair reached ready-to-send.
    pub fn qp_connected(&mut self, now: Instant) -> Vec<ConnAction> {
        match self.state {
            State::Connecting { peer_ready, .. } => {
                let ready = ConnAction::SendControl(ControlMessage::Ready.encode());
                if peer_ready {
                    self.state = State::Ready;
                    vec![ready, ConnAction::Up]
                } else {
                    self.state = State::AwaitingReady { since: now };
                    vec![ready]
                }
            }
            _ => Vec::new(),
        }
    }

    /// The queue pair failed (could not be connected, or a work request completed in error).
    pub fn qp_failed(&mut self, reason: &str) -> Vec<ConnAction> {
        self.reset(reason, true)
    }

    /// The control connection is gone (the peer died or restarted).
    pub fn control_down(&mut self, reason: &str) -> Vec<ConnAction> {
        self.reset(reason, false)
    }

    /// When [`Connection::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Exchanging { since }
            | State::Connecting { since, .. }
            | State::AwaitingReady { since } => Some(since + self.setup_timeout),
            State::Idle | State::Ready => None,
        }
    }

    /// Gives up a set-up that has taken too long.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ConnAction> {
        match self.poll_timeout() {
            Some(deadline) if now >= deadline => self.reset("RDMA set-up timed out", true),
            _ => Vec::new(),
        }
    }

    fn reset(&mut self, reason: &str, close_control: bool) -> Vec<ConnAction> {
        let was_up = self.is_up();
        let pairing = self.is_pairing();
        self.state = State::Idle;
        if !pairing {
            return Vec::new();
        }
        vec![ConnAction::TearDown {
            reason: reason.to_string(),
            was_up,
            close_control,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::super::qp_info::tests::sample;
    use super::*;

    fn setup() -> (Connection, Instant) {
        (Connection::new(Duration::from_secs(5)), Instant::now())
    }

    fn ready() -> Vec<u8> {
        ControlMessage::Ready.encode()
    }

    #[test]
    fn exchange_then_ready_both_ways_brings_it_up() {
        let (mut conn, now) = setup();
        assert_eq!(
            conn.control_up(sample(), now),
            vec![ConnAction::SendControl(
                ControlMessage::Info(sample()).encode()
            )]
        );
        assert!(!conn.is_up());
        let remote = ControlMessage::Info(sample()).encode();
        assert_eq!(
            conn.control_message(&remote, now),
            vec![ConnAction::ConnectQp(sample())]
        );
        assert_eq!(
            conn.qp_connected(now),
            vec![ConnAction::SendControl(ready())]
        );
        assert!(!conn.is_up(), "not before the peer is ready");
        assert_eq!(conn.control_message(&ready(), now), vec![ConnAction::Up]);
        assert!(conn.is_up());
        assert_eq!(conn.poll_timeout(), None);
    }

    #[test]
    fn peer_ready_before_our_qp_is_remembered() {
        let (mut conn, now) = setup();
        conn.control_up(sample(), now);
        conn.control_message(&ControlMessage::Info(sample()).encode(), now);
        assert_eq!(conn.control_message(&ready(), now), vec![]);
        assert_eq!(
            conn.qp_connected(now),
            vec![ConnAction::SendControl(ready()), ConnAction::Up]
        );
    }

    #[test]
    fn peer_restart_tears_down_and_a_new_control_connection_pairs_again() {
        let (mut conn, now) = setup();
        conn.control_up(sample(), now);
        conn.control_message(&ControlMessage::Info(sample()).encode(), now);
        conn.qp_connected(now);
        conn.control_message(&ready(), now);
        assert_eq!(
            conn.control_down("peer closed"),
            vec![ConnAction::TearDown {
                reason: "peer closed".into(),
                was_up: true,
                close_control: false
            }]
        );
        assert!(!conn.is_pairing());
        assert_eq!(
            conn.control_down("again"),
            vec![],
            "idle: nothing to tear down"
        );
        assert_eq!(
            conn.control_message(&ready(), now),
            vec![],
            "stale: ignored"
        );
        assert!(matches!(
            conn.control_up(sample(), now).as_slice(),
            [ConnAction::SendControl(_)]
        ));
    }

    #[test]
    fn out_of_order_or_bad_messages_close_the_pairing() {
        let (mut conn, now) = setup();
        conn.control_up(sample(), now);
        assert!(matches!(
            conn.control_message(&ready(), now).as_slice(),
            [ConnAction::TearDown {
                close_control: true,
                was_up: false,
                ..
            }]
        ));
        conn.control_up(sample(), now);
        assert!(matches!(
            conn.control_message(b"junk", now).as_slice(),
            [ConnAction::TearDown {
                close_control: true,
                ..
            }]
        ));
        // A second Info once up.
        conn.control_up(sample(), now);
        let info = ControlMessage::Info(sample()).encode();
        conn.control_message(&info, now);
        conn.qp_connected(now);
        conn.control_message(&ready(), now);
        assert!(matches!(
            conn.control_message(&info, now).as_slice(),
            [ConnAction::TearDown {
                was_up: true,
                close_control: true,
                ..
            }]
        ));
    }

    #[test]
    fn a_stalled_setup_times_out_and_a_failed_qp_reports_down() {
        let (mut conn, now) = setup();
        conn.control_up(sample(), now);
        let deadline = conn.poll_timeout().unwrap();
        assert_eq!(
            conn.handle_timeout(deadline - Duration::from_millis(1)),
            vec![]
        );
        assert!(matches!(
            conn.handle_timeout(deadline).as_slice(),
            [ConnAction::TearDown {
                close_control: true,
                ..
            }]
        ));
        conn.control_up(sample(), now);
        conn.control_message(&ControlMessage::Info(sample()).encode(), now);
        conn.qp_connected(now);
        conn.control_message(&ready(), now);
        assert!(matches!(
            conn.qp_failed("work request flushed").as_slice(),
            [ConnAction::TearDown {
                was_up: true,
                close_control: true,
                ..
            }]
        ));
    }
}
