//! A member that holds the secret but sends crafted directory messages: unrequested
//! transfers (with `last` set, to become master of anything), resources listed twice or
//! already present, floods past the table's bound, overrides from the wrong sender, for
//! instances outside the epoch or with old versions, extreme versions and foreign epochs.
//! The directory never panics, never lets such a message make it master or move what it
//! masters, keeps its own entries, stays within its ceiling, and an honest remaster still
//! completes afterwards.

use grd::codec::{self, DecodeError, Reader};
use grd::{
    Directory, DirectoryConfig, DirectoryEvent, GrdMessage, MasterState, ObjectId, ResourceId,
};
use interconnect::{Epoch, InstanceId, InstanceSet, Timestamp};

/// A minimal master state: a holder bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holders(u64);

impl MasterState for Holders {
    fn holders(&self) -> InstanceSet {
        InstanceSet::from_bits(self.0)
    }
    fn is_reclaimable(&self) -> bool {
        true
    }
    fn is_empty(&self) -> bool {
        self.0 == 0
    }
    fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, self.0);
    }
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Holders(reader.u64()?))
    }
}

fn id(raw: u64) -> InstanceId {
    InstanceId::new(raw).expect("small id")
}

fn directories(max_resources: usize) -> Vec<Directory<Holders>> {
    let members: InstanceSet = (0..3).map(id).collect();
    let config = DirectoryConfig {
        max_resources,
        transfer_chunk_bytes: 256,
        ..DirectoryConfig::default()
    };
    (0..3)
        .map(|i| Directory::new(id(i), Epoch(1), members, config, Timestamp::ZERO).expect("dir"))
        .collect()
}

/// Delivers every queued message until none is left.
fn pump(dirs: &mut [Directory<Holders>]) {
    loop {
        let mut moved = false;
        for index in 0..dirs.len() {
            while let Some((to, message)) = dirs[index].poll_transmit() {
                let from = dirs[index].me();
                dirs[to.index()].handle_message(from, message, Timestamp::ZERO);
                moved = true;
            }
        }
        if !moved {
            return;
        }
    }
}

/// A transfer chunk of `entries` (resource item, holders) of `object`.
fn transfer(object: ObjectId, version: u64, last: bool, entries: &[(u64, u64)]) -> GrdMessage {
    let mut payload = Vec::new();
    for &(item, holders) in entries {
        codec::put_resource(
            &mut payload,
            &ResourceId::new(object.kind, object.object, item),
        );
        Holders(holders).encode(&mut payload);
    }
    GrdMessage::Transfer {
        epoch: Epoch(1),
        object,
        version,
        last,
        count: entries.len() as u32,
        payload,
    }
}

/// An object whose master (by hash) is `master`.
fn object_mastered_by(dir: &Directory<Holders>, master: InstanceId) -> ObjectId {
    (0..)
        .map(|object| ObjectId { kind: 3, object })
        .find(|&o| dir.map().master_of_object(o) == master)
        .expect("some object hashes to every member")
}

#[test]
fn an_unrequested_transfer_never_makes_an_instance_master() {
    let mut dirs = directories(1000);
    // Instance 2 (hostile) claims to hand instance 0 an object that instance 1 masters.
    let object = object_mastered_by(&dirs[0], id(1));
    for version in [1, 2, u64::MAX] {
        let message = transfer(object, version, true, &[(1, 0b10)]);
        dirs[0].handle_message(id(2), message, Timestamp::ZERO);
    }
    assert_eq!(dirs[0].map().master_of_object(object), id(1));
    assert_eq!(dirs[0].table().len(), 0, "nothing imported");
    assert_eq!(dirs[0].stats().transfers_refused, 3);
    let refusals: Vec<_> = std::iter::from_fn(|| dirs[0].poll_transmit()).collect();
    assert!(
        refusals
            .iter()
            .all(|(to, m)| *to == id(2) && matches!(m, GrdMessage::TransferRefused { .. })),
        "{refusals:?}"
    );
    // A transfer of an object this instance already masters is refused the same way.
    let mine = object_mastered_by(&dirs[0], id(0));
    dirs[0].handle_message(id(2), transfer(mine, 1, true, &[(1, 1)]), Timestamp::ZERO);
    assert_eq!(dirs[0].map().master_of_object(mine), id(0));
    // A refusal the sender did not ask for changes nothing there.
    let stray = GrdMessage::TransferRefused {
        epoch: Epoch(1),
        object,
        version: 1,
    };
    dirs[1].handle_message(id(0), stray, Timestamp::ZERO);
    assert_eq!(dirs[1].map().master_of_object(object), id(1));
}

