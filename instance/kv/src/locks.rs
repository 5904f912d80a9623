//! The local half of the KV layer's block locks: which transaction of this process holds
//! each lock (by lock id), who waits for it in what order, and who waits for whom.
//!
//! The GES grants an enqueue to an *instance*, and refuses a second request for a name this
//! instance already holds or requests; so at most one transaction per instance may hold or
//! ask for a block's GES lock, and the others wait here first. Waiters queue in arrival
//! order and a release hands the lock straight to the first of them, waking that one thread
//! only (waking every waiter on each release cost more CPU than the locking itself with 50
//! clients on two cores). A wait ends with the grant, when its deadline passes, or when it
//! is chosen as a deadlock victim: a wait that would close a cycle of local transactions
//! (local deadlock detection) makes the *youngest* transaction of the cycle the victim,
//! which may be the asker or a transaction already waiting. Age is a priority the caller
//! keeps across reruns of one transaction, so the oldest transaction of the instance is
//! never a local victim and always progresses (no livelock of reruns). The last two endings
//! are [`KvError::Retry`](crate::KvError::Retry).
//!
//! This module owns the table; it must never call the instance (the caller takes the GES
//! lock after the local one) and never wait past the deadline it is given.

use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// Why a local lock was not granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalLockError {
    /// The deadline passed.
    TimedOut,
    /// Chosen as the victim of a cycle of local transactions.
    Deadlock,
}

/// One lock: its holder and the transactions queued for it, first come first served.
#[derive(Debug)]
struct Lock {
    holder: u64,
    queue: VecDeque<u64>,
}

/// A transaction waiting for a lock.
#[derive(Debug)]
struct Waiter {
    lock: u64,
    /// Lower is older; the youngest of a cycle is its victim.
    priority: u64,
    /// Set when a deadlock chose it: it leaves the queue and fails.
    victim: bool,
    wake: Arc<Condvar>,
}

#[derive(Debug, Default)]
struct Table {
    locks: HashMap<u64, Lock>,
    /// Transaction -> what it waits for.
    waiting: HashMap<u64, Waiter>,
}

impl Table {
    /// The transactions of the cycle that `txn` waiting for `lock` would close (`txn`
    /// first), or `None` when it closes none.
    fn cycle(&self, txn: u64, lock: u64) -> Option<Vec<u64>> {
        let mut members = vec![txn];
        let mut lock = lock;
        // Each step follows a different waiting transaction, so a chain longer than the
        // table is itself a cycle (one not through `txn`): stop there.
        for _ in 0..=self.waiting.len() {
            let holder = self.locks.get(&lock)?.holder;
            if holder == txn {
                return Some(members);
            }
            members.push(holder);
            lock = self.waiting.get(&holder)?.lock;
        }
        None
    }

    /// Hands `lock` to the first transaction queued for it, or frees it.
    fn hand_over(&mut self, lock: u64) {
        let Some(entry) = self.locks.get_mut(&lock) else {
            return;
        };
        match entry.queue.pop_front() {
            Some(next) => {
                entry.holder = next;
                if let Some(waiter) = self.waiting.remove(&next) {
                    waiter.wake.notify_one();
                }
            }
            None => {
                self.locks.remove(&lock);
            }
        }
    }

    /// Takes `txn` out of `lock`'s queue.
    fn leave_queue(&mut self, txn: u64, lock: u64) {
        if let Some(entry) = self.locks.get_mut(&lock) {
            entry.queue.retain(|&t| t != txn);
        }
        self.waiting.remove(&txn);
    }
}

/// The local lock table of one [`Kv`](crate::Kv).
#[derive(Debug, Default)]
pub(crate) struct LocalLocks {
    table: Mutex<Table>,
}

impl LocalLocks {
    /// Takes `lock` for `txn` (granted at once when `txn` holds it). `priority` is the
    /// transaction's age (lower: older), kept across its reruns.
    pub(crate) fn acquire(
        &self,
        txn: u64,
        priority: u64,
        lock: u64,
        deadline: Instant,
    ) -> Result<(), LocalLockError> {
        let mut table = self.table.lock();
        match table.locks.get_mut(&lock) {
            None => {
                table.locks.insert(
                    lock,
                    Lock {
                        holder: txn,
                        queue: VecDeque::new(),
                    },
                );
                return Ok(());
            }
            Some(entry) if entry.holder == txn => return Ok(()),
            Some(_) => {}
        }
        if let Some(members) = table.cycle(txn, lock) {
            // The youngest member is the victim; `txn` is not waiting yet, so it is judged
            // by the priority it asks with.
            let victim = members
                .iter()
                .copied()
                .max_by_key(|&m| {
                    let p = if m == txn {
                        priority
                    } else {
                        table.waiting.get(&m).map_or(0, |w| w.priority)
                    };
                    (p, m)
                })
                .unwrap_or(txn);
            if victim == txn {
                return Err(LocalLockError::Deadlock);
            }
            if let Some(w) = table.waiting.get_mut(&victim) {
                w.victim = true;
                w.wake.notify_one();
            }
        }
        let wake = Arc::new(Condvar::new());
        table.waiting.insert(
            txn,
            Waiter {
                lock,
                priority,
                victim: false,
                wake: Arc::clone(&wake),
            },
        );
        if let Some(entry) = table.locks.get_mut(&lock) {
            entry.queue.push_back(txn);
        }
        loop {
            match table.waiting.get(&txn) {
                // Handed over: `hand_over` made `txn` the holder and removed its record.
                None => return Ok(()),
                Some(w) if w.victim => {
                    table.leave_queue(txn, lock);
                    return Err(LocalLockError::Deadlock);
                }
                Some(_) => {}
            }
            if wake.wait_until(&mut table, deadline).timed_out() && table.waiting.contains_key(&txn)
            {
                table.leave_queue(txn, lock);
                return Err(LocalLockError::TimedOut);
            }
        }
    }

