//! A peer that sends arbitrary, protocol-violating messages must never make the engine panic:
//! every message is refused with an error or absorbed, and the engine stays usable; what a
//! peer announced as durable is bounded and forgotten when the peer leaves.

use gcs::{
    BlockId, BlockMode, CommitDependency, Engine, GcsBody, GcsConfig, GcsMessage, GrantKind,
    MasterDirectory, ReportEntry,
};
use interconnect::sim::SimRng;
use interconnect::{Epoch, InstanceId, InstanceSet, Scn, Timestamp};

#[derive(Debug, Clone)]
struct ByBlock;

impl MasterDirectory for ByBlock {
    fn master_of(&self, block: BlockId) -> InstanceId {
        InstanceId::new(u64::from(block.block % 3)).expect("small id")
    }
}

fn id(i: u64) -> InstanceId {
    InstanceId::new(i).expect("small id")
}

fn random_body(rng: &mut SimRng) -> GcsBody {
    let block = BlockId::new(1, rng.below(4) as u32);
    let mode = if rng.chance(1, 2) {
        BlockMode::Shared
    } else {
        BlockMode::Exclusive
    };
    let request = rng.below(4);
    let scn = Scn(rng.below(20));
    let object = BlockId::new(1, 0);
    let version = rng.below(3);
    match rng.below(26) {
        0 => GcsBody::Acquire {
            block,
            request,
            mode,
            landing: 1,
        },
        1 => GcsBody::Forward {
            block,
            requester: id(rng.below(3)),
            request,
            mode,
            landing: 1,
        },
        2 => GcsBody::ShipBlock {
            block,
            request,
            mode,
            landing: 1,
            scn,
            dirty: rng.chance(1, 2),
            commit_dependency: rng.chance(1, 2).then(|| CommitDependency {
                instance: id(rng.below(3)),
                scn,
            }),
        },
        3 => GcsBody::Grant {
            block,
            request,
            mode,
            grant: [
                GrantKind::ReadStorage,
                GrantKind::Upgrade,
                GrantKind::AlreadyHeld,
            ][rng.below(3) as usize],
        },
        4 => GcsBody::Ack {
            block,
            request,
            scn,
            dirty: rng.chance(1, 2),
        },
        5 => GcsBody::Invalidate { block },
        6 => GcsBody::InvalidateAck { block },
        7 => GcsBody::Release { block },
        8 => GcsBody::ReleaseAck { block },
        9 => GcsBody::PiFlush { block, pi_scn: scn },
        10 => GcsBody::WriteRequest { block },
        11 => GcsBody::Written {
            block,
            scn,
            clean: rng.chance(1, 2),
        },
        12 => GcsBody::DiscardPi { block, upto: scn },
        13 => GcsBody::Retry { block, request },
        14 => GcsBody::Durable,
        15 => GcsBody::Report {
            entries: vec![ReportEntry {
                block,
                mode,
                scn,
                dirty: rng.chance(1, 2),
                pi: rng.chance(1, 2).then_some(scn),
            }],
            last: rng.chance(1, 2),
        },
        16 => GcsBody::AdoptDirty { block },
        17 => GcsBody::Reclaim { block },
        18 => GcsBody::Transfer {
            object,
            version,
            last: rng.chance(1, 2),
            count: rng.below(3) as u16,
            state: (0..rng.below(80)).map(|_| rng.below(256) as u8).collect(),
        },
        19 => GcsBody::TransferAck { object, version },
        20 => GcsBody::Override {
            object,
            master: id(rng.below(3)),
            version,
        },
        21 => GcsBody::OverrideSeen { object, version },
        22 => GcsBody::Redirected {
            origin: id(rng.below(3)),
            body: Box::new(GcsBody::Acquire {
                block,
                request,
                mode,
                landing: 1,
            }),
        },
        23 => GcsBody::Recover { block },
        24 => GcsBody::Recovered { block, scn },
        _ => GcsBody::Drained {
            object,
            version,
            origin: id(rng.below(3)),
        },
    }
}

#[test]
fn random_peer_messages_never_panic_the_engine() {
    let live: InstanceSet = (0..3).map(id).collect();
    let mut refused = 0;
    for seed in 0..300 {
        let mut rng = SimRng::new(seed);
        let mut engine =
            Engine::new(id(0), Epoch(1), live, ByBlock, GcsConfig::default()).expect("engine");
        let mut now = Timestamp::ZERO;
        for step in 0..200u64 {
            now = now + std::time::Duration::from_micros(10);
            // Mix in local activity so the engine has state for the peer to contradict.
            match rng.below(6) {
                0 => {
                    let block = BlockId::new(1, rng.below(4) as u32);
                    let _ = engine.request(block, BlockMode::Exclusive, step, now);
                }
                1 => {
                    let block = BlockId::new(1, rng.below(4) as u32);
                    let scn = engine.tick_scn();
                    let _ = engine.mark_dirty(block, scn, now);
                    let _ = engine.unpin(block, now);
                }
                2 => {
                    // A move of our own for the peer to answer falsely.
                    let _ = engine.remaster(BlockId::new(1, 0), id(1 + rng.below(2)), now);
                }
                _ => {}
            }
            let msg = GcsMessage {
                epoch: Epoch(1),
                scn: Scn(rng.below(30)),
                durable: Scn(rng.below(30)),
                body: random_body(&mut rng),
            };
            let _ = engine.handle_message(id(1 + rng.below(2)), msg, now);
            while engine.poll_transmit().is_some() {}
            while let Some(io) = engine.poll_io() {
                match io {
                    gcs::Io::ForceRedo { upto } => engine.on_redo_durable(upto, now),
                    gcs::Io::WriteBlock { block, scn } => {
                        let _ = engine.on_block_written(block, scn, now);
                    }
                    gcs::Io::ReadBlock { block, .. } => {
                        let _ = engine.on_block_read(block, Scn(0), now);
                    }
                }
            }
            while engine.poll_event().is_some() {}
            engine.handle_timeout(now);
        }
        refused += engine.metrics().protocol_errors;
        let block = BlockId::new(1, 0);
        let _ = engine.evict(block, now);
        let _ = engine.write_back(block, now);
    }
    assert!(
        refused > 1000,
        "the hostile peer was noticed ({refused} refusals)"
    );
}

