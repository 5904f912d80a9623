//! Peer authentication: a sans-IO challenge-response handshake that every connection runs
//! before any frame is accepted.
//!
//! ```text
//! dialer                                         acceptor
//!   Hello {cluster, from, to, nonce_d}     ---->
//!                                          <----   Challenge {cluster, from, to, nonce_a,
//!                                                             mac_a = HMAC(secret, "acceptor" | transcript)}
//!   checks mac_a (the acceptor knows the secret)
//!   Proof {mac_d = HMAC(secret, "dialer" | transcript)} ---->
//!                                                  checks mac_d (the dialer knows it)
//!                                          <----   Verdict {accepted | reason}
//! ```
//!
//! `transcript` is `cluster | dialer id | acceptor id | nonce_d | nonce_a`, so a MAC is bound
//! to both nonces and both identities and cannot be replayed on another connection. Each side
//! refuses a wrong cluster id, a wrong version, an unknown or mismatched instance id and a
//! wrong secret, and the acceptor tells the dialer why it refused (Verdict), so the operator
//! on either host reads a precise error. Every record is [`RECORD_LEN`] bytes.
//!
//! This module owns the record format and the two state machines. It never touches sockets
//! or draws random numbers: the transport passes nonces in.

use crate::{ClusterId, InstanceId};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every handshake record is this long.
pub const RECORD_LEN: usize = 80;
/// Handshake protocol version.
pub const HANDSHAKE_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"FSNH";
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;

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
}

/// What an acceptor tells a dialer it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Wrong cluster id.
    #[error("wrong cluster id")]
    WrongCluster,
    /// Wrong version.
    #[error("unsupported version")]
    WrongVersion,
    /// The dialer's proof did not verify.
    #[error("wrong cluster secret")]
    BadSecret,
    /// The dialer's id is not a peer the acceptor expects.
    #[error("unexpected instance id")]
    UnexpectedInstance,
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
        }
    }

    fn from_code(code: u8) -> RefusalReason {
        match code {
            1 => RefusalReason::WrongCluster,
            2 => RefusalReason::WrongVersion,
            3 => RefusalReason::BadSecret,
            4 => RefusalReason::UnexpectedInstance,
            _ => RefusalReason::Protocol,
        }
    }

    fn of(error: &HandshakeError) -> RefusalReason {
        match error {
            HandshakeError::WrongCluster { .. } => RefusalReason::WrongCluster,
            HandshakeError::WrongVersion { .. } => RefusalReason::WrongVersion,
            HandshakeError::BadSecret => RefusalReason::BadSecret,
            HandshakeError::UnexpectedInstance(_) => RefusalReason::UnexpectedInstance,
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
    /// The cluster secret (from the cluster file).
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("cluster", &self.cluster)
            .field("local", &self.local)
            .field("secret", &"<redacted>")
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

/// Field layout: magic 0..4, kind 4, version 5, code 6, cluster 8..16, from 16..18, to 18..20,
/// nonce 24..40, mac 40..72.
struct Fields {
    kind: u8,
    version: u8,
    code: u8,
    cluster: ClusterId,
    from: u16,
    to: u16,
    nonce: Nonce,
    mac: [u8; MAC_LEN],
}

impl Fields {
    fn new(kind: Kind, config: &HandshakeConfig, to: InstanceId) -> Self {
        Fields {
            kind: kind as u8,
            version: HANDSHAKE_VERSION,
            code: 0,
            cluster: config.cluster,
            from: config.local.as_u16(),
            to: to.as_u16(),
            nonce: [0; NONCE_LEN],
            mac: [0; MAC_LEN],
        }
    }

    fn encode(&self) -> Record {
        let mut r = [0u8; RECORD_LEN];
        r[0..4].copy_from_slice(&MAGIC);
        r[4] = self.kind;
        r[5] = self.version;
        r[6] = self.code;
        r[8..16].copy_from_slice(&self.cluster.0.to_le_bytes());
        r[16..18].copy_from_slice(&self.from.to_le_bytes());
        r[18..20].copy_from_slice(&self.to.to_le_bytes());
        r[24..40].copy_from_slice(&self.nonce);
        r[40..72].copy_from_slice(&self.mac);
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
        let fields = Fields {
            kind: r[4],
            version: r[5],
            code: r[6],
            cluster: ClusterId(u64::from_le_bytes(cluster)),
            from: u16::from_le_bytes([r[16], r[17]]),
            to: u16::from_le_bytes([r[18], r[19]]),
            nonce,
            mac,
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
        Ok(fields)
    }
}

fn transcript_mac(
    secret: &[u8],
    role: &[u8],
    cluster: ClusterId,
    dialer: u16,
    acceptor: u16,
    nonce_d: &Nonce,
    nonce_a: &Nonce,
) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(role);
    mac.update(&cluster.0.to_le_bytes());
    mac.update(&dialer.to_le_bytes());
    mac.update(&acceptor.to_le_bytes());
    mac.update(nonce_d);
    mac.update(nonce_a);
    mac
}

/// The connecting side.
#[derive(Debug)]
pub struct Dialer {
    config: HandshakeConfig,
    peer: InstanceId,
    nonce_d: Nonce,
    awaiting: Kind,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Kind::Hello => "Hello",
            Kind::Challenge => "Challenge",
            Kind::Proof => "Proof",
            Kind::Verdict => "Verdict",
        };
        f.write_str(name)
    }
}

