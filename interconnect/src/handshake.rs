//! Peer authentication: a sans-IO challenge-response handshake that every connection runs
//! before any frame is accepted.
//!
//! ```text
//! dialer                                         acceptor
//!   Hello {cluster, from, to, storage, nonce_d}  ---->
//!                                          <----   Challenge {nonce_a}   (nothing else)
//!   Proof {mac_d = HMAC(secret, "dialer" | transcript)} ---->
//!                                                  checks mac_d, then the cluster, ids, flags
//!                                                  and storage identity
//!                                          <----   Verdict {accepted, mac_a = HMAC(secret, "acceptor" | transcript)}
//!                                                  or Verdict {refused, reason[, storage]}
//!   checks mac_a (the acceptor knows the secret)
//! ```
//!
//! `transcript` is `cluster | dialer id | acceptor id | flags | storage | nonce_d | nonce_a` as
//! the dialer claims them, so a MAC is bound to both nonces and both identities and cannot be
//! replayed on another connection.
//!
//! The hello's `storage` is the [`StorageId`] of the storage the dialer opened (a random value
//! written when it was formatted). The acceptor refuses a dialer on another storage, once it
//! has proved the secret, with [`HandshakeError::StorageMismatch`]: a file formatted again with
//! the same cluster id and secret passes every other check, and an instance that joined on it
//! would decide epochs and serve blocks from a disk no one else writes. That refusal, alone
//! among refusals, carries an id: the acceptor's storage identity, so that the refused dialer
//! can name both. It is sent only to a dialer that proved the secret, and a storage identity
//! is no secret (every hello carries one in the clear).
//!
//! The hello's `flags` say whether the dialer wants a MAC on every frame
//! ([`crate::frame_mac`]). Both ends must be configured alike: the acceptor refuses a
//! mismatch (once the dialer has proved the secret) with
//! [`HandshakeError::FrameMacMismatch`], and the flag is in the transcript, so no one on the
//! path can switch it off unnoticed. With frame MACs, both ends derive the connection's two
//! direction keys from the secret and the transcript ([`FrameMacKeys`]).
//!
//! The dialer proves first, over a nonce the acceptor chose: whoever merely reaches the port
//! learns nothing from the acceptor (no MAC to test secret guesses against offline, no cluster
//! or instance id: the challenge carries only a nonce, and no refusal to a stranger carries an
//! id). The acceptor checks the dialer's MAC before its claims, so only a peer that holds the
//! secret learns *why* it was refused (wrong cluster id, unexpected instance id, another
//! storage); anyone else reads
//! "wrong cluster secret". The acceptor's own MAC, in the accepting verdict, proves to the
//! dialer that it did not dial an impostor. Secrets are at least [`MIN_SECRET_LEN`] bytes, so
//! that the one MAC an impostor acceptor can collect (the dialer's proof) is no help to a
//! guesser either. Every record is [`RECORD_LEN`] bytes.
//!
//! This module owns the record format and the two state machines. It never touches sockets
//! or draws random numbers: the transport passes nonces in.

use crate::frame_mac::{FrameMac, FrameMacKeys};
use crate::{ClusterId, InstanceId, StorageId};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every handshake record is this long.
pub const RECORD_LEN: usize = 80;
/// Handshake protocol version (2: the dialer proves first; 3: the frame-MAC flag; 4: the
/// storage identity).
pub const HANDSHAKE_VERSION: u8 = 4;
/// The shortest cluster secret accepted: 32 bytes, the HMAC-SHA256 key size.
pub const MIN_SECRET_LEN: usize = 32;
const MAGIC: [u8; 4] = *b"FSNH";
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;
/// Hello flag: the dialer puts a MAC on every frame and expects one on every frame.
const FLAG_FRAME_MAC: u8 = 1;

/// A random nonce, drawn by the transport.
pub type Nonce = [u8; NONCE_LEN];
type HmacSha256 = Hmac<Sha256>;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer belongs to another cluster.
    #[error("peer is in cluster {found}, this is cluster {expected}")]
    WrongCluster {
        /// This cluster.
        expected: ClusterId,
        /// The peer's.
        found: ClusterId,
    },
    /// The peer speaks another handshake version.
    #[error("peer speaks handshake version {found}, this build speaks {HANDSHAKE_VERSION}")]
    WrongVersion {
        /// The peer's version.
        found: u8,
    },
    /// The peer's MAC does not verify: it does not hold the cluster secret.
    #[error("peer failed authentication (wrong cluster secret)")]
    BadSecret,
    /// The peer's instance id is not in the configuration, or not the one dialled.
    #[error("unexpected instance id {0}")]
    UnexpectedInstance(u16),
    /// The record is not a handshake record of the expected kind.
    #[error("malformed handshake record: {0}")]
    Malformed(&'static str),
    /// The acceptor refused the dialer and said why.
    #[error("peer refused the connection: {0}")]
    RefusedByPeer(RefusalReason),
    /// One end puts a MAC on every frame and the other does not: the setting
    /// (`transport.frame_mac`) must be the same on every instance.
    #[error(
        "the peer {} frame MACs and this instance {} (`transport.frame_mac` must be the same on every instance)",
        if *.local { "does not use" } else { "uses" },
        if *.local { "does" } else { "does not" }
    )]
    FrameMacMismatch {
        /// Whether this instance uses them.
        local: bool,
    },
    /// The two ends opened different storage (each formatted on its own, perhaps with the
    /// same cluster id): every instance of a cluster must be given the same storage file.
    #[error(
        "this instance's storage has identity {local} and instance {instance}'s has identity {peer}: the two instances were given different storage files (check `storage.path` in each instance's configuration)"
    )]
    StorageMismatch {
        /// The storage identity this instance opened.
        local: StorageId,
        /// The peer's.
        peer: StorageId,
        /// The peer: the one dialled, or a dialer that proved the secret (so its id is
        /// authenticated, and an entering instance may count who refused it).
        instance: InstanceId,
    },
}

