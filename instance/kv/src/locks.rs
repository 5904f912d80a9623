//! The local half of the KV layer's block locks: which transaction of this process holds
//! each lock (by lock id), and who waits for whom.
//!
//! The GES grants an enqueue to an *instance*, and refuses a second request for a name this
//! instance already holds or requests; so at most one transaction per instance may hold or
//! ask for a block's GES lock, and the others wait here first. A wait here ends when the
//! holder finishes, when its deadline passes, or at once when it would close a cycle of local
//! transactions waiting for each other (local deadlock detection); the last two are
//! [`KvError::Retry`](crate::KvError::Retry).
//!
//! This module owns the table; it must never call the instance (the caller takes the GES
//! lock after the local one) and never wait past the deadline it is given.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::time::Instant;

/// Why a local lock was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalLockError {
    /// The deadline passed.
    TimedOut,
    /// Waiting would close a cycle of local transactions.
    Deadlock,
}

#[derive(Debug, Default)]
struct Table {
    /// Lock id -> the transaction holding it.
    holders: HashMap<u64, u64>,
    /// Transaction -> the lock id it waits for.
    waiting: HashMap<u64, u64>,
}

impl Table {
    /// Whether `txn` waiting for `block` would close a cycle.
    fn closes_cycle(&self, txn: u64, block: u64) -> bool {
        let mut block = block;
        // Each step follows a different waiting transaction, so a chain longer than the
        // table is itself a cycle (one not through `txn`): stop there.
        for _ in 0..=self.waiting.len() {
            match self.holders.get(&block) {
                Some(&holder) if holder == txn => return true,
                Some(holder) => match self.waiting.get(holder) {
                    Some(&next) => block = next,
                    None => return false,
                },
                None => return false,
            }
        }
        false
    }
}

/// The local lock table of one [`Kv`](crate::Kv).
#[derive(Debug, Default)]
pub(crate) struct LocalLocks {
    table: Mutex<Table>,
    released: Condvar,
}

impl LocalLocks {
    /// Takes `block`'s local lock for `txn` (granted at once when `txn` holds it).
    pub(crate) fn acquire(
        &self,
        txn: u64,
        block: u64,
        deadline: Instant,
    ) -> Result<(), LocalLockError> {
        let mut table = self.table.lock();
        loop {
            match table.holders.get(&block) {
                None => {
                    table.holders.insert(block, txn);
                    table.waiting.remove(&txn);
                    return Ok(());
                }
                Some(&holder) if holder == txn => {
                    table.waiting.remove(&txn);
                    return Ok(());
                }
                Some(_) => {
                    if table.closes_cycle(txn, block) {
                        table.waiting.remove(&txn);
                        return Err(LocalLockError::Deadlock);
                    }
                    table.waiting.insert(txn, block);
                    if self.released.wait_until(&mut table, deadline).timed_out()
                        && table.holders.get(&block).is_some_and(|&h| h != txn)
                    {
                        table.waiting.remove(&txn);
                        return Err(LocalLockError::TimedOut);
                    }
                }
            }
        }
    }

    /// Releases `txn`'s locks on `blocks`.
    pub(crate) fn release(&self, txn: u64, blocks: &[u64]) {
        if blocks.is_empty() {
            return;
        }
        let mut table = self.table.lock();
        for block in blocks {
            if table.holders.get(block) == Some(&txn) {
                table.holders.remove(block);
            }
        }
        drop(table);
        self.released.notify_all();
    }

    /// Locks held, for tests and stats.
    pub(crate) fn held(&self) -> usize {
        self.table.lock().holders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_second_transaction_waits_until_release() {
        let locks = Arc::new(LocalLocks::default());
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(locks.acquire(1, 7, far), Ok(()));
        assert_eq!(locks.acquire(1, 7, far), Ok(()));
        let other = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || locks.acquire(2, 7, far))
        };
        std::thread::sleep(Duration::from_millis(20));
        locks.release(1, &[7]);
        assert_eq!(other.join().ok(), Some(Ok(())));
        assert_eq!(locks.held(), 1);
    }

    #[test]
    fn a_wait_times_out() {
        let locks = LocalLocks::default();
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(locks.acquire(1, 7, far), Ok(()));
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(locks.acquire(2, 7, soon), Err(LocalLockError::TimedOut));
    }

    #[test]
    fn a_wait_that_closes_a_cycle_is_refused() {
        let locks = Arc::new(LocalLocks::default());
        let far = Instant::now() + Duration::from_secs(30);
        assert_eq!(locks.acquire(1, 10, far), Ok(()));
        assert_eq!(locks.acquire(2, 20, far), Ok(()));
        // 1 waits for 20 (held by 2) ...
        let waiter = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || locks.acquire(1, 20, far))
        };
        // ... until it is recorded as waiting.
        let start = Instant::now();
        while locks.table.lock().waiting.get(&1) != Some(&20) {
            assert!(start.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(1));
        }
        // 2 waiting for 10 would close the cycle.
        assert_eq!(locks.acquire(2, 10, far), Err(LocalLockError::Deadlock));
        locks.release(2, &[20]);
        assert_eq!(waiter.join().ok(), Some(Ok(())));
    }
}
