//! GES wire messages and their validated binary encoding.
//!
//! This module owns the message types and their byte layout (little-endian, a tag byte per
//! message, lengths and counts checked against limits before allocating). It must never
//! panic on input: every decode failure is a [`DecodeError`].

use crate::mode::{LockMode, LockName};
use crate::value::LockValue;
use grd::GrdMessage;
use grd::codec::{self, DecodeError, Reader};
use interconnect::{Epoch, InstanceId, Timestamp};

/// A request's id, unique per requesting instance.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RequestId(pub u64);

/// Why a master refused a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum DenyReason {
    /// The master's table is full.
    TableFull,
    /// The request does not match the master's state (e.g. a conversion of a lock the
    /// master does not know this instance holds).
    Rejected,
}

/// A waiting request reported in a rebuild.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PendingReport {
    /// The request.
    pub request: RequestId,
    /// Mode wanted.
    pub mode: LockMode,
    /// A conversion of a held lock (else a new request).
    pub convert: bool,
    /// When it was issued (queue order, deadlock age).
    pub since: Timestamp,
}

/// One wait-for edge: `waiter`'s `request` on `name` waits for `blocker`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WaitEdge {
    /// The lock.
    pub name: LockName,
    /// Who waits.
    pub waiter: InstanceId,
    /// Its request.
    pub request: RequestId,
    /// When it was issued.
    pub since: Timestamp,
    /// Who it waits for.
    pub blocker: InstanceId,
}

/// The owner ([`LockOptions::owner`](crate::LockOptions)) for whom an instance holds or
/// waits for a lock, as it reports it to the deadlock coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOwner {
    /// The lock.
    pub name: LockName,
    /// Its owner at the reporting instance.
    pub owner: u64,
}

/// Most wait-for edges in one message, and most lock owners: both at their most fit in one
/// frame body (`MAX_BODY_LEN`, 64 KiB; an edge takes 36 bytes, an owner 26).
pub const MAX_EDGES: usize = 1024;

/// A GES message body.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Body {
    /// Requester -> master: a new lock.
    Lock {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
        /// Mode.
        mode: LockMode,
        /// Issue time (queue order after a rebuild, deadlock age).
        since: Timestamp,
    },
    /// Requester -> master: convert a held lock (down: applied at once; up: queued).
    Convert {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
        /// Target mode.
        mode: LockMode,
        /// Issue time.
        since: Timestamp,
        /// Value written by a down-conversion from PW/EX.
        value: Option<LockValue>,
    },
    /// Requester -> master: release (with the value written from PW/EX).
    Release {
        /// Lock.
        name: LockName,
        /// Value written.
        value: Option<LockValue>,
    },
    /// Requester -> master: cancel a waiting request.
    Cancel {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
    },
    /// Master -> requester: granted.
    Grant {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
        /// Mode granted.
        mode: LockMode,
        /// The lock's value block.
        value: LockValue,
    },
    /// Master -> requester: the release is applied.
    ReleaseAck {
        /// Lock.
        name: LockName,
    },
    /// Master -> requester: a down-conversion is applied.
    ConvertAck {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
    },
    /// Master -> requester: the request was removed from its queue.
    CancelAck {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
    },
    /// Master -> holder: someone waits for `wanted` (blocking notification, BAST).
    Blocking {
        /// Lock.
        name: LockName,
        /// Mode wanted by the waiter.
        wanted: LockMode,
    },
    /// Master -> holder: release the lock if unused (the master's table is past its bound).
    ReclaimRequest {
        /// Lock.
        name: LockName,
    },
    /// Master -> requester: refused.
    Denied {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
        /// Why.
        reason: DenyReason,
    },
    /// Former master -> requester: ask `new_master`; `bounced` is the message to resend.
    NotMaster {
        /// The master to ask.
        new_master: InstanceId,
        /// The request, returned untouched (never itself a `NotMaster`).
        bounced: Box<Body>,
    },
    /// Survivor -> new master: what I hold or wait for (reconfiguration).
    RebuildReport {
        /// Lock.
        name: LockName,
        /// Mode held, if any.
        granted: Option<LockMode>,
        /// Request waiting, if any.
        pending: Option<PendingReport>,
        /// Value copy (PR/PW/EX holders only: their copy is current).
        value: Option<LockValue>,
    },
    /// Old master or recent writer -> new master: a value block to merge (reconfiguration).
    RebuildValue {
        /// Lock.
        name: LockName,
        /// Value.
        value: LockValue,
    },
    /// Survivor -> everyone: my reports are all sent.
    RebuildDone,
    /// Deadlock coordinator -> masters: send your wait-for edges.
    WaitForQuery {
        /// Round.
        round: u64,
    },
    /// Master -> coordinator: wait-for edges of the locks it masters, and the owners of the
    /// locks it holds or waits for itself.
    WaitForEdges {
        /// Round.
        round: u64,
        /// Edges (at most `MAX_EDGES`).
        edges: Vec<WaitEdge>,
        /// Owners (at most `MAX_EDGES`; of locks a user holds or waits for).
        owners: Vec<LockOwner>,
    },
    /// Coordinator -> requester: fail this request with `Deadlock`.
    DeadlockVictim {
        /// Lock.
        name: LockName,
        /// Request.
        request: RequestId,
    },
    /// Directory traffic (remastering).
    Directory(GrdMessage),
}

