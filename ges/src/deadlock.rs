//! Cycle finding in the cluster-wide wait-for graph.
//!
//! This module owns the graph algorithm only: given the edges the masters reported and the
//! owners the instances reported, find one cycle and pick its youngest waiting request as the
//! victim. It must never talk to anyone; the engine's coordinator gathers edges and owners
//! and notifies the victim.
//!
//! Nodes are owners: an instance and whom it holds or waits for a lock for
//! ([`LockOptions::owner`](crate::LockOptions), a transaction, say). An edge's waiter is the
//! owner of the waiting request; its blocker, the owner for whom the blocking instance holds
//! (or, queued ahead, waits for) the lock; a lock an instance keeps cached with no user has
//! no owner and blocks no one for long (it goes when asked), so no cycle passes through it.
//! With nodes per instance, two transactions of one instance that do not wait for each other
//! looked like a cycle through it (a victim that was no deadlock). Edges and owners are
//! gathered at slightly different moments, so a cycle may be one that already resolved; the
//! victim then is usually granted already and ignores the notice, and otherwise fails with
//! `Deadlock`, which callers must handle anyway. A cycle through a wait the GES does not see
//! (one between owners inside an instance) is not found here: the waits' timeouts end it.

use crate::message::WaitEdge;
use crate::mode::LockName;
use interconnect::InstanceId;
use std::collections::BTreeMap;

/// A node of the wait-for graph: an instance and an owner there (`None`: no user).
type Node = (InstanceId, Option<u64>);

/// Finds one cycle and returns its youngest waiting edge (latest `since`; ties by
/// instance and request, so every run picks the same victim). `owner_of(instance, name)` is
/// whom `instance` holds or waits for lock `name` for, as it reported (`None`: no user, or
/// not reported).
pub fn find_victim(
    edges: &[WaitEdge],
    owner_of: impl Fn(InstanceId, LockName) -> Option<u64>,
) -> Option<WaitEdge> {
    // Ordered maps: the same edges give the same graph, the same cycle and the same victim.
    let mut index: BTreeMap<Node, usize> = BTreeMap::new();
    let mut owned: Vec<(usize, usize, &WaitEdge)> = Vec::with_capacity(edges.len());
    for e in edges {
        // A waiter whose instance reports no owner for the lock no longer waits for it.
        let Some(waiter) = owner_of(e.waiter, e.name) else {
            continue;
        };
        let from = (e.waiter, Some(waiter));
        let to = (e.blocker, owner_of(e.blocker, e.name));
        if from == to {
            continue;
        }
        let next = index.len();
        let from = *index.entry(from).or_insert(next);
        let next = index.len();
        let to = *index.entry(to).or_insert(next);
        owned.push((from, to, e));
    }
    let mut adjacency: Vec<Vec<usize>> = vec![Vec::new(); index.len()];
    for &(from, to, _) in &owned {
        adjacency[from].push(to);
    }
    for next in &mut adjacency {
        next.sort_unstable();
        next.dedup();
    }
    let cycle = find_cycle(&adjacency)?;
    let on_cycle = |&&(from, to, _): &&(usize, usize, &WaitEdge)| {
        cycle
            .iter()
            .position(|&n| n == from)
            .is_some_and(|i| cycle[(i + 1) % cycle.len()] == to)
    };
    owned
        .iter()
        .filter(on_cycle)
        .map(|&(_, _, e)| *e)
        .max_by_key(|e| (e.since, e.waiter, e.request))
}