#[test]
fn duplicates_and_floods_keep_the_first_entry_and_the_ceiling() {
    let mut dirs = directories(8);
    let object = object_mastered_by(&dirs[0], id(1));
    // The real master (1) moves the object, but lists resources twice and floods.
    let mut entries: Vec<(u64, u64)> = vec![(1, 0b10), (1, 0b100), (2, 0b10)];
    entries.extend((10..100).map(|item| (item, 0b10)));
    dirs[0].handle_message(id(1), transfer(object, 1, false, &entries), Timestamp::ZERO);
    let entry = dirs[0]
        .table()
        .get(&ResourceId::new(object.kind, object.object, 1))
        .cloned();
    assert_eq!(entry, Some(Holders(0b10)), "the first listing stays");
    assert_eq!(dirs[0].table().len(), dirs[0].table().ceiling());
    assert!(dirs[0].stats().dropped > 0);
    dirs[0].handle_message(id(1), transfer(object, 1, true, &[]), Timestamp::ZERO);
    assert_eq!(dirs[0].map().master_of_object(object), id(0));
}

#[test]
fn a_refused_move_returns_the_state_to_the_old_master() {
    let mut dirs = directories(1000);
    let object = object_mastered_by(&dirs[0], id(0));
    for item in 0..40 {
        dirs[0]
            .table_mut()
            .insert_over_bound(
                ResourceId::new(object.kind, object.object, item),
                Holders(1),
            )
            .expect("room");
    }
    // Instance 1 learns (falsely: the master itself, buggy, announces it) that 2 masters the
    // object, so 0's honest move to 1 is not one 1 can expect: refused, and 0 keeps
    // everything.
    let lie = GrdMessage::Override {
        epoch: Epoch(1),
        object,
        master: id(2),
        version: 5,
    };
    dirs[1].handle_message(id(0), lie, Timestamp::ZERO);
    dirs[0].start_remaster(object, id(1)).expect("remaster");
    pump(&mut dirs);
    assert_eq!(dirs[0].table().len(), 40, "the state came back");
    assert!(!dirs[0].is_frozen(&ResourceId::new(object.kind, object.object, 0)));
    assert_eq!(dirs[1].table().len(), 0, "the partial import was dropped");
    let unfrozen = std::iter::from_fn(|| dirs[0].poll_event())
        .any(|e| matches!(e, DirectoryEvent::Unfrozen { master, .. } if master == id(0)));
    assert!(unfrozen);
    // No one but instance 1's idea of the master (2) can correct it, and 2 does not: the move
    // stays refused, and 0 keeps serving the object. A new epoch clears the lie.
    let members: InstanceSet = (0..3).map(id).collect();
    for dir in dirs.iter_mut() {
        dir.on_new_epoch(Epoch(2), members).expect("epoch");
    }
    dirs[0]
        .start_remaster(object, id(1))
        .expect("remaster again");
    pump(&mut dirs);
    assert_eq!(dirs[1].table().len(), 40);
    assert_eq!(dirs[1].map().master_of_object(object), id(1));
    assert_eq!(dirs[0].map().master_of_object(object), id(1));
}

