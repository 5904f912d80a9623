//! Cycle finding in the cluster-wide wait-for graph.
//!
//! This module owns the graph algorithm only: given the edges the masters reported, find one
//! cycle of instances and pick its youngest waiting request as the victim. It must never
//! talk to anyone; the engine's coordinator gathers edges and notifies the victim.
//!
//! Nodes are instances (a GES lock owner is an instance). Edges are gathered from masters at
//! slightly different moments, so a cycle may be one that already resolved; the victim then
//! is usually granted already and ignores the notice, and otherwise fails with `Deadlock`,
//! which callers must handle anyway.

use crate::message::WaitEdge;
use interconnect::MAX_INSTANCES;

/// Finds one cycle and returns its youngest waiting edge (latest `since`; ties by
/// instance and request, so every run picks the same victim).
pub fn find_victim(edges: &[WaitEdge]) -> Option<WaitEdge> {
    let mut adjacency = [0u64; MAX_INSTANCES];
    for e in edges {
        if e.waiter != e.blocker {
            adjacency[e.waiter.index()] |= 1 << e.blocker.index();
        }
    }
    let cycle = find_cycle(&adjacency)?;
    let on_cycle = |e: &&WaitEdge| {
        cycle
            .iter()
            .position(|&n| n == e.waiter.index())
            .is_some_and(|i| cycle[(i + 1) % cycle.len()] == e.blocker.index())
    };
    edges
        .iter()
        .filter(on_cycle)
        .max_by_key(|e| (e.since, e.waiter, e.request))
        .copied()
}

/// A cycle as a list of node indices, each waiting for the next (the last for the first).
fn find_cycle(adjacency: &[u64; MAX_INSTANCES]) -> Option<Vec<usize>> {
    // Iterative DFS with colours: 0 = unseen, 1 = on the stack, 2 = done.
    let mut colour = [0u8; MAX_INSTANCES];
    for start in 0..MAX_INSTANCES {
        if colour[start] != 0 || adjacency[start] == 0 {
            continue;
        }
        let mut stack: Vec<(usize, u64)> = vec![(start, adjacency[start])];
        colour[start] = 1;
        while let Some((node, remaining)) = stack.last_mut() {
            if *remaining == 0 {
                colour[*node] = 2;
                stack.pop();
                continue;
            }
            let next = remaining.trailing_zeros() as usize;
            *remaining &= *remaining - 1;
            match colour[next] {
                1 => {
                    let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                    return Some(stack[from..].iter().map(|(n, _)| *n).collect());
                }
                0 => {
                    colour[next] = 1;
                    stack.push((next, adjacency[next]));
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
    use crate::LockName;
    use crate::message::RequestId;
    use interconnect::{InstanceId, Timestamp};

    fn edge(w: u64, b: u64, since: u64) -> WaitEdge {
        WaitEdge {
            name: LockName::new(1, w, b),
            waiter: InstanceId::new(w).unwrap(),
            request: RequestId(since),
            since: Timestamp::from_nanos(since),
            blocker: InstanceId::new(b).unwrap(),
        }
    }

    #[test]
    fn no_cycle_no_victim() {
        assert_eq!(find_victim(&[edge(0, 1, 5), edge(1, 2, 6)]), None);
    }

    #[test]
    fn youngest_waiter_on_the_cycle_is_the_victim() {
        let edges = [edge(0, 1, 5), edge(1, 2, 9), edge(2, 0, 7), edge(3, 0, 100)];
        assert_eq!(find_victim(&edges), Some(edge(1, 2, 9)));
    }
}