/// A message: the sender's epoch and a body.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// Sender's epoch; receivers drop older ones.
    pub epoch: Epoch,
    /// The body.
    pub body: Body,
}

impl Body {
    /// The lock a body is about, if any.
    pub fn name(&self) -> Option<LockName> {
        match self {
            Body::Lock { name, .. }
            | Body::Convert { name, .. }
            | Body::Release { name, .. }
            | Body::Cancel { name, .. }
            | Body::Grant { name, .. }
            | Body::ReleaseAck { name }
            | Body::CancelAck { name, .. }
            | Body::ConvertAck { name, .. }
            | Body::Blocking { name, .. }
            | Body::ReclaimRequest { name }
            | Body::Denied { name, .. }
            | Body::RebuildReport { name, .. }
            | Body::RebuildValue { name, .. }
            | Body::DeadlockVictim { name, .. } => Some(*name),
            Body::NotMaster { bounced, .. } => bounced.name(),
            _ => None,
        }
    }
}

fn put_name(out: &mut Vec<u8>, n: &LockName) {
    codec::put_u16(out, n.kind);
    codec::put_u64(out, n.a);
    codec::put_u64(out, n.b);
}
fn put_value(out: &mut Vec<u8>, v: &LockValue) {
    out.extend_from_slice(&v.bytes);
    codec::put_u64(out, v.version);
    codec::put_u8(out, u8::from(v.valid));
}
fn put_opt_value(out: &mut Vec<u8>, v: &Option<LockValue>) {
    match v {
        None => codec::put_u8(out, 0),
        Some(v) => {
            codec::put_u8(out, 1);
            put_value(out, v);
        }
    }
}
fn put_mode(out: &mut Vec<u8>, m: LockMode) {
    codec::put_u8(out, m as u8);
}
fn name(r: &mut Reader<'_>) -> Result<LockName, DecodeError> {
    Ok(LockName::new(r.u16()?, r.u64()?, r.u64()?))
}
fn mode(r: &mut Reader<'_>) -> Result<LockMode, DecodeError> {
    let raw = r.u8()?;
    LockMode::from_u8(raw).ok_or(DecodeError::Invalid {
        what: "lock mode",
        value: u64::from(raw),
    })
}
fn value(r: &mut Reader<'_>) -> Result<LockValue, DecodeError> {
    Ok(LockValue {
        bytes: r.bytes32()?,
        version: r.u64()?,
        valid: r.bool()?,
    })
}
fn opt_value(r: &mut Reader<'_>) -> Result<Option<LockValue>, DecodeError> {
    Ok(if r.bool()? { Some(value(r)?) } else { None })
}
fn time(r: &mut Reader<'_>) -> Result<Timestamp, DecodeError> {
    Ok(Timestamp::from_nanos(r.u64()?))
}

