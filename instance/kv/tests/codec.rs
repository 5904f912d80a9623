//! Property tests of the block codec: every valid block survives encode and decode, a route
//! read from a node's bytes goes where the decoded node points, and any bytes at all decode
//! (and route) to a result or an error, never a panic.

#![allow(clippy::unwrap_used)]

use kv::node::{self, Block, Body, Node, Value};
use proptest::prelude::*;

const PAYLOAD: usize = 8192 - 32;

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..100).prop_map(Value::Inline),
        (any::<u64>(), 1..u64::MAX, 1..u64::MAX).prop_map(|(len, first, last)| Value::Overflow {
            len,
            first,
            last
        }),
    ]
}

/// A valid node: sorted distinct keys strictly inside fences made from the smallest and
/// largest generated keys.
fn tree_node() -> impl Strategy<Value = Node> {
    (
        prop::collection::btree_map(key(), value(), 0..30),
        any::<bool>(),
        any::<bool>(),
        1..8u8,
        any::<bool>(),
        prop::collection::vec(1..u64::MAX, 31),
    )
        .prop_map(|(entries, low_fence, high_fence, level, leaf, children)| {
            let mut entries: Vec<(Vec<u8>, Value)> = entries.into_iter().collect();
            // Fences taken from the ends keep every remaining key inside them.
            let low = if low_fence && !entries.is_empty() {
                entries.remove(0).0
            } else {
                Vec::new()
            };
            // Above the low fence (an empty high key with no low fence would equal it).
            let high = if high_fence && entries.last().is_some_and(|(k, _)| *k > low) {
                entries.pop().map(|(k, _)| k)
            } else {
                None
            };
            if leaf {
                Node {
                    level: 0,
                    low,
                    high,
                    body: Body::Leaf(entries),
                }
            } else {
                // Separators must lie above the low fence.
                let keys: Vec<Vec<u8>> = entries
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|k| *k > low)
                    .collect();
                let children = children[..keys.len() + 1].to_vec();
                Node {
                    level,
                    low,
                    high,
                    body: Body::Internal { keys, children },
                }
            }
        })
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        (1..u64::MAX, 1..u64::MAX).prop_map(|(root, free_list)| Block::Super { root, free_list }),
        (any::<u64>(), any::<u64>()).prop_map(|(head, count)| Block::FreeList { head, count }),
        any::<u64>().prop_map(|next| Block::Free { next }),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..2000))
            .prop_map(|(next, data)| Block::Overflow { next, data }),
        tree_node().prop_map(Block::Node),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(block in block()) {
        let bytes = node::encode(&block, PAYLOAD).unwrap();
        if let Block::Node(n) = &block {
            prop_assert_eq!(bytes.len(), n.encoded_len());
        }
        // Whatever follows the encoding in the payload is ignored.
        let mut payload = bytes.clone();
        payload.resize(PAYLOAD, 0xEE);
        prop_assert_eq!(node::decode(&payload).unwrap(), block);
    }

    #[test]
    fn route_agrees_with_the_decoded_node(node in tree_node(), key in key()) {
        let bytes = node::encode(&Block::Node(node.clone()), PAYLOAD).unwrap();
        let route = node::route(&bytes, &key).unwrap();
        prop_assert_eq!(route.level, node.level);
        prop_assert_eq!(route.covers, node.covers(&key));
        let child = if node.covers(&key) { node.child_for(&key).map(|(_, c)| c) } else { None };
        prop_assert_eq!(route.child, child);
    }

    #[test]
    fn a_leaf_lookup_agrees_with_the_decoded_node(
        node in tree_node(),
        key in key(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut bytes = node::encode(&Block::Node(node), PAYLOAD).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        // Never a panic; refused exactly when a decode refuses, and otherwise what the
        // decoded node holds.
        match (node::decode(&bytes), node::leaf_lookup(&bytes, &key)) {
            (Ok(Block::Node(n)), Ok(found)) => {
                let expected = match &n.body {
                    Body::Leaf(entries) if n.covers(&key) => Some(node::LeafLookup {
                        low: n.low.clone(),
                        high: n.high.clone(),
                        value: entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
                    }),
                    _ => None,
                };
                prop_assert_eq!(found, expected);
            }
            (Ok(other), found) => prop_assert!(found.is_err(), "{:?} looked up as {:?}", other, found),
            (Err(_), found) => prop_assert!(found.is_err(), "refused by decode, looked up as {:?}", found),
        }
    }

    #[test]
    fn a_put_in_place_gives_the_bytes_of_the_decoded_leaf_changed(
        node in tree_node(),
        key in key(),
        value in prop::collection::vec(any::<u8>(), 0..40),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut bytes = node::encode(&Block::Node(node), PAYLOAD).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let put = node::leaf_put_inline(&bytes, &key, &value, PAYLOAD);
        match node::decode(&bytes) {
            Ok(Block::Node(mut n)) => {
                let covers = n.covers(&key);
                let expected = match &mut n.body {
                    Body::Leaf(entries) if covers => {
                        match entries.binary_search_by(|(k, _)| k.as_slice().cmp(&key)) {
                            Ok(i) => match &entries[i].1 {
                                Value::Overflow { .. } => Some(node::LeafPut::Chain),
                                Value::Inline(old) if *old == value => Some(node::LeafPut::Unchanged),
                                Value::Inline(_) => {
                                    entries[i].1 = Value::Inline(value.clone());
                                    None
                                }
                            },
                            Err(i) => {
                                entries.insert(i, (key.clone(), Value::Inline(value.clone())));
                                None
                            }
                        }
                    }
                    _ => Some(node::LeafPut::NotCovering),
                };
                // A put is compared by the leaf its splice makes: Ok(bytes); else Err(what).
                let expected = match expected {
                    Some(other) => Err(other),
                    None => node::encode(&Block::Node(n.clone()), PAYLOAD)
                        .map_err(|_| node::LeafPut::TooLarge),
                };
                let put = match put.unwrap() {
                    node::LeafPut::Put(splice) => Ok(splice.apply(&bytes)),
                    other => Err(other),
                };
                prop_assert_eq!(put, expected);
            }
            Ok(other) => prop_assert!(put.is_err(), "{:?} put as {:?}", other, put),
            Err(_) => prop_assert!(put.is_err(), "refused by decode, put as {:?}", put),
        }
    }

    #[test]
    fn damaged_nodes_route_like_they_decode(
        node in tree_node(),
        key in key(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = node::encode(&Block::Node(node), PAYLOAD).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        // Never a panic; an internal node that decodes also routes (leaf entries are not
        // read by a route, so a damaged leaf may route and not decode).
        let route = node::route(&bytes, &key);
        if let Ok(Block::Node(n)) = node::decode(&bytes) {
            prop_assert!(route.is_ok());
            if n.level > 0 && n.covers(&key) {
                prop_assert_eq!(route.unwrap().child, n.child_for(&key).map(|(_, c)| c));
            }
        }
    }

    #[test]
    fn random_bytes_decode_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = node::decode(&bytes);
    }

    #[test]
    fn damaged_blocks_decode_without_panic(
        block in block(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = node::encode(&block, PAYLOAD).unwrap();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        // Damaged contents, and a truncated copy.
        let _ = node::decode(&bytes);
        let end = cut.index(bytes.len() + 1);
        let _ = node::decode(&bytes[..end]);
    }

    /// A decoded node always satisfies the invariants the tree relies on.
    #[test]
    fn decoded_nodes_keep_keys_ordered_within_fences(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut framed = vec![0xA3, 0, (bytes.len() % 5) as u8, 0, 0, 0, 0, 0];
        framed.extend(bytes);
        if let Ok(Block::Node(n)) = node::decode(&framed)
            && let Body::Leaf(entries) = &n.body
        {
            prop_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert!(entries.iter().all(|(k, _)| n.covers(k)));
        }
    }
}

#[test]
fn a_node_too_large_for_the_payload_is_refused() {
    let node = Node {
        level: 0,
        low: Vec::new(),
        high: None,
        body: Body::Leaf(vec![(b"k".to_vec(), Value::Inline(vec![0; PAYLOAD]))]),
    };
    assert!(node::encode(&Block::Node(node), PAYLOAD).is_err());
}