/// What a dialer does after a record arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum DialerStep {
    /// Send this record and wait for the verdict.
    Send(Box<Record>),
    /// The acceptor accepted: the connection is authenticated.
    Established,
}

impl Dialer {
    /// Starts a handshake with `peer`; returns the dialer and the Hello to send.
    pub fn start(config: HandshakeConfig, peer: InstanceId, nonce_d: Nonce) -> (Dialer, Record) {
        let mut hello = Fields::new(Kind::Hello, &config, peer);
        hello.nonce = nonce_d;
        let record = hello.encode();
        (
            Dialer {
                config,
                peer,
                nonce_d,
                awaiting: Kind::Challenge,
            },
            record,
        )
    }

    /// Handles the acceptor's next record. A refusal carries a verdict telling the acceptor
    /// why (unless the acceptor refused first).
    pub fn on_record(&mut self, record: &Record) -> Result<DialerStep, Refusal> {
        self.step(record).map_err(|error| {
            let verdict = match error {
                HandshakeError::RefusedByPeer(_) => None,
                _ => {
                    let mut verdict = Fields::new(Kind::Verdict, &self.config, self.peer);
                    verdict.code = RefusalReason::of(&error).code();
                    Some(Box::new(verdict.encode()))
                }
            };
            Refusal { error, verdict }
        })
    }

