//! Credit-based flow control over one queue pair, so that a SEND never finds the peer's
//! receive queue empty (no receiver-not-ready retries, never an RNR storm).
//!
//! Each side posts `depth` receive buffers for the peer and announces `depth` in its
//! [`QpInfo`](super::qp_info::QpInfo); the peer starts with that many credits. Every SEND and
//! every block write with immediate consumes one receive buffer, so one credit. The receiver
//! reposts each buffer as it consumes it and owes the credit back: returned on the immediate
//! of its next SEND, or, once it owes half the depth, in a SEND of its own that carries
//! nothing else. One credit stays reserved for such a return, so neither side can spend its
//! last credit on data and leave both waiting. A credit-only SEND costs the peer one buffer
//! too, but owes back only one credit, below the threshold, so returns never ping-pong.
//!
//! This module only counts; it never posts anything.

/// Credits given back that the peer never took: the peer is broken or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer returned {returned} credits with {available} of {depth} already available")]
pub struct OverCredited {
    /// Credits in the return.
    pub returned: u32,
    /// Credits available before it.
    pub available: u32,
    /// The peer's receive depth.
    pub depth: u32,
}

/// One queue pair's credits, both ways.
#[derive(Debug, Clone)]
pub struct Credits {
    /// The peer's announced receive depth.
    depth: u32,
    /// SENDs and writes we may still post.
    available: u32,
    /// Receive buffers we reposted whose credit the peer has not got back yet.
    owed: u32,
    /// Our own receive depth: when we owe half of it, we return credits on their own.
    own_depth: u32,
}

impl Credits {
    /// Credits for a queue pair whose peer posted `peer_depth` buffers and to which we
    /// posted `own_depth` (both at least [`MIN_RECV_DEPTH`](super::qp_info::MIN_RECV_DEPTH)).
    pub fn new(peer_depth: u32, own_depth: u32) -> Self {
        Self {
            depth: peer_depth,
            available: peer_depth,
            owed: 0,
            own_depth,
        }
    }

    /// Credits we may spend now.
    pub fn available(&self) -> u32 {
        self.available
    }

    /// Credits we owe the peer.
    pub fn owed(&self) -> u32 {
        self.owed
    }

    /// Takes `cost` credits for a message (1) or a message with a block (2), keeping one in
    /// reserve for a credit return. Returns the credits to piggyback on the SEND's immediate
    /// (all we owe), or `None` when the message must wait.
    pub fn take_for_data(&mut self, cost: u32) -> Option<u32> {
        if self.available < cost + 1 {
            return None;
        }
        self.available -= cost;
        Some(std::mem::take(&mut self.owed))
    }

    /// When we owe at least half our depth and may post: takes one credit (the reserve
    /// may be used) and returns what a credit-only SEND must carry.
    pub fn take_for_return(&mut self) -> Option<u32> {
        if self.owed < self.own_depth / 2 || self.available == 0 {
            return None;
        }
        self.available -= 1;
        Some(std::mem::take(&mut self.owed))
    }

    /// A receive buffer was consumed and reposted: its credit is owed to the peer.
    pub fn reposted(&mut self) {
        self.owed += 1;
    }

    /// The peer returned `returned` credits (a SEND's immediate).
    pub fn returned(&mut self, returned: u32) -> Result<(), OverCredited> {
        match self.available.checked_add(returned) {
            Some(total) if total <= self.depth => {
                self.available = total;
                Ok(())
            }
            _ => Err(OverCredited {
                returned,
                available: self.available,
                depth: self.depth,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keeps_one_credit_in_reserve() {
        let mut credits = Credits::new(8, 8);
        for _ in 0..7 {
            assert_eq!(credits.take_for_data(1), Some(0));
        }
        assert_eq!(credits.available(), 1);
        assert_eq!(
            credits.take_for_data(1),
            None,
            "the last credit is reserved"
        );
        let mut block = Credits::new(8, 8);
        for _ in 0..3 {
            assert!(block.take_for_data(2).is_some());
        }
        assert_eq!(
            block.take_for_data(2),
            None,
            "2 left: a block needs 2 + reserve"
        );
        assert_eq!(block.take_for_data(1), Some(0));
    }

    #[test]
    fn owed_credits_ride_on_the_next_send() {
        let mut credits = Credits::new(8, 8);
        credits.reposted();
        credits.reposted();
        assert_eq!(credits.take_for_data(1), Some(2));
        assert_eq!(credits.owed(), 0);
        assert_eq!(credits.take_for_data(1), Some(0));
    }

    #[test]
    fn credit_only_return_at_half_depth_even_from_the_reserve() {
        let mut credits = Credits::new(8, 8);
        for _ in 0..7 {
            credits.take_for_data(1);
        }
        for _ in 0..3 {
            credits.reposted();
        }
        assert_eq!(credits.take_for_return(), None, "3 owed is under half of 8");
        credits.reposted();
        assert_eq!(credits.take_for_return(), Some(4));
        assert_eq!(credits.available(), 0);
        assert_eq!(credits.take_for_return(), None);
    }

    #[test]
    fn returns_beyond_the_depth_are_refused() {
        let mut credits = Credits::new(8, 8);
        credits.take_for_data(1);
        credits.take_for_data(1);
        assert_eq!(credits.returned(2), Ok(()));
        assert_eq!(credits.available(), 8);
        assert!(credits.returned(1).is_err());
        assert!(credits.returned(u32::MAX).is_err());
        assert_eq!(credits.available(), 8, "a refused return changes nothing");
    }

    /// Two sides exchanging a burst: every send is eventually possible and the sum of
    /// available, in-flight and owed credits stays the depth (no credit lost or minted).
    #[test]
    fn two_sides_never_deadlock_and_conserve_credits() {
        let depth = 8;
        let (mut a, mut b) = (Credits::new(depth, depth), Credits::new(depth, depth));
        // Messages in flight a -> b carry (credits returned).
        let mut to_b: Vec<u32> = Vec::new();
        let mut to_a: Vec<u32> = Vec::new();
        let mut sent = 0;
        let mut rounds = 0;
        while sent < 1000 {
            rounds += 1;
            assert!(rounds < 100_000, "stuck: a {a:?} b {b:?}");
            // a only sends data; b only returns credits.
            if let Some(ret) = a.take_for_data(1) {
                to_b.push(ret);
                sent += 1;
            }
            for ret in to_b.drain(..) {
                b.returned(ret).unwrap();
                b.reposted();
            }
            if let Some(ret) = b.take_for_return() {
                to_a.push(ret);
            }
            for ret in to_a.drain(..) {
                a.returned(ret).unwrap();
                a.reposted();
            }
            if let Some(ret) = a.take_for_return() {
                to_b.push(ret);
            }
            assert_eq!(a.available() + b.owed() + to_b.len() as u32, depth);
        }
    }
}