/// What an acceptor tells a dialer it refuses. No reason carries an id, but for
/// [`RefusalReason::StorageMismatch`], whose verdict also carries the acceptor's storage
/// identity (the dialer then reports [`HandshakeError::StorageMismatch`] with both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Wrong cluster id (told only to a dialer that proved the secret).
    #[error("wrong cluster id")]
    WrongCluster,
    /// Wrong version.
    #[error("unsupported version")]
    WrongVersion,
    /// The dialer's proof did not verify.
    #[error("wrong cluster secret")]
    BadSecret,
    /// The dialer's id is not a peer the acceptor expects (told only to a dialer that proved
    /// the secret).
    #[error("unexpected instance id")]
    UnexpectedInstance,
    /// One end uses frame MACs and the other does not (told only to a dialer that proved
    /// the secret).
    #[error(
        "the frame MAC setting differs (`transport.frame_mac` must be the same on every instance)"
    )]
    FrameMacMismatch,
    /// The dialer opened another storage than the acceptor (told only to a dialer that
    /// proved the secret).
    #[error("the storage identity differs (the instances were given different storage files)")]
    StorageMismatch,
    /// Anything else (a malformed record).
    #[error("protocol error")]
    Protocol,
}

impl RefusalReason {
    fn code(self) -> u8 {
        match self {
            RefusalReason::WrongCluster => 1,
            RefusalReason::WrongVersion => 2,
            RefusalReason::BadSecret => 3,
            RefusalReason::UnexpectedInstance => 4,
            RefusalReason::Protocol => 5,
            RefusalReason::FrameMacMismatch => 6,
            RefusalReason::StorageMismatch => 7,
        }
    }

    fn from_code(code: u8) -> RefusalReason {
        match code {
            1 => RefusalReason::WrongCluster,
            2 => RefusalReason::WrongVersion,
            3 => RefusalReason::BadSecret,
            4 => RefusalReason::UnexpectedInstance,
            6 => RefusalReason::FrameMacMismatch,
            7 => RefusalReason::StorageMismatch,
            _ => RefusalReason::Protocol,
        }
    }

    fn of(error: &HandshakeError) -> RefusalReason {
        match error {
            HandshakeError::WrongCluster { .. } => RefusalReason::WrongCluster,
            HandshakeError::WrongVersion { .. } => RefusalReason::WrongVersion,
            HandshakeError::BadSecret => RefusalReason::BadSecret,
            HandshakeError::UnexpectedInstance(_) => RefusalReason::UnexpectedInstance,
            HandshakeError::FrameMacMismatch { .. } => RefusalReason::FrameMacMismatch,
            HandshakeError::StorageMismatch { .. } => RefusalReason::StorageMismatch,
            _ => RefusalReason::Protocol,
        }
    }
}

/// What both sides know before they talk.
#[derive(Clone)]
pub struct HandshakeConfig {
    /// This cluster.
    pub cluster: ClusterId,
    /// This instance.
    pub local: InstanceId,
    /// The cluster secret (from the cluster file), at least [`MIN_SECRET_LEN`] bytes: the
    /// transports refuse to start with a shorter one.
    pub secret: Vec<u8>,
    /// Put a MAC on every frame and require one on every frame received
    /// ([`crate::frame_mac`]); every instance must agree.
    pub frame_mac: bool,
    /// The identity of the storage this instance opened; a peer on another one is refused.
    pub storage: StorageId,
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("cluster", &self.cluster)
            .field("local", &self.local)
            .field("secret", &"<redacted>")
            .field("frame_mac", &self.frame_mac)
            .field("storage", &self.storage)
            .finish()
    }
}

/// One handshake record.
pub type Record = [u8; RECORD_LEN];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello = 1,
    Challenge = 2,
    Proof = 3,
    Verdict = 4,
}

/// Field layout: magic 0..4, kind 4, version 5, code 6, flags 7, cluster 8..16, from 16..18,
/// to 18..20, nonce 24..40, mac 40..72, storage 72..80. Fields a record does not use are zero.
#[derive(Default)]
struct Fields {
    kind: u8,
    version: u8,
    code: u8,
    flags: u8,
    cluster: u64,
    from: u16,
    to: u16,
    nonce: Nonce,
    mac: [u8; MAC_LEN],
    storage: u64,
}

impl Fields {
    fn new(kind: Kind) -> Self {
        Fields {
            kind: kind as u8,
            version: HANDSHAKE_VERSION,
            ..Fields::default()
        }
    }