impl Body {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Body::Lock {
                name,
                request,
                mode,
                since,
            } => {
                codec::put_u8(out, 1);
                put_name(out, name);
                codec::put_u64(out, request.0);
                put_mode(out, *mode);
                codec::put_u64(out, since.as_nanos());
            }
            Body::Convert {
                name,
                request,
                mode,
                since,
                value,
            } => {
                codec::put_u8(out, 2);
                put_name(out, name);
                codec::put_u64(out, request.0);
                put_mode(out, *mode);
                codec::put_u64(out, since.as_nanos());
                put_opt_value(out, value);
            }
            Body::Release { name, value } => {
                codec::put_u8(out, 3);
                put_name(out, name);
                put_opt_value(out, value);
            }
            Body::Cancel { name, request } => {
                codec::put_u8(out, 4);
                put_name(out, name);
                codec::put_u64(out, request.0);
            }
            Body::Grant {
                name,
                request,
                mode,
                value,
            } => {
                codec::put_u8(out, 5);
                put_name(out, name);
                codec::put_u64(out, request.0);
                put_mode(out, *mode);
                put_value(out, value);
            }
            Body::ReleaseAck { name } => {
                codec::put_u8(out, 6);
                put_name(out, name);
            }
            Body::CancelAck { name, request } => {
                codec::put_u8(out, 7);
                put_name(out, name);
                codec::put_u64(out, request.0);
            }
            Body::Blocking { name, wanted } => {
                codec::put_u8(out, 8);
                put_name(out, name);
                put_mode(out, *wanted);
            }
            Body::ReclaimRequest { name } => {
                codec::put_u8(out, 9);
                put_name(out, name);
            }
            Body::Denied {
                name,
                request,
                reason,
            } => {
                codec::put_u8(out, 10);
                put_name(out, name);
                codec::put_u64(out, request.0);
                codec::put_u8(
                    out,
                    match reason {
                        DenyReason::TableFull => 1,
                        DenyReason::Rejected => 2,
                    },
                );
            }
            Body::NotMaster {
                new_master,
                bounced,
            } => {
                codec::put_u8(out, 11);
                codec::put_u8(out, new_master.index() as u8);
                bounced.encode(out);
            }
            Body::RebuildReport {
                name,
                granted,
                pending,
                value,
            } => {
                codec::put_u8(out, 12);
                put_name(out, name);
                codec::put_u8(out, granted.map_or(0xff, |m| m as u8));
                match pending {
                    None => codec::put_u8(out, 0),
                    Some(p) => {
                        codec::put_u8(out, 1);
                        codec::put_u64(out, p.request.0);
                        put_mode(out, p.mode);
                        codec::put_u8(out, u8::from(p.convert));
                        codec::put_u64(out, p.since.as_nanos());
                    }
                }
                put_opt_value(out, value);
            }
            Body::RebuildValue { name, value } => {
                codec::put_u8(out, 13);
                put_name(out, name);
                put_value(out, value);
            }
            Body::RebuildDone => codec::put_u8(out, 14),
            Body::WaitForQuery { round } => {
                codec::put_u8(out, 15);
                codec::put_u64(out, *round);
            }
            Body::WaitForEdges {
                round,
                edges,
                owners,
            } => {
                codec::put_u8(out, 16);
                codec::put_u64(out, *round);
                codec::put_u32(out, edges.len() as u32);
                for e in edges {
                    put_name(out, &e.name);
                    codec::put_u8(out, e.waiter.index() as u8);
                    codec::put_u64(out, e.request.0);
                    codec::put_u64(out, e.since.as_nanos());
                    codec::put_u8(out, e.blocker.index() as u8);
                }
                codec::put_u32(out, owners.len() as u32);
                for o in owners {
                    put_name(out, &o.name);
                    codec::put_u64(out, o.owner);
                }
            }
            Body::DeadlockVictim { name, request } => {
                codec::put_u8(out, 17);
                put_name(out, name);
                codec::put_u64(out, request.0);
            }
            Body::Directory(message) => {
                codec::put_u8(out, 18);
                message.encode(out);
            }
            Body::ConvertAck { name, request } => {
                codec::put_u8(out, 19);
                put_name(out, name);
                codec::put_u64(out, request.0);
            }
        }
    }

    fn decode_from(r: &mut Reader<'_>, nested: bool) -> Result<Body, DecodeError> {
        let tag = r.u8()?;
        Ok(match tag {
            1 => Body::Lock {
                name: name(r)?,
                request: RequestId(r.u64()?),
                mode: mode(r)?,
                since: time(r)?,
            },
            2 => Body::Convert {
                name: name(r)?,
                request: RequestId(r.u64()?),
                mode: mode(r)?,
                since: time(r)?,
                value: opt_value(r)?,
            },
            3 => Body::Release {
                name: name(r)?,
                value: opt_value(r)?,
            },
            4 => Body::Cancel {
                name: name(r)?,
                request: RequestId(r.u64()?),
            },
            5 => Body::Grant {
                name: name(r)?,
                request: RequestId(r.u64()?),
                mode: mode(r)?,
                value: value(r)?,
            },
            6 => Body::ReleaseAck { name: name(r)? },
            7 => Body::CancelAck {
                name: name(r)?,
                request: RequestId(r.u64()?),
            },
            8 => Body::Blocking {
                name: name(r)?,
                wanted: mode(r)?,
            },
            9 => Body::ReclaimRequest { name: name(r)? },
            10 => Body::Denied {
                name: name(r)?,
                request: RequestId(r.u64()?),
                reason: match r.u8()? {
                    1 => DenyReason::TableFull,
                    2 => DenyReason::Rejected,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "deny reason",
                            tag,
                        });
                    }
                },
            },
            11 if !nested => Body::NotMaster {
                new_master: r.instance()?,
                bounced: Box::new(Body::decode_from(r, true)?),
            },
            12 => {
                let name = name(r)?;
                let granted = match r.u8()? {
                    0xff => None,
                    raw => Some(LockMode::from_u8(raw).ok_or(DecodeError::Invalid {
                        what: "lock mode",
                        value: u64::from(raw),
                    })?),
                };
                let pending = if r.bool()? {
                    Some(PendingReport {
                        request: RequestId(r.u64()?),
                        mode: mode(r)?,
                        convert: r.bool()?,
                        since: time(r)?,
                    })
                } else {
                    None
                };
                Body::RebuildReport {
                    name,
                    granted,
                    pending,
                    value: opt_value(r)?,
                }
            }
            13 => Body::RebuildValue {
                name: name(r)?,
                value: value(r)?,
            },
            14 => Body::RebuildDone,
            15 => Body::WaitForQuery { round: r.u64()? },
            16 => {
                let round = r.u64()?;
                let n = r.count("wait-for edges", MAX_EDGES, 36)?;
                let mut edges = Vec::with_capacity(n);
                for _ in 0..n {
                    edges.push(WaitEdge {
                        name: name(r)?,
                        waiter: r.instance()?,
                        request: RequestId(r.u64()?),
                        since: time(r)?,
                        blocker: r.instance()?,
                    });
                }
                let n = r.count("lock owners", MAX_EDGES, 26)?;
                let mut owners = Vec::with_capacity(n);
                for _ in 0..n {
                    owners.push(LockOwner {
                        name: name(r)?,
                        owner: r.u64()?,
                    });
                }
                Body::WaitForEdges {
                    round,
                    edges,
                    owners,
                }
            }
            17 => Body::DeadlockVictim {
                name: name(r)?,
                request: RequestId(r.u64()?),
            },
            18 if !nested => Body::Directory(GrdMessage::decode_from(r)?),
            19 => Body::ConvertAck {
                name: name(r)?,
                request: RequestId(r.u64()?),
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "ges message",
                    tag,
                });
            }
        })
    }
}

impl Message {
    /// Appends the encoding: epoch, then the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        codec::put_u64(out, self.epoch.0);
        self.body.encode(out);
    }

    /// Decodes a whole message; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(bytes);
        let epoch = Epoch(r.u64()?);
        let body = Body::decode_from(&mut r, false)?;
        r.finish()?;
        Ok(Message { epoch, body })
    }
}