/// A cycle as a list of node indices, each waiting for the next (the last for the first).
fn find_cycle(adjacency: &[Vec<usize>]) -> Option<Vec<usize>> {
    // Iterative DFS with colours: 0 = unseen, 1 = on the stack, 2 = done.
    let mut colour = vec![0u8; adjacency.len()];
    for start in 0..adjacency.len() {
        if colour[start] != 0 || adjacency[start].is_empty() {
            continue;
        }
        // (node, index of the next neighbour to visit)
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        colour[start] = 1;
        while let Some((node, at)) = stack.last_mut() {
            let Some(&next) = adjacency[*node].get(*at) else {
                colour[*node] = 2;
                stack.pop();
                continue;
            };
            *at += 1;
            match colour[next] {
                1 => {
                    let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    return Some(stack[from..].iter().map(|(n, _)| *n).collect());
                }
                0 => {
                    colour[next] = 1;
                    stack.push((next, 0));
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::RequestId;
    use interconnect::Timestamp;

    /// Instance `w` waits for lock `lock` held by instance `b`.
    fn edge(w: u64, b: u64, lock: u64, since: u64) -> WaitEdge {
        WaitEdge {
            name: LockName::new(1, lock, 0),
            waiter: InstanceId::new(w).unwrap(),
            request: RequestId(since),
            since: Timestamp::from_nanos(since),
            blocker: InstanceId::new(b).unwrap(),
        }
    }

    /// Every instance holds and waits for every lock for owner 0 (the instance itself).
    fn instance_owned(_: InstanceId, _: LockName) -> Option<u64> {
        Some(0)
    }

    #[test]
    fn no_cycle_no_victim() {
        let edges = [edge(0, 1, 1, 5), edge(1, 2, 2, 6)];
        assert_eq!(find_victim(&edges, instance_owned), None);
    }

    #[test]
    fn youngest_waiter_on_the_cycle_is_the_victim() {
        let edges = [
            edge(0, 1, 1, 5),
            edge(1, 2, 2, 9),
            edge(2, 0, 3, 7),
            edge(3, 0, 4, 100),
        ];
        assert_eq!(find_victim(&edges, instance_owned), Some(edge(1, 2, 2, 9)));
    }

    /// Instance 0's transaction 1 holds lock 10 and waits for lock 20; instance 1's
    /// transaction 2 holds lock 20 and waits for lock 30, held by instance 0's transaction 3,
    /// which waits for nothing: the instances wait for each other, the transactions do not.
    #[test]
    fn transactions_of_one_instance_that_do_not_wait_for_each_other_close_no_cycle() {
        let edges = [edge(1, 0, 10, 3), edge(0, 1, 20, 5), edge(1, 0, 30, 7)];
        let owners: BTreeMap<(u64, u64), u64> = [
            ((0, 10), 1),
            ((0, 20), 1),
            ((1, 20), 2),
            ((1, 30), 2),
            ((0, 30), 3),
        ]
        .into();
        let owner_of = |i: InstanceId, n: LockName| owners.get(&(i.index() as u64, n.a)).copied();
        // Instance 1 waits for lock 10 for transaction 9, which holds nothing else.
        let mut owners_with_10 = owners.clone();
        owners_with_10.insert((1, 10), 9);
        let owner_of_10 =
            |i: InstanceId, n: LockName| owners_with_10.get(&(i.index() as u64, n.a)).copied();
        assert_eq!(find_victim(&edges[1..], owner_of), None);
        assert_eq!(find_victim(&edges, owner_of_10), None);
        // As instances, the same waits are a cycle.
        assert!(find_victim(&edges, instance_owned).is_some());
        // When transaction 3 is transaction 1 (it holds lock 30 too), it is a deadlock.
        let mut real = owners.clone();
        real.insert((0, 30), 1);
        let owner_of_real =
            |i: InstanceId, n: LockName| real.get(&(i.index() as u64, n.a)).copied();
        assert_eq!(
            find_victim(&edges[1..], owner_of_real),
            Some(edge(1, 0, 30, 7))
        );
    }

    #[test]
    fn a_lock_cached_without_a_user_blocks_no_cycle() {
        // Instance 0 waits for lock 1 that instance 1 keeps cached (no owner), and instance 1
        // waits for lock 2 instance 0 holds.
        let edges = [edge(0, 1, 1, 5), edge(1, 0, 2, 6)];
        let owner_of = |i: InstanceId, n: LockName| match (i.index() as u64, n.a) {
            (1, 1) => None,
            _ => Some(0),
        };
        assert_eq!(find_victim(&edges, owner_of), None);
    }
}