    fn encode(&self) -> Record {
        let mut r = [0u8; RECORD_LEN];
        r[0..4].copy_from_slice(&MAGIC);
        r[4] = self.kind;
        r[5] = self.version;
        r[6] = self.code;
        r[7] = self.flags;
        r[8..16].copy_from_slice(&self.cluster.to_le_bytes());
        r[16..18].copy_from_slice(&self.from.to_le_bytes());
        r[18..20].copy_from_slice(&self.to.to_le_bytes());
        r[24..40].copy_from_slice(&self.nonce);
        r[40..72].copy_from_slice(&self.mac);
        r[72..80].copy_from_slice(&self.storage.to_le_bytes());
        r
    }

    fn decode(r: &Record, expect: Kind) -> Result<Fields, HandshakeError> {
        if r[0..4] != MAGIC {
            return Err(HandshakeError::Malformed("bad magic: not a Fusion peer"));
        }
        let mut cluster = [0u8; 8];
        cluster.copy_from_slice(&r[8..16]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&r[24..40]);
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&r[40..72]);
        let mut storage = [0u8; 8];
        storage.copy_from_slice(&r[72..80]);
        let fields = Fields {
            kind: r[4],
            version: r[5],
            code: r[6],
            flags: r[7],
            cluster: u64::from_le_bytes(cluster),
            from: u16::from_le_bytes([r[16], r[17]]),
            to: u16::from_le_bytes([r[18], r[19]]),
            nonce,
            mac,
            storage: u64::from_le_bytes(storage),
        };
        // A verdict may arrive where a challenge is expected: the acceptor refused the hello.
        if fields.kind == Kind::Verdict as u8 && expect != Kind::Verdict && fields.code != 0 {
            return Err(HandshakeError::RefusedByPeer(RefusalReason::from_code(
                fields.code,
            )));
        }
        if fields.kind != expect as u8 {
            return Err(HandshakeError::Malformed("unexpected record kind"));
        }
        if fields.version != HANDSHAKE_VERSION {
            return Err(HandshakeError::WrongVersion {
                found: fields.version,
            });
        }
        if fields.flags & !FLAG_FRAME_MAC != 0 {
            return Err(HandshakeError::Malformed("unknown handshake flags"));
        }
        Ok(fields)
    }
}

/// What both MACs of one connection cover.
struct Transcript {
    cluster: u64,
    dialer: u16,
    acceptor: u16,
    flags: u8,
    storage: u64,
    nonce_d: Nonce,
    nonce_a: Nonce,
}

impl Transcript {
    fn mac(&self, secret: &[u8], role: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        };
        mac.update(role);
        mac.update(&self.cluster.to_le_bytes());
        mac.update(&self.dialer.to_le_bytes());
        mac.update(&self.acceptor.to_le_bytes());
        mac.update(&[self.flags]);
        mac.update(&self.storage.to_le_bytes());
        mac.update(&self.nonce_d);
        mac.update(&self.nonce_a);
        mac
    }

    fn sign(&self, secret: &[u8], role: &[u8]) -> [u8; MAC_LEN] {
        self.mac(secret, role).finalize().into_bytes().into()
    }

    fn verify(&self, secret: &[u8], role: &[u8], mac: &[u8]) -> Result<(), HandshakeError> {
        // Constant time: `verify_slice` compares without an early exit.
        self.mac(secret, role)
            .verify_slice(mac)
            .map_err(|_| HandshakeError::BadSecret)
    }

    /// The frame MACs of an established connection, if it agreed on them: one key per
    /// direction, each an HMAC of the transcript under the secret with its own label, so the
    /// keys are fresh per connection (both nonces) and never sign the proofs' inputs.
    fn frame_mac_keys(&self, secret: &[u8], dialer_end: bool) -> Option<Box<FrameMacKeys>> {
        if self.flags & FLAG_FRAME_MAC == 0 {
            return None;
        }
        let from_dialer = FrameMac::new(&self.sign(secret, FRAMES_FROM_DIALER));
        let from_acceptor = FrameMac::new(&self.sign(secret, FRAMES_FROM_ACCEPTOR));
        Some(Box::new(if dialer_end {
            FrameMacKeys {
                send: from_dialer,
                receive: from_acceptor,
            }
        } else {
            FrameMacKeys {
                send: from_acceptor,
                receive: from_dialer,
            }
        }))
    }
}

const DIALER_ROLE: &[u8] = b"dialer";
const ACCEPTOR_ROLE: &[u8] = b"acceptor";
const FRAMES_FROM_DIALER: &[u8] = b"frame mac: dialer to acceptor";
const FRAMES_FROM_ACCEPTOR: &[u8] = b"frame mac: acceptor to dialer";

fn flags_of(config: &HandshakeConfig) -> u8 {
    if config.frame_mac { FLAG_FRAME_MAC } else { 0 }
}

/// The connecting side.
#[derive(Debug)]
pub struct Dialer {
    config: HandshakeConfig,
    peer: InstanceId,
    nonce_d: Nonce,
    state: DialerState,
}

#[derive(Debug)]
enum DialerState {
    AwaitingChallenge,
    AwaitingVerdict { nonce_a: Nonce },
    Done,
}

/// What a dialer does after a record arrives.
#[derive(Debug)]
pub enum DialerStep {
    /// Send this proof and wait for the verdict.
    Send(Box<Record>),
    /// The acceptor accepted and proved the secret: the connection is authenticated.
    Established {
        /// The connection's frame MACs, when both ends use them.
        frame_mac: Option<Box<FrameMacKeys>>,
    },
}