#[test]
fn overrides_only_as_the_protocol_sends_them() {
    let mut dirs = directories(1000);
    let theirs = object_mastered_by(&dirs[0], id(1));
    let mine = object_mastered_by(&dirs[0], id(0));
    let outsider = id(9);
    let lie = |object, master, version| GrdMessage::Override {
        epoch: Epoch(1),
        object,
        master,
        version,
    };
    // Each refused: from a member that does not master the object; naming an instance
    // outside the epoch; naming this instance; moving an object this instance masters;
    // naming the sender itself.
    let refused = [
        (id(2), lie(theirs, id(2), 1)),
        (id(1), lie(theirs, outsider, 1)),
        (id(1), lie(theirs, id(0), 1)),
        (id(2), lie(mine, id(2), 1)),
        (id(1), lie(mine, id(1), 1)),
        (id(1), lie(theirs, id(1), 1)),
    ];
    for (from, message) in refused.iter().cloned() {
        dirs[0].handle_message(from, message, Timestamp::ZERO);
    }
    assert_eq!(dirs[0].stats().overrides_refused, refused.len() as u64);
    assert_eq!(dirs[0].map().master_of_object(theirs), id(1));
    assert_eq!(dirs[0].map().master_of_object(mine), id(0));
    assert_eq!(dirs[0].map().override_count(), 0);
    // The master's own announcement is installed; an older or equal one after it is not.
    dirs[0].handle_message(id(1), lie(theirs, id(2), 5), Timestamp::ZERO);
    assert_eq!(dirs[0].map().master_of_object(theirs), id(2));
    dirs[0].handle_message(id(2), lie(theirs, id(1), 5), Timestamp::ZERO);
    dirs[0].handle_message(id(2), lie(theirs, id(1), 4), Timestamp::ZERO);
    assert_eq!(dirs[0].map().master_of_object(theirs), id(2));
    assert_eq!(dirs[0].stats().overrides_refused, refused.len() as u64 + 2);
    // The new master may move it on.
    dirs[0].handle_message(id(2), lie(theirs, id(1), 6), Timestamp::ZERO);
    assert_eq!(dirs[0].map().master_of_object(theirs), id(1));
}

#[test]
fn a_flood_of_overrides_stops_at_the_bound() {
    let mut dirs = directories(1000);
    // Every object instance 1 masters, announced moved to 2: a table that would grow
    // without end.
    let mut installed = 0;
    let mut object = 0u64;
    while installed < grd::MAX_OVERRIDES + 100 {
        let o = ObjectId { kind: 9, object };
        object += 1;
        if dirs[0].map().master_of_object(o) != id(1) {
            continue;
        }
        let message = GrdMessage::Override {
            epoch: Epoch(1),
            object: o,
            master: id(2),
            version: 1,
        };
        dirs[0].handle_message(id(1), message, Timestamp::ZERO);
        installed += 1;
    }
    assert_eq!(dirs[0].map().override_count(), grd::MAX_OVERRIDES);
    assert_eq!(dirs[0].stats().overrides_refused, 100);
}

#[test]
fn extreme_versions_and_foreign_epochs_are_harmless() {
    let mut dirs = directories(1000);
    let object = object_mastered_by(&dirs[0], id(1));
    // Its master moves it here at the last version: this instance can no longer move the
    // object, which is an error, not an overflow.
    dirs[0].handle_message(
        id(1),
        transfer(object, u64::MAX, true, &[]),
        Timestamp::ZERO,
    );
    assert_eq!(dirs[0].map().master_of_object(object), id(0));
    assert!(matches!(
        dirs[0].start_remaster(object, id(1)),
        Err(grd::GrdError::VersionsExhausted(_))
    ));
    for epoch in [Epoch(0), Epoch(2), Epoch(u64::MAX)] {
        let message = GrdMessage::TransferAck {
            epoch,
            object,
            version: 1,
        };
        dirs[0].handle_message(id(1), message, Timestamp::ZERO);
    }
    assert_eq!(dirs[0].stats().dropped, 3);
}