    /// Releases `txn`'s locks on `locks`, handing each to its next waiter.
    pub(crate) fn release(&self, txn: u64, locks: &[u64]) {
        if locks.is_empty() {
            return;
        }
        let mut table = self.table.lock();
        for &lock in locks {
            if table.locks.get(&lock).is_some_and(|e| e.holder == txn) {
                table.hand_over(lock);
            }
        }
    }

    /// Locks held, for tests and stats.
    pub(crate) fn held(&self) -> usize {
        self.table.lock().locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    /// Waits until `txn` is recorded as waiting for `lock`.
    fn until_waiting(locks: &LocalLocks, txn: u64, lock: u64) {
        let start = Instant::now();
        while locks.table.lock().waiting.get(&txn).map(|w| w.lock) != Some(lock) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{txn} never waited"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_second_transaction_waits_until_release() {
        let locks = Arc::new(LocalLocks::default());
        assert_eq!(locks.acquire(1, 1, 7, far()), Ok(()));
        assert_eq!(locks.acquire(1, 1, 7, far()), Ok(()));
        let other = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || locks.acquire(2, 2, 7, far()))
        };
        until_waiting(&locks, 2, 7);
        locks.release(1, &[7]);
        assert_eq!(other.join().ok(), Some(Ok(())));
        assert_eq!(locks.held(), 1);
        locks.release(2, &[7]);
        assert_eq!(locks.held(), 0);
    }

    #[test]
    fn waiters_are_served_in_arrival_order() {
        let locks = Arc::new(LocalLocks::default());
        assert_eq!(locks.acquire(1, 1, 7, far()), Ok(()));
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for txn in 2..6 {
            let (mine, order) = (Arc::clone(&locks), Arc::clone(&order));
            threads.push(std::thread::spawn(move || {
                let granted = mine.acquire(txn, txn, 7, far());
                order.lock().push(txn);
                mine.release(txn, &[7]);
                granted
            }));
            until_waiting(&locks, txn, 7);
        }
        locks.release(1, &[7]);
        for t in threads {
            assert_eq!(t.join().ok(), Some(Ok(())));
        }
        assert_eq!(*order.lock(), vec![2, 3, 4, 5]);
        assert_eq!(locks.held(), 0);
    }

    #[test]
    fn a_wait_times_out() {
        let locks = LocalLocks::default();
        assert_eq!(locks.acquire(1, 1, 7, far()), Ok(()));
        let soon = Instant::now() + Duration::from_millis(10);
        assert_eq!(locks.acquire(2, 2, 7, soon), Err(LocalLockError::TimedOut));
        // The timed-out waiter left the queue: the release frees the lock.
        locks.release(1, &[7]);
        assert_eq!(locks.held(), 0);
    }

    #[test]
    fn a_younger_asker_that_closes_a_cycle_is_the_victim() {
        let locks = Arc::new(LocalLocks::default());
        assert_eq!(locks.acquire(1, 1, 10, far()), Ok(()));
        assert_eq!(locks.acquire(2, 2, 20, far()), Ok(()));
        // 1 (older) waits for 20 (held by 2) ...
        let waiter = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || locks.acquire(1, 1, 20, far()))
        };
        until_waiting(&locks, 1, 20);
        // ... so 2 (younger) waiting for 10 would close the cycle: 2 is refused.
        assert_eq!(
            locks.acquire(2, 2, 10, far()),
            Err(LocalLockError::Deadlock)
        );
        locks.release(2, &[20]);
        assert_eq!(waiter.join().ok(), Some(Ok(())));
    }

    #[test]
    fn an_older_asker_that_closes_a_cycle_makes_the_younger_waiter_the_victim() {
        let locks = Arc::new(LocalLocks::default());
        assert_eq!(locks.acquire(1, 1, 10, far()), Ok(()));
        assert_eq!(locks.acquire(2, 2, 20, far()), Ok(()));
        // 2 (younger) waits for 10 (held by 1) ...
        let younger = {
            let locks = Arc::clone(&locks);
            std::thread::spawn(move || {
                let result = locks.acquire(2, 2, 10, far());
                // A victim rolls back: its locks go.
                locks.release(2, &[20]);
                result
            })
        };
        until_waiting(&locks, 2, 10);
        // ... and 1 (older) asks for 20: 2 is chosen, fails, and 1 gets 20.
        assert_eq!(locks.acquire(1, 1, 20, far()), Ok(()));
        assert_eq!(younger.join().ok(), Some(Err(LocalLockError::Deadlock)));
        locks.release(1, &[10, 20]);
        assert_eq!(locks.held(), 0);
    }
}