impl Dialer {
    /// Starts a handshake with `peer`; returns the dialer and the Hello to send.
    pub fn start(config: HandshakeConfig, peer: InstanceId, nonce_d: Nonce) -> (Dialer, Record) {
        let hello = Fields {
            flags: flags_of(&config),
            cluster: config.cluster.0,
            from: config.local.as_u16(),
            to: peer.as_u16(),
            nonce: nonce_d,
            storage: config.storage.0,
            ..Fields::new(Kind::Hello)
        };
        (
            Dialer {
                config,
                peer,
                nonce_d,
                state: DialerState::AwaitingChallenge,
            },
            hello.encode(),
        )
    }

    /// Handles the acceptor's next record. The dialer never sends a refusal: the acceptor
    /// learns that the dialer gave up from the closed connection.
    pub fn on_record(&mut self, record: &Record) -> Result<DialerStep, HandshakeError> {
        let transcript = |nonce_a: Nonce| Transcript {
            cluster: self.config.cluster.0,
            dialer: self.config.local.as_u16(),
            acceptor: self.peer.as_u16(),
            flags: flags_of(&self.config),
            storage: self.config.storage.0,
            nonce_d: self.nonce_d,
            nonce_a,
        };
        match std::mem::replace(&mut self.state, DialerState::Done) {
            DialerState::AwaitingChallenge => {
                let challenge = Fields::decode(record, Kind::Challenge)?;
                self.state = DialerState::AwaitingVerdict {
                    nonce_a: challenge.nonce,
                };
                let proof = Fields {
                    mac: transcript(challenge.nonce).sign(&self.config.secret, DIALER_ROLE),
                    ..Fields::new(Kind::Proof)
                };
                Ok(DialerStep::Send(Box::new(proof.encode())))
            }
            DialerState::AwaitingVerdict { nonce_a } => {
                let verdict = Fields::decode(record, Kind::Verdict)?;
                if verdict.code == RefusalReason::StorageMismatch.code() {
                    return Err(HandshakeError::StorageMismatch {
                        local: self.config.storage,
                        peer: StorageId(verdict.storage),
                        instance: self.peer,
                    });
                }
                if verdict.code != 0 {
                    return Err(HandshakeError::RefusedByPeer(RefusalReason::from_code(
                        verdict.code,
                    )));
                }
                let transcript = transcript(nonce_a);
                transcript.verify(&self.config.secret, ACCEPTOR_ROLE, &verdict.mac)?;
                Ok(DialerStep::Established {
                    frame_mac: transcript.frame_mac_keys(&self.config.secret, true),
                })
            }
            DialerState::Done => Err(HandshakeError::Malformed("dialer in a finished state")),
        }
    }
}

/// The accepting side.
#[derive(Debug)]
pub struct Acceptor {
    config: HandshakeConfig,
    nonce_a: Nonce,
    state: AcceptorState,
}

#[derive(Debug)]
enum AcceptorState {
    AwaitingHello,
    /// The hello's claims, kept unverified until the proof.
    AwaitingProof {
        cluster: u64,
        dialer: u16,
        to: u16,
        flags: u8,
        storage: u64,
        nonce_d: Nonce,
    },
    Done,
}

/// What an acceptor does after a record arrives.
#[derive(Debug)]
pub enum AcceptorStep {
    /// Send this challenge and wait for the proof.
    Send(Box<Record>),
    /// Send this verdict; the dialer `peer` is authenticated.
    Established {
        /// The verdict to send.
        verdict: Box<Record>,
        /// The authenticated peer.
        peer: InstanceId,
        /// The connection's frame MACs, when both ends use them.
        frame_mac: Option<Box<FrameMacKeys>>,
    },
}

/// A handshake the acceptor refused: the error (for this side's log) and the verdict to send
/// the dialer before closing (a reason code, never an id).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What went wrong.
    pub error: HandshakeError,
    /// The verdict telling the dialer why.
    pub verdict: Box<Record>,
}

impl Acceptor {
    /// A new acceptor for one incoming connection.
    pub fn new(config: HandshakeConfig, nonce_a: Nonce) -> Acceptor {
        Acceptor {
            config,
            nonce_a,
            state: AcceptorState::AwaitingHello,
        }
    }

    /// Handles the dialer's next record. `is_peer` says whether an instance id is a configured
    /// peer that this instance accepts connections from.
    pub fn on_record(
        &mut self,
        record: &Record,
        is_peer: impl Fn(InstanceId) -> bool,
    ) -> Result<AcceptorStep, Refusal> {
        let result = self.step(record, is_peer);
        result.map_err(|error| {
            self.state = AcceptorState::Done;
            let verdict = Fields {
                code: RefusalReason::of(&error).code(),
                // The one refusal that names an id: the dialer proved the secret, and it
                // needs the acceptor's identity to say which files differ.
                storage: match error {
                    HandshakeError::StorageMismatch { local, .. } => local.0,
                    _ => 0,
                },
                ..Fields::new(Kind::Verdict)
            };
            Refusal {
                error,
                verdict: Box::new(verdict.encode()),
            }
        })
    }

