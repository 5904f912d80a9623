//! Property tests of the GES wire encoding: every message round-trips exactly, and random
//! or truncated bytes decode to an error, never a panic.

use ges::{
    Body, LockMode, LockName, LockOwner, LockValue, MAX_EDGES, Message, PendingReport, RequestId,
    WaitEdge,
};
use grd::{GrdMessage, ObjectId};
use interconnect::{Epoch, InstanceId, Timestamp};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = LockName> {
    (any::<u16>(), any::<u64>(), any::<u64>()).prop_map(|(k, a, b)| LockName::new(k, a, b))
}
fn mode() -> impl Strategy<Value = LockMode> {
    (0u8..6).prop_map(|m| LockMode::from_u8(m).expect("valid test input"))
}
fn instance() -> impl Strategy<Value = InstanceId> {
    (0u64..64).prop_map(|i| InstanceId::new(i).expect("valid test input"))
}
fn value() -> impl Strategy<Value = LockValue> {
    (any::<[u8; 32]>(), any::<u64>(), any::<bool>()).prop_map(|(bytes, version, valid)| LockValue {
        bytes,
        version,
        valid,
    })
}
fn time() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp::from_nanos)
}

fn body() -> impl Strategy<Value = Body> {
    let leaf = prop_oneof![
        (name(), any::<u64>(), mode(), time()).prop_map(|(name, r, mode, since)| Body::Lock {
            name,
            request: RequestId(r),
            mode,
            since
        }),
        (
            name(),
            any::<u64>(),
            mode(),
            time(),
            proptest::option::of(value())
        )
            .prop_map(|(name, r, mode, since, value)| Body::Convert {
                name,
                request: RequestId(r),
                mode,
                since,
                value
            }),
        (name(), proptest::option::of(value()))
            .prop_map(|(name, value)| Body::Release { name, value }),
        (name(), any::<u64>()).prop_map(|(name, r)| Body::Cancel {
            name,
            request: RequestId(r)
        }),
        (name(), any::<u64>(), mode(), value()).prop_map(|(name, r, mode, value)| Body::Grant {
            name,
            request: RequestId(r),
            mode,
            value
        }),
        name().prop_map(|name| Body::ReleaseAck { name }),
        (name(), mode()).prop_map(|(name, wanted)| Body::Blocking { name, wanted }),
        (
            name(),
            proptest::option::of(mode()),
            proptest::option::of((any::<u64>(), mode(), any::<bool>(), time())),
            proptest::option::of(value())
        )
            .prop_map(|(name, granted, pending, value)| Body::RebuildReport {
                name,
                granted,
                pending: pending.map(|(r, mode, convert, since)| PendingReport {
                    request: RequestId(r),
                    mode,
                    convert,
                    since
                }),
                value
            }),
        Just(Body::RebuildDone),
        (
            any::<u64>(),
            proptest::collection::vec((name(), instance(), any::<u64>(), time(), instance()), 0..5),
            proptest::collection::vec((name(), any::<u64>()), 0..5)
        )
            .prop_map(|(round, edges, owners)| Body::WaitForEdges {
                round,
                edges: edges
                    .into_iter()
                    .map(|(name, waiter, r, since, blocker)| WaitEdge {
                        name,
                        waiter,
                        request: RequestId(r),
                        since,
                        blocker
                    })
                    .collect(),
                owners: owners
                    .into_iter()
                    .map(|(name, owner)| LockOwner { name, owner })
                    .collect()
            }),
        (
            any::<u64>(),
            any::<u16>(),
            any::<u64>(),
            instance(),
            any::<u64>()
        )
            .prop_map(|(epoch, kind, object, master, version)| Body::Directory(
                GrdMessage::Override {
                    epoch: Epoch(epoch),
                    object: ObjectId { kind, object },
                    master,
                    version
                }
            )),
    ];
    prop_oneof![
        4 => leaf.clone(),
        1 => (instance(), leaf.prop_filter("no nested directory", |b| !matches!(b, Body::Directory(_))))
            .prop_map(|(new_master, bounced)| Body::NotMaster { new_master, bounced: Box::new(bounced) }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn messages_round_trip(epoch in any::<u64>(), body in body()) {
        let message = Message { epoch: Epoch(epoch), body };
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        prop_assert_eq!(Message::decode(&bytes), Ok(message));
        // Every strict prefix is an error, never a panic.
        for cut in 0..bytes.len() {
            prop_assert!(Message::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
        let _ = GrdMessage::decode(&bytes);
    }
}

/// The largest deadlock report (every edge and owner a member may send) fits one frame.
#[test]
fn the_largest_wait_for_report_fits_one_frame() {
    let name = LockName::new(u16::MAX, u64::MAX, u64::MAX);
    let at = InstanceId::new(1).expect("instance 1");
    let message = Message {
        epoch: Epoch(u64::MAX),
        body: Body::WaitForEdges {
            round: u64::MAX,
            edges: vec![
                WaitEdge {
                    name,
                    waiter: at,
                    request: RequestId(u64::MAX),
                    since: Timestamp::from_nanos(u64::MAX),
                    blocker: at,
                };
                MAX_EDGES
            ],
            owners: vec![
                LockOwner {
                    name,
                    owner: u64::MAX
                };
                MAX_EDGES
            ],
        },
    };
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    assert!(
        bytes.len() <= interconnect::MAX_BODY_LEN as usize,
        "{} bytes",
        bytes.len()
    );
    assert_eq!(Message::decode(&bytes), Ok(message));
}