    fn step(&mut self, record: &Record) -> Result<DialerStep, HandshakeError> {
        match self.awaiting {
            Kind::Challenge => {
                let challenge = Fields::decode(record, Kind::Challenge)?;
                if challenge.cluster != self.config.cluster {
                    return Err(HandshakeError::WrongCluster {
                        expected: self.config.cluster,
                        found: challenge.cluster,
                    });
                }
                if challenge.from != self.peer.as_u16()
                    || challenge.to != self.config.local.as_u16()
                {
                    return Err(HandshakeError::UnexpectedInstance(challenge.from));
                }
                let (dialer, acceptor) = (self.config.local.as_u16(), self.peer.as_u16());
                let expected = transcript_mac(
                    &self.config.secret,
                    b"acceptor",
                    self.config.cluster,
                    dialer,
                    acceptor,
                    &self.nonce_d,
                    &challenge.nonce,
                );
                expected
                    .verify_slice(&challenge.mac)
                    .map_err(|_| HandshakeError::BadSecret)?;
                let mut proof = Fields::new(Kind::Proof, &self.config, self.peer);
                proof.mac = transcript_mac(
                    &self.config.secret,
                    b"dialer",
                    self.config.cluster,
                    dialer,
                    acceptor,
                    &self.nonce_d,
                    &challenge.nonce,
                )
                .finalize()
                .into_bytes()
                .into();
                self.awaiting = Kind::Verdict;
                Ok(DialerStep::Send(Box::new(proof.encode())))
            }
            Kind::Verdict => {
                let verdict = Fields::decode(record, Kind::Verdict)?;
                if verdict.code == 0 {
                    Ok(DialerStep::Established)
                } else {
                    Err(HandshakeError::RefusedByPeer(RefusalReason::from_code(
                        verdict.code,
                    )))
                }
            }
            Kind::Hello | Kind::Proof => {
                Err(HandshakeError::Malformed("dialer in a finished state"))
            }
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
    AwaitingProof { dialer: InstanceId, nonce_d: Nonce },
    Done,
}

/// What an acceptor does after a record arrives.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptorStep {
    /// Send this challenge and wait for the proof.
    Send(Box<Record>),
    /// Send this verdict; the dialer `peer` is authenticated.
    Established {
        /// The verdict to send.
        verdict: Box<Record>,
        /// The authenticated peer.
        peer: InstanceId,
    },
}

/// A refused handshake: the error, and the verdict record to send to the other side before
/// closing, so that both operators read why.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What went wrong.
    pub error: HandshakeError,
    /// The verdict telling the dialer why.
    pub verdict: Option<Box<Record>>,
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
            let mut verdict = Fields::new(Kind::Verdict, &self.config, self.config.local);
            verdict.code = RefusalReason::of(&error).code();
            self.state = AcceptorState::Done;
            Refusal {
                error,
                verdict: Some(Box::new(verdict.encode())),
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
                let hello = Fields::decode(record, Kind::Hello)?;
                if hello.cluster != self.config.cluster {
                    return Err(HandshakeError::WrongCluster {
                        expected: self.config.cluster,
                        found: hello.cluster,
                    });
                }
                let dialer = InstanceId::try_from(hello.from)
                    .ok()
                    .filter(|&id| is_peer(id) && id != self.config.local)
                    .ok_or(HandshakeError::UnexpectedInstance(hello.from))?;
                if hello.to != self.config.local.as_u16() {
                    return Err(HandshakeError::UnexpectedInstance(hello.to));
                }
                let mut challenge = Fields::new(Kind::Challenge, &self.config, dialer);
                challenge.nonce = self.nonce_a;
                challenge.mac = transcript_mac(
                    &self.config.secret,
                    b"acceptor",
                    self.config.cluster,
                    dialer.as_u16(),
                    self.config.local.as_u16(),
                    &hello.nonce,
                    &self.nonce_a,
                )
                .finalize()
                .into_bytes()
                .into();
                self.state = AcceptorState::AwaitingProof {
                    dialer,
                    nonce_d: hello.nonce,
                };
                Ok(AcceptorStep::Send(Box::new(challenge.encode())))
            }
            AcceptorState::AwaitingProof { dialer, nonce_d } => {
                let proof = Fields::decode(record, Kind::Proof)?;
                transcript_mac(
                    &self.config.secret,
                    b"dialer",
                    self.config.cluster,
                    dialer.as_u16(),
                    self.config.local.as_u16(),
                    &nonce_d,
                    &self.nonce_a,
                )
                .verify_slice(&proof.mac)
                .map_err(|_| HandshakeError::BadSecret)?;
                let verdict = Fields::new(Kind::Verdict, &self.config, dialer);
                Ok(AcceptorStep::Established {
                    verdict: Box::new(verdict.encode()),
                    peer: dialer,
                })
            }
            AcceptorState::Done => Err(HandshakeError::Malformed("acceptor in a finished state")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cluster: u64, local: u64, secret: &[u8]) -> HandshakeConfig {
        HandshakeConfig {
            cluster: ClusterId(cluster),
            local: InstanceId::new(local).unwrap(),
            secret: secret.to_vec(),
        }
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
                let verdict = refusal.verdict.expect("a refusal carries a verdict");
                return (
                    dialer.on_record(&verdict).map(|_| ()).map_err(|r| r.error),
                    Err(refusal.error),
                );
            }
        };
        let proof = match dialer.on_record(&challenge) {
            Ok(DialerStep::Send(record)) => record,
            Ok(DialerStep::Established) => panic!("established before the verdict"),
            Err(refusal) => {
                // The dialer tells the acceptor why it gives up; the acceptor reads that.
                let verdict = refusal
                    .verdict
                    .expect("a dialer-side refusal carries a verdict");
                let acceptor_side = acceptor
                    .on_record(&verdict, |_| true)
                    .map(|_| ())
                    .unwrap_err()
                    .error;
                return (Err(refusal.error), Err(acceptor_side));
            }
        };
        match acceptor.on_record(&proof, |_| true) {
            Ok(AcceptorStep::Established { verdict, peer }) => {
                let dialer_side = dialer
                    .on_record(&verdict)
                    .map(|step| assert_eq!(step, DialerStep::Established))
                    .map_err(|r| r.error);
                (dialer_side, Ok(peer))
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(refusal) => {
                let verdict = refusal.verdict.expect("a refusal carries a verdict");
                (
                    dialer.on_record(&verdict).map(|_| ()).map_err(|r| r.error),
                    Err(refusal.error),
                )
            }
        }
    }

    #[test]
    fn same_cluster_and_secret_establish() {
        let (dialer, acceptor) = run(config(9, 2, b"s3cret"), config(9, 1, b"s3cret"));
        assert_eq!(dialer, Ok(()));
        assert_eq!(acceptor, Ok(InstanceId::new(2).unwrap()));
    }

    #[test]
    fn wrong_secret_is_refused_on_both_sides() {
        let (dialer, acceptor) = run(config(9, 2, b"wrong"), config(9, 1, b"s3cret"));
        // The dialer sees the acceptor's MAC fail first: it never sends a proof, and tells the
        // acceptor why.
        assert_eq!(dialer, Err(HandshakeError::BadSecret));
        assert_eq!(
            acceptor,
            Err(HandshakeError::RefusedByPeer(RefusalReason::BadSecret))
        );
    }

    #[test]
    fn wrong_cluster_is_refused_with_a_reason() {
        let (dialer, acceptor) = run(config(8, 2, b"s3cret"), config(9, 1, b"s3cret"));
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
    }

    #[test]
    fn unknown_dialer_is_refused() {
        let (mut dialer, hello) =
            Dialer::start(config(9, 7, b"k"), InstanceId::new(1).unwrap(), [3; 16]);
        let mut acceptor = Acceptor::new(config(9, 1, b"k"), [4; 16]);
        let refusal = acceptor.on_record(&hello, |id| id.index() < 3).unwrap_err();
        assert_eq!(refusal.error, HandshakeError::UnexpectedInstance(7));
        let verdict = refusal.verdict.unwrap();
        assert_eq!(
            dialer.on_record(&verdict).map_err(|r| r.error),
            Err(HandshakeError::RefusedByPeer(
                RefusalReason::UnexpectedInstance
            ))
        );
    }

    #[test]
    fn garbage_and_replayed_records_are_refused() {
        let mut acceptor = Acceptor::new(config(9, 1, b"k"), [4; 16]);
        let refusal = acceptor
            .on_record(&[0u8; RECORD_LEN], |_| true)
            .unwrap_err();
        assert!(matches!(refusal.error, HandshakeError::Malformed(_)));

        // A proof captured from one connection does not verify on another (fresh nonce).
        let (mut dialer, hello) =
            Dialer::start(config(9, 2, b"k"), InstanceId::new(1).unwrap(), [1; 16]);
        let mut first = Acceptor::new(config(9, 1, b"k"), [5; 16]);
        let AcceptorStep::Send(challenge) = first.on_record(&hello, |_| true).unwrap() else {
            panic!()
        };
        let DialerStep::Send(proof) = dialer.on_record(&challenge).unwrap() else {
            panic!()
        };
        let mut second = Acceptor::new(config(9, 1, b"k"), [6; 16]);
        second.on_record(&hello, |_| true).unwrap();
        assert_eq!(
            second.on_record(&proof, |_| true).unwrap_err().error,
            HandshakeError::BadSecret
        );
    }

    #[test]
    fn wrong_version_is_refused() {
        let (_dialer, mut hello) =
            Dialer::start(config(9, 2, b"k"), InstanceId::new(1).unwrap(), [1; 16]);
        hello[5] = HANDSHAKE_VERSION + 1;
        let mut acceptor = Acceptor::new(config(9, 1, b"k"), [4; 16]);
        let refusal = acceptor.on_record(&hello, |_| true).unwrap_err();
        assert_eq!(
            refusal.error,
            HandshakeError::WrongVersion {
                found: HANDSHAKE_VERSION + 1
            }
        );
    }
}