    fn step(
        &mut self,
        record: &Record,
        is_peer: impl Fn(InstanceId) -> bool,
    ) -> Result<AcceptorStep, HandshakeError> {
        match std::mem::replace(&mut self.state, AcceptorState::Done) {
            AcceptorState::AwaitingHello => {
                // Nothing is checked but the format: a refusal here would tell a stranger
                // which cluster or instance ids are wrong.
                let hello = Fields::decode(record, Kind::Hello)?;
                self.state = AcceptorState::AwaitingProof {
                    cluster: hello.cluster,
                    dialer: hello.from,
                    to: hello.to,
                    flags: hello.flags,
                    storage: hello.storage,
                    nonce_d: hello.nonce,
                };
                let challenge = Fields {
                    nonce: self.nonce_a,
                    ..Fields::new(Kind::Challenge)
                };
                Ok(AcceptorStep::Send(Box::new(challenge.encode())))
            }
            AcceptorState::AwaitingProof {
                cluster,
                dialer,
                to,
                flags,
                storage,
                nonce_d,
            } => {
                let proof = Fields::decode(record, Kind::Proof)?;
                let transcript = Transcript {
                    cluster,
                    dialer,
                    acceptor: to,
                    flags,
                    storage,
                    nonce_d,
                    nonce_a: self.nonce_a,
                };
                transcript.verify(&self.config.secret, DIALER_ROLE, &proof.mac)?;
                // The dialer holds the secret: its claims are now worth checking, and it may
                // learn what is wrong with them.
                if cluster != self.config.cluster.0 {
                    return Err(HandshakeError::WrongCluster {
                        expected: self.config.cluster,
                        found: ClusterId(cluster),
                    });
                }
                if to != self.config.local.as_u16() {
                    return Err(HandshakeError::UnexpectedInstance(to));
                }
                let peer = InstanceId::try_from(dialer)
                    .ok()
                    .filter(|&id| is_peer(id) && id != self.config.local)
                    .ok_or(HandshakeError::UnexpectedInstance(dialer))?;
                if flags != flags_of(&self.config) {
                    return Err(HandshakeError::FrameMacMismatch {
                        local: self.config.frame_mac,
                    });
                }
                if storage != self.config.storage.0 {
                    return Err(HandshakeError::StorageMismatch {
                        local: self.config.storage,
                        peer: StorageId(storage),
                        instance: peer,
                    });
                }
                let verdict = Fields {
                    mac: transcript.sign(&self.config.secret, ACCEPTOR_ROLE),
                    ..Fields::new(Kind::Verdict)
                };
                Ok(AcceptorStep::Established {
                    verdict: Box::new(verdict.encode()),
                    peer,
                    frame_mac: transcript.frame_mac_keys(&self.config.secret, false),
                })
            }
            AcceptorState::Done => Err(HandshakeError::Malformed("acceptor in a finished state")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8; 32] = b"fedcba9876543210fedcba9876543210";

    fn config(cluster: u64, local: u64, secret: &[u8]) -> HandshakeConfig {
        HandshakeConfig {
            cluster: ClusterId(cluster),
            local: InstanceId::new(local).unwrap(),
            secret: secret.to_vec(),
            frame_mac: false,
            storage: StorageId(0x5707),
        }
    }

    fn on_storage(mut config: HandshakeConfig, storage: u64) -> HandshakeConfig {
        config.storage = StorageId(storage);
        config
    }

    /// Runs a full handshake; returns (dialer's result, acceptor's result).
    fn run(
        dialer_cfg: HandshakeConfig,
        acceptor_cfg: HandshakeConfig,
    ) -> (
        Result<(), HandshakeError>,
        Result<InstanceId, HandshakeError>,
    ) {
        let peer = acceptor_cfg.local;
        let (mut dialer, hello) = Dialer::start(dialer_cfg, peer, [1; 16]);
        let mut acceptor = Acceptor::new(acceptor_cfg, [2; 16]);
        let challenge = match acceptor.on_record(&hello, |_| true) {
            Ok(AcceptorStep::Send(record)) => record,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(refusal) => {
                return (
                    dialer.on_record(&refusal.verdict).map(|_| ()),
                    Err(refusal.error),
                );
            }
        };
        let proof = match dialer.on_record(&challenge) {
            Ok(DialerStep::Send(record)) => record,
            Ok(DialerStep::Established { .. }) => panic!("established before the verdict"),
            Err(error) => return (Err(error), Err(HandshakeError::Malformed("dialer gave up"))),
        };
        match acceptor.on_record(&proof, |_| true) {
            Ok(AcceptorStep::Established { verdict, peer, .. }) => {
                let dialer_side = dialer
                    .on_record(&verdict)
                    .map(|step| assert!(matches!(step, DialerStep::Established { .. })));
                (dialer_side, Ok(peer))
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(refusal) => (
                dialer.on_record(&refusal.verdict).map(|_| ()),
                Err(refusal.error),
            ),
        }
    }

    #[test]
    fn same_cluster_and_secret_establish() {
        let (dialer, acceptor) = run(config(9, 2, SECRET), config(9, 1, SECRET));
        assert_eq!(dialer, Ok(()));
        assert_eq!(acceptor, Ok(InstanceId::new(2).unwrap()));
    }

    #[test]
    fn wrong_secret_is_refused_on_both_sides() {
        let (dialer, acceptor) = run(config(9, 2, OTHER), config(9, 1, SECRET));
        assert_eq!(acceptor, Err(HandshakeError::BadSecret));
        assert_eq!(
            dialer,
            Err(HandshakeError::RefusedByPeer(RefusalReason::BadSecret))
        );
    }

    #[test]
    fn wrong_cluster_is_refused_with_a_reason_to_a_secret_holder() {
        let (dialer, acceptor) = run(config(8, 2, SECRET), config(9, 1, SECRET));
        assert_eq!(
            acceptor,
            Err(HandshakeError::WrongCluster {
                expected: ClusterId(9),
                found: ClusterId(8)
            })
        );
        assert_eq!(
            dialer,
            Err(HandshakeError::RefusedByPeer(RefusalReason::WrongCluster))
        );
        // Without the secret, a wrong cluster reads as a wrong secret: a stranger learns
        // nothing about the cluster id.
        let (dialer, _) = run(config(8, 2, OTHER), config(9, 1, SECRET));
        assert_eq!(
            dialer,
            Err(HandshakeError::RefusedByPeer(RefusalReason::BadSecret))
        );
    }

    #[test]
    fn the_acceptor_reveals_nothing_before_the_proof() {
        let (_, hello) = Dialer::start(config(9, 2, OTHER), InstanceId::new(1).unwrap(), [1; 16]);
        let mut acceptor = Acceptor::new(config(9, 1, SECRET), [2; 16]);
        let Ok(AcceptorStep::Send(challenge)) = acceptor.on_record(&hello, |_| true) else {
            panic!("a hello gets a challenge")
        };
        // Magic, kind, version and the nonce: no cluster id, no instance id, no MAC.
        let mut expected = [0u8; RECORD_LEN];
        expected[0..4].copy_from_slice(&MAGIC);
        expected[4] = Kind::Challenge as u8;
        expected[5] = HANDSHAKE_VERSION;
        expected[24..40].copy_from_slice(&[2; 16]);
        assert_eq!(*challenge, expected);
        // A refusal names a reason, never an id.
        let refusal = acceptor
            .on_record(&[0u8; RECORD_LEN], |_| true)
            .unwrap_err();
        assert_eq!(refusal.verdict[8..RECORD_LEN], [0u8; RECORD_LEN - 8]);
    }

    #[test]
    fn an_impostor_acceptor_is_caught_by_the_dialer() {
        let peer = InstanceId::new(1).unwrap();
        let (mut dialer, hello) = Dialer::start(config(9, 2, SECRET), peer, [1; 16]);
        let mut impostor = Acceptor::new(config(9, 1, OTHER), [2; 16]);
        let Ok(AcceptorStep::Send(challenge)) = impostor.on_record(&hello, |_| true) else {
            panic!()
        };
        let Ok(DialerStep::Send(_proof)) = dialer.on_record(&challenge) else {
            panic!()
        };
        // The impostor cannot verify the proof, so it forges an accepting verdict.
        let forged = Fields {
            mac: [7; MAC_LEN],
            ..Fields::new(Kind::Verdict)
        };
        assert_eq!(
            dialer.on_record(&forged.encode()).err(),
            Some(HandshakeError::BadSecret)
        );
        assert!(dialer.on_record(&forged.encode()).is_err(), "finished");
    }

    #[test]
    fn unknown_dialer_is_refused() {
        let (mut dialer, hello) =
            Dialer::start(config(9, 7, SECRET), InstanceId::new(1).unwrap(), [3; 16]);
        let mut acceptor = Acceptor::new(config(9, 1, SECRET), [4; 16]);
        let is_peer = |id: InstanceId| id.index() < 3;
        let Ok(AcceptorStep::Send(challenge)) = acceptor.on_record(&hello, is_peer) else {
            panic!()
        };
        let Ok(DialerStep::Send(proof)) = dialer.on_record(&challenge) else {
            panic!()
        };
        let refusal = acceptor.on_record(&proof, is_peer).unwrap_err();
        assert_eq!(refusal.error, HandshakeError::UnexpectedInstance(7));
        assert_eq!(
            dialer.on_record(&refusal.verdict).err(),
            Some(HandshakeError::RefusedByPeer(
                RefusalReason::UnexpectedInstance
            ))
        );
    }

    #[test]
    fn garbage_and_replayed_records_are_refused() {
        let mut acceptor = Acceptor::new(config(9, 1, SECRET), [4; 16]);
        let refusal = acceptor
            .on_record(&[0u8; RECORD_LEN], |_| true)
            .unwrap_err();
        assert!(matches!(refusal.error, HandshakeError::Malformed(_)));

        // A proof captured from one connection does not verify on another (fresh nonce).
        let (mut dialer, hello) =
            Dialer::start(config(9, 2, SECRET), InstanceId::new(1).unwrap(), [1; 16]);
        let mut first = Acceptor::new(config(9, 1, SECRET), [5; 16]);
        let AcceptorStep::Send(challenge) = first.on_record(&hello, |_| true).unwrap() else {
            panic!()
        };
        let DialerStep::Send(proof) = dialer.on_record(&challenge).unwrap() else {
            panic!()
        };
        let mut second = Acceptor::new(config(9, 1, SECRET), [6; 16]);
        second.on_record(&hello, |_| true).unwrap();
        assert_eq!(
            second.on_record(&proof, |_| true).unwrap_err().error,
            HandshakeError::BadSecret
        );
    }

    #[test]
    fn wrong_version_is_refused() {
        let (_dialer, mut hello) =
            Dialer::start(config(9, 2, SECRET), InstanceId::new(1).unwrap(), [1; 16]);
        hello[5] = HANDSHAKE_VERSION + 1;
        let mut acceptor = Acceptor::new(config(9, 1, SECRET), [4; 16]);
        let refusal = acceptor.on_record(&hello, |_| true).unwrap_err();
        assert_eq!(
            refusal.error,
            HandshakeError::WrongVersion {
                found: HANDSHAKE_VERSION + 1
            }
        );
    }

    fn with_frame_mac(mut config: HandshakeConfig, on: bool) -> HandshakeConfig {
        config.frame_mac = on;
        config
    }

    /// Runs an honest handshake with the dialer's nonce `nonce_d` to the end; returns both
    /// ends' frame MACs.
    fn established(
        dialer_cfg: HandshakeConfig,
        acceptor_cfg: HandshakeConfig,
        nonce_d: u8,
    ) -> (Option<Box<FrameMacKeys>>, Option<Box<FrameMacKeys>>) {
        let (mut dialer, hello) = Dialer::start(dialer_cfg, acceptor_cfg.local, [nonce_d; 16]);
        let mut acceptor = Acceptor::new(acceptor_cfg, [2; 16]);
        let Ok(AcceptorStep::Send(challenge)) = acceptor.on_record(&hello, |_| true) else {
            panic!("a hello gets a challenge")
        };
        let Ok(DialerStep::Send(proof)) = dialer.on_record(&challenge) else {
            panic!("a challenge gets a proof")
        };
        let Ok(AcceptorStep::Established {
            verdict,
            frame_mac: acceptor_keys,
            ..
        }) = acceptor.on_record(&proof, |_| true)
        else {
            panic!("the proof is accepted")
        };
        let Ok(DialerStep::Established {
            frame_mac: dialer_keys,
        }) = dialer.on_record(&verdict)
        else {
            panic!("the verdict is accepted")
        };
        (dialer_keys, acceptor_keys)
    }

    #[test]
    fn both_ends_derive_matching_frame_mac_keys_per_direction_and_connection() {
        let on = |local| with_frame_mac(config(9, local, SECRET), true);
        let (Some(mut dialer), Some(mut acceptor)) = established(on(2), on(1), 1) else {
            panic!("both ends asked for frame MACs")
        };
        let header = [5u8; crate::frame::HEADER_LEN];
        let tag = dialer.send.tag(&[&header, b"hi", &[]]);
        assert_eq!(acceptor.receive.check(&header, b"hi", &[], &tag), Ok(()));
        let tag = acceptor.send.tag(&[&header, b"yo", &[]]);
        assert_eq!(dialer.receive.check(&header, b"yo", &[], &tag), Ok(()));
        // A tag never verifies in the other direction (no reflection)...
        let tag = dialer.send.tag(&[&header, b"hi", &[]]);
        assert_eq!(
            dialer.receive.check(&header, b"hi", &[], &tag),
            Err(crate::FrameError::BadMac)
        );
        // ... nor on another connection (another nonce).
        let (_, Some(mut other)) = established(on(2), on(1), 7) else {
            panic!("both ends asked for frame MACs")
        };
        let (Some(mut first), _) = established(on(2), on(1), 1) else {
            panic!("both ends asked for frame MACs")
        };
        let tag = first.send.tag(&[&header, b"hi", &[]]);
        assert_eq!(
            other.receive.check(&header, b"hi", &[], &tag),
            Err(crate::FrameError::BadMac)
        );
        // Without the flag, no keys.
        let off = |local| config(9, local, SECRET);
        let (dialer, acceptor) = established(off(2), off(1), 1);
        assert!(dialer.is_none() && acceptor.is_none());
    }

    #[test]
    fn a_frame_mac_mismatch_is_refused_on_both_sides() {
        for dialer_on in [true, false] {
            let (dialer, acceptor) = run(
                with_frame_mac(config(9, 2, SECRET), dialer_on),
                with_frame_mac(config(9, 1, SECRET), !dialer_on),
            );
            assert_eq!(
                acceptor,
                Err(HandshakeError::FrameMacMismatch { local: !dialer_on })
            );
            assert_eq!(
                dialer,
                Err(HandshakeError::RefusedByPeer(
                    RefusalReason::FrameMacMismatch
                ))
            );
        }
        // The message says which end does what.
        let text = HandshakeError::FrameMacMismatch { local: false }.to_string();
        assert!(
            text.contains("peer uses frame MACs and this instance does not"),
            "{text}"
        );
    }

    #[test]
    fn the_frame_mac_flag_cannot_be_switched_on_the_way() {
        // Someone on the path clears the flag of a dialer that wants frame MACs, towards an
        // acceptor configured without them: the proof no longer verifies.
        let (mut dialer, mut hello) = Dialer::start(
            with_frame_mac(config(9, 2, SECRET), true),
            InstanceId::new(1).unwrap(),
            [1; 16],
        );
        hello[7] = 0;
        let mut acceptor = Acceptor::new(config(9, 1, SECRET), [2; 16]);
        let Ok(AcceptorStep::Send(challenge)) = acceptor.on_record(&hello, |_| true) else {
            panic!("a hello gets a challenge")
        };
        let Ok(DialerStep::Send(proof)) = dialer.on_record(&challenge) else {
            panic!("a challenge gets a proof")
        };
        let refusal = acceptor.on_record(&proof, |_| true).unwrap_err();
        assert_eq!(refusal.error, HandshakeError::BadSecret);
        // Unknown flag bits are malformed.
        let (_, mut hello) =
            Dialer::start(config(9, 2, SECRET), InstanceId::new(1).unwrap(), [1; 16]);
        hello[7] = 0x80;
        let mut acceptor = Acceptor::new(config(9, 1, SECRET), [2; 16]);
        assert!(matches!(
            acceptor.on_record(&hello, |_| true).unwrap_err().error,
            HandshakeError::Malformed(_)
        ));
    }

    #[test]
    fn another_storage_is_refused_after_the_proof_and_both_ends_name_both_ids() {
        let (dialer, acceptor) = run(
            on_storage(config(9, 2, SECRET), 0xd1a1),
            on_storage(config(9, 1, SECRET), 0xacce),
        );
        assert_eq!(
            acceptor,
            Err(HandshakeError::StorageMismatch {
                local: StorageId(0xacce),
                peer: StorageId(0xd1a1),
                instance: InstanceId::new(2).unwrap(),
            })
        );
        assert_eq!(
            dialer,
            Err(HandshakeError::StorageMismatch {
                local: StorageId(0xd1a1),
                peer: StorageId(0xacce),
                instance: InstanceId::new(1).unwrap(),
            })
        );
        let text = dialer.unwrap_err().to_string();
        for needle in [
            "000000000000d1a1",
            "instance 1's has identity 000000000000acce",
            "different storage files",
        ] {
            assert!(text.contains(needle), "{text}");
        }
        // A file formatted before identities existed is "unknown", and says so.
        let text = HandshakeError::StorageMismatch {
            local: StorageId::UNKNOWN,
            peer: StorageId(0xacce),
            instance: InstanceId::new(1).unwrap(),
        }
        .to_string();
        assert!(
            text.contains("formatted before storage identities"),
            "{text}"
        );
    }

    #[test]
    fn a_storage_mismatch_is_told_only_to_a_dialer_that_proved_the_secret() {
        // The hello gets the bare challenge, whatever storage it names.
        let (_, hello) = Dialer::start(
            on_storage(config(9, 2, SECRET), 0xd1a1),
            InstanceId::new(1).unwrap(),
            [1; 16],
        );
        let mut acceptor = Acceptor::new(on_storage(config(9, 1, SECRET), 0xacce), [2; 16]);
        assert!(matches!(
            acceptor.on_record(&hello, |_| true),
            Ok(AcceptorStep::Send(_))
        ));
        // Without the secret, another storage reads as a wrong secret, and the verdict
        // carries no storage identity.
        let (dialer, acceptor) = run(
            on_storage(config(9, 2, OTHER), 0xd1a1),
            on_storage(config(9, 1, SECRET), 0xacce),
        );
        assert_eq!(acceptor, Err(HandshakeError::BadSecret));
        assert_eq!(
            dialer,
            Err(HandshakeError::RefusedByPeer(RefusalReason::BadSecret))
        );
        let (mut dialer, hello) = Dialer::start(
            on_storage(config(9, 2, OTHER), 0xd1a1),
            InstanceId::new(1).unwrap(),
            [1; 16],
        );
        let mut acceptor = Acceptor::new(on_storage(config(9, 1, SECRET), 0xacce), [2; 16]);
        let Ok(AcceptorStep::Send(challenge)) = acceptor.on_record(&hello, |_| true) else {
            panic!("a hello gets a challenge")
        };
        let Ok(DialerStep::Send(proof)) = dialer.on_record(&challenge) else {
            panic!("a challenge gets a proof")
        };
        let refusal = acceptor.on_record(&proof, |_| true).unwrap_err();
        assert_eq!(refusal.verdict[72..80], [0u8; 8]);
    }

    #[test]
    fn the_same_storage_is_accepted_including_two_unknown_ones() {
        for storage in [0xacce, StorageId::UNKNOWN.0] {
            let (dialer, acceptor) = run(
                on_storage(config(9, 2, SECRET), storage),
                on_storage(config(9, 1, SECRET), storage),
            );
            assert_eq!(dialer, Ok(()));
            assert_eq!(acceptor, Ok(InstanceId::new(2).unwrap()));
        }
        // An unknown identity is a value like any other: it does not match a known one.
        let (_, acceptor) = run(
            on_storage(config(9, 2, SECRET), StorageId::UNKNOWN.0),
            on_storage(config(9, 1, SECRET), 0xacce),
        );
        assert!(matches!(
            acceptor,
            Err(HandshakeError::StorageMismatch { .. })
        ));
    }

    #[test]
    fn the_storage_identity_cannot_be_changed_on_the_way() {
        // Someone on the path rewrites the dialer's storage identity to the acceptor's: the
        // transcript covers it, so the proof no longer verifies.
        let (mut dialer, mut hello) = Dialer::start(
            on_storage(config(9, 2, SECRET), 0xd1a1),
            InstanceId::new(1).unwrap(),
            [1; 16],
        );
        hello[72..80].copy_from_slice(&0xacce_u64.to_le_bytes());
        let mut acceptor = Acceptor::new(on_storage(config(9, 1, SECRET), 0xacce), [2; 16]);
        let Ok(AcceptorStep::Send(challenge)) = acceptor.on_record(&hello, |_| true) else {
            panic!("a hello gets a challenge")
        };
        let Ok(DialerStep::Send(proof)) = dialer.on_record(&challenge) else {
            panic!("a challenge gets a proof")
        };
        let refusal = acceptor.on_record(&proof, |_| true).unwrap_err();
        assert_eq!(refusal.error, HandshakeError::BadSecret);
    }
}