#[test]
fn extreme_scns_are_refused_and_leave_the_clock_and_dependencies_alone() {
    let live: InstanceSet = (0..3).map(id).collect();
    let mut engine =
        Engine::new(id(0), Epoch(1), live, ByBlock, GcsConfig::default()).expect("engine");
    let now = Timestamp::ZERO;
    let honest = GcsMessage {
        epoch: Epoch(1),
        scn: Scn(100),
        durable: Scn(50),
        body: GcsBody::Durable,
    };
    engine.handle_message(id(1), honest, now).expect("honest");
    assert_eq!(engine.current_scn(), Scn(100));
    for (scn, durable) in [
        (Scn(u64::MAX), Scn(0)),
        (Scn(interconnect::SCN_LIMIT.0 + 1), Scn(0)),
        (Scn(100 + interconnect::DEFAULT_SCN_HORIZON + 1), Scn(0)),
        (Scn(100), Scn(u64::MAX)),
    ] {
        let forged = GcsMessage {
            epoch: Epoch(1),
            scn,
            durable,
            body: GcsBody::Durable,
        };
        assert!(
            matches!(
                engine.handle_message(id(1), forged, now),
                Err(gcs::GcsError::Scn(_))
            ),
            "scn {scn}, durable {durable}"
        );
    }
    assert_eq!(engine.current_scn(), Scn(100), "the clock did not move");
    // A commit dependency on instance 1 above what it really made durable stays unresolved.
    let dependency = CommitDependency {
        instance: id(1),
        scn: Scn(80),
    };
    assert!(!engine.is_durable(dependency));
    assert_eq!(
        engine.tick_scn(),
        Scn(101),
        "ticks go on from the honest clock"
    );
}

#[test]
fn a_durable_announcement_does_not_outlive_the_members_life() {
    let live: InstanceSet = (0..3).map(id).collect();
    let mut engine =
        Engine::new(id(0), Epoch(1), live, ByBlock, GcsConfig::default()).expect("engine");
    let now = Timestamp::ZERO;
    let durable = |epoch, durable| GcsMessage {
        epoch: Epoch(epoch),
        scn: Scn(60),
        durable: Scn(durable),
        body: GcsBody::Durable,
    };
    engine
        .handle_message(id(1), durable(1, 50), now)
        .expect("1");
    engine
        .handle_message(id(2), durable(1, 30), now)
        .expect("2");
    let on_1 = CommitDependency {
        instance: id(1),
        scn: Scn(4),
    };
    let on_2 = CommitDependency {
        instance: id(2),
        scn: Scn(30),
    };
    assert!(engine.is_durable(on_1) && engine.is_durable(on_2));
    // Instance 1 dies, restarts with a new redo stream and is admitted again: its new
    // changes take low SCNs, and its old life's announcement must not cover them.
    let without_1: InstanceSet = [id(0), id(2)].into_iter().collect();
    engine
        .on_reconfigure(Epoch(2), without_1, ByBlock, now)
        .expect("epoch 2");
    assert!(
        !engine.is_durable(on_1),
        "a lost member's announcement is forgotten"
    );
    engine
        .on_reconfigure(Epoch(3), live, ByBlock, now)
        .expect("epoch 3");
    assert!(
        !engine.is_durable(on_1),
        "a readmitted member starts from nothing"
    );
    assert!(
        engine.is_durable(on_2),
        "a member that stayed keeps its announcement"
    );
    engine
        .handle_message(id(1), durable(3, 3), now)
        .expect("1 again");
    assert!(!engine.is_durable(on_1));
    engine
        .handle_message(id(1), durable(3, 4), now)
        .expect("1 again");
    assert!(
        engine.is_durable(on_1),
        "its new life's announcement counts"
    );
}

#[test]
fn a_driver_membership_without_this_instance_or_an_old_epoch_is_an_error() {
    let members: InstanceSet = (0..3).map(id).collect();
    let others: InstanceSet = (1..3).map(id).collect();
    let refused = Engine::new(id(0), Epoch(1), others, ByBlock, GcsConfig::default());
    assert!(matches!(refused, Err(gcs::GcsError::NotAMember(me)) if me == id(0)));
    let mut engine =
        Engine::new(id(0), Epoch(5), members, ByBlock, GcsConfig::default()).expect("engine");
    let now = Timestamp::ZERO;
    for epoch in [Epoch(0), Epoch(4), Epoch(5)] {
        assert_eq!(
            engine.on_reconfigure(epoch, members, ByBlock, now),
            Err(gcs::GcsError::EpochNotNewer {
                current: Epoch(5),
                proposed: epoch
            })
        );
    }
    assert_eq!(
        engine.on_reconfigure(Epoch(6), others, ByBlock, now),
        Err(gcs::GcsError::NotAMember(id(0)))
    );
    assert_eq!(
        engine.epoch(),
        Epoch(5),
        "a refused reconfiguration changes nothing"
    );
    assert!(engine.poll_transmit().is_none());
    assert_eq!(
        engine.on_reconfigure(Epoch(6), members, ByBlock, now),
        Ok(())
    );
    assert_eq!(engine.epoch(), Epoch(6));
    assert!(engine.is_reconfiguring());
}
