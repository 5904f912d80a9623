//! Fuzz targets: one plain `fn(&[u8])` per decoder and per engine feed, as a hostile peer, a
//! corrupt file or a careless operator would feed them. A target passes an input when it
//! returns; a panic (an `assert!`, an overflow, an index out of bounds) is a finding.
//!
//! [`TARGETS`] lists them by name. `tests/replay.rs` runs each over its committed corpus
//! (`corpus/<name>/`) and over random inputs on stable Rust; `src/bin/afl.rs` runs one under
//! `cargo afl` for coverage-guided fuzzing (README, Fuzzing). A crash found becomes a file in
//! the target's corpus and a fix.
//!
//! The engine feeds read the input as a script of steps ([`Script`]): deliver a message of
//! any bytes from any sender (members and strangers alike), move to another epoch (a
//! rebuild starts), let time pass. Each step drains the engine's outputs, so queues it
//! fills but never drains would show as unbounded memory, which the feed checks.

use interconnect::frame::FrameHeader;
use interconnect::handshake::{Acceptor, Dialer, HandshakeConfig, RECORD_LEN, Record};
use interconnect::{ClusterId, Epoch, InstanceId, InstanceSet, Scn, StorageId, Timestamp};
use std::time::Duration;

/// A fuzz target: any bytes, no panic.
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus folder and the AFL argument).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame),
    ("tcp_stream", tcp_stream),
    ("handshake", handshake),
    ("grd_message", grd_message),
    ("ges_message", ges_message),
    ("gcs_message", gcs_message),
    ("cluster_message", cluster_message),
    ("ges_engine", ges_engine),
    ("gcs_engine", gcs_engine),
    ("control", control),
    ("block", block),
    ("redo_entry", redo_entry),
    ("redo_blocks", redo_blocks),
    ("recovery_apply", recovery_apply),
    ("config", config),
    ("shm_ring_pop", shm_ring_pop),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn id(raw: u64) -> InstanceId {
    match InstanceId::new(raw % interconnect::MAX_INSTANCES as u64) {
        Ok(id) => id,
        Err(_) => unreachable!("reduced into range"),
    }
}

/// A cursor over a target's input that never fails: past the end it reads zeros.
#[derive(Debug)]
pub struct Script<'a> {
    bytes: &'a [u8],
}

impl<'a> Script<'a> {
    /// A script over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// The next byte (zero past the end).
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => 0,
        }
    }
    /// The next little-endian `u64`, from at most 8 bytes.
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.byte()) << (8 * i))
    }
    /// The next `n` bytes, or fewer at the end.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(n.min(self.bytes.len()));
        self.bytes = rest;
        head
    }
    /// A length-prefixed chunk: one byte of length (times `scale`), then that many bytes.
    pub fn chunk(&mut self, scale: usize) -> &'a [u8] {
        let len = usize::from(self.byte()) * scale;
        self.take(len)
    }
}

/// The frame header decoder, then the payload check over the bytes after it.
pub fn frame(data: &[u8]) {
    if let Ok(header) = FrameHeader::decode(data) {
        let rest = data
            .get(interconnect::frame::HEADER_LEN..)
            .unwrap_or_default();
        let body_len = (header.body_len as usize).min(rest.len());
        let (body, block) = rest.split_at(body_len);
        let _ = header.check_payload(body, block);
        let _ = header.check_addressed_to(ClusterId(7), id(1), id(2));
    }
}

const SECRET: &[u8; 32] = b"fuzzing-secret-of-thirty-two-by!";

/// A TCP transport (instance 0) kept across inputs, and the address it listens on.
struct Listener {
    transport: interconnect::tcp::TcpTransport,
    addr: std::net::SocketAddr,
}

thread_local! {
    static TCP: std::cell::RefCell<Option<Listener>> = const { std::cell::RefCell::new(None) };
}

fn tcp_listener() -> Option<Listener> {
    use interconnect::tcp::{TcpConfig, TcpTransport};
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().ok()?;
    let config = TcpConfig::new(
        ClusterId(7),
        id(0),
        any,
        vec![(id(1), any)],
        SECRET.to_vec(),
    );
    let region = interconnect::BlockRegion::anonymous(8, 8192).ok()?;
    let transport = TcpTransport::bind(config, region).ok()?;
    let addr = transport.local_addr().ok()?;
    Some(Listener { transport, addr })
}

/// Rewrites the checksums of the frames laid end to end in `stream`, taking each header's
/// lengths as they are (clamped to what is there), so that mutations reach the field checks
/// and the reader's assembly rather than stopping at a checksum.
fn reseal(stream: &mut [u8]) {
    use interconnect::frame::HEADER_LEN;
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN {
        let field = |b: &[u8], o: usize| {
            u32::from_le_bytes([b[at + o], b[at + o + 1], b[at + o + 2], b[at + o + 3]]) as usize
        };
        let body = field(stream, 20).min(stream.len() - at - HEADER_LEN);
        let block = field(stream, 40).min(stream.len() - at - HEADER_LEN - body);
        let payload_at = at + HEADER_LEN;
        let crc = interconnect::frame::payload_crc(
            &stream[payload_at..payload_at + body],
            &stream[payload_at + body..payload_at + body + block],
        );
        stream[at + 52..at + 56].copy_from_slice(&crc.to_le_bytes());
        let header = crc32c_of(&stream[at..at + 60]);
        stream[at + 60..at + 64].copy_from_slice(&header.to_le_bytes());
        at += HEADER_LEN + body + block;
    }
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    // The frame module's payload checksum over one part is plain CRC32C.
    interconnect::frame::payload_crc(bytes, &[])
}

/// The TCP reader over a stream split anywhere: an authenticated peer (the handshake run
/// honestly) writes the input's frames (checksums resealed, see [`reseal`]) in pieces whose
/// sizes the first byte seeds, while the transport polls in between.
pub fn tcp_stream(data: &[u8]) {
    use interconnect::Transport;
    use std::io::{Read, Write};
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut stream = stream.to_vec();
    reseal(&mut stream);
    TCP.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = tcp_listener();
        }
        let Some(listener) = slot.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        let mut poll = |transport: &mut interconnect::tcp::TcpTransport| {
            let _ = transport.poll(&mut events, Duration::from_millis(1));
            events.clear();
        };
        let Ok(mut socket) = std::net::TcpStream::connect(listener.addr) else {
            return;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_millis(5)));
        let config = HandshakeConfig {
            cluster: ClusterId(7),
            local: id(1),
            secret: SECRET.to_vec(),
            frame_mac: false,
            storage: StorageId::UNKNOWN,
        };
        let (mut dialer, hello) = Dialer::start(config, id(0), [seed; 16]);
        if socket.write_all(&hello).is_err() {
            return;
        }
        let mut record = [0u8; RECORD_LEN];
        let mut established = false;
        for _ in 0..200 {
            poll(&mut listener.transport);
            let mut filled = 0;
            while filled < RECORD_LEN {
                match socket.read(&mut record[filled..]) {
                    Ok(0) => return,
                    Ok(n) => filled += n,
                    Err(_) => break,
                }
                poll(&mut listener.transport);
            }
            if filled < RECORD_LEN {
                continue;
            }
            match dialer.on_record(&record) {
                Ok(interconnect::handshake::DialerStep::Send(proof)) => {
                    if socket.write_all(&proof[..]).is_err() {
                        return;
                    }
                }
                Ok(interconnect::handshake::DialerStep::Established { .. }) => {
                    established = true;
                    break;
                }
                Err(_) => return,
            }
        }
        if !established {
            return;
        }
        let mut rest = &stream[..];
        let mut rng = u64::from(seed) | 1;
        while !rest.is_empty() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let piece = (rng % 300 + 1) as usize;
            let (head, tail) = rest.split_at(piece.min(rest.len()));
            if socket.write_all(head).is_err() {
                break;
            }
            rest = tail;
            poll(&mut listener.transport);
        }
        for _ in 0..4 {
            poll(&mut listener.transport);
        }
    });
}

/// Handshake record sequences: the first byte picks the cluster, frame MACs, storage and the
/// peers the acceptor accepts; the rest is cut into records fed to an acceptor, then to a
/// dialer.
pub fn handshake(data: &[u8]) {
    let mut script = Script::new(data);
    let choice = script.byte();
    let config = |local: u64| HandshakeConfig {
        cluster: ClusterId(u64::from(choice & 3)),
        local: id(local),
        secret: SECRET.to_vec(),
        frame_mac: choice & 4 != 0,
        storage: StorageId(u64::from((choice >> 3) & 1)),
    };
    let records: Vec<Record> = data
        .get(1..)
        .unwrap_or_default()
        .chunks(RECORD_LEN)
        .map(|chunk| {
            let mut record = [0u8; RECORD_LEN];
            record[..chunk.len()].copy_from_slice(chunk);
            record
        })
        .collect();
    let mut acceptor = Acceptor::new(config(1), [choice; 16]);
    for record in &records {
        if acceptor
            .on_record(record, |peer| peer.index() < usize::from(choice >> 4))
            .is_err()
        {
            break;
        }
    }
    let (mut dialer, _hello) = Dialer::start(config(2), id(1), [choice; 16]);
    for record in &records {
        if dialer.on_record(record).is_err() {
            break;
        }
    }
}

/// GRD's message decoder.
pub fn grd_message(data: &[u8]) {
    if let Ok(message) = grd::GrdMessage::decode(data) {
        let mut out = Vec::new();
        message.encode(&mut out);
        assert_eq!(
            grd::GrdMessage::decode(&out).ok(),
            Some(message),
            "round trip"
        );
    }
}

/// GES's message decoder.
pub fn ges_message(data: &[u8]) {
    if let Ok(message) = ges::Message::decode(data) {
        let mut out = Vec::new();
        message.encode(&mut out);
        assert_eq!(ges::Message::decode(&out).ok(), Some(message), "round trip");
    }
}

/// GCS's message decoder.
pub fn gcs_message(data: &[u8]) {
    if let Ok(message) = gcs::GcsMessage::decode(data) {
        let mut out = Vec::new();
        message.encode(&mut out);
        assert_eq!(
            gcs::GcsMessage::decode(&out).ok(),
            Some(message),
            "round trip"
        );
    }
}

/// The cluster manager's message decoder.
pub fn cluster_message(data: &[u8]) {
    let _ = instance::cluster::ClusterMessage::decode(data);
}

/// Most outputs drained after one step; an engine that queues more is not bounded.
const MAX_OUTPUTS_PER_STEP: usize = 1 << 16;

/// GES (with its GRD directory) at instance 0 of three, fed any messages from any sender,
/// new epochs (rebuilds, during which messages keep coming) and time.
pub fn ges_engine(data: &[u8]) {
    let members = InstanceSet::from_bits(0b111);
    let mut now = Timestamp::ZERO;
    let Ok(mut engine) = ges::Engine::new(id(0), Epoch(1), members, ges::GesConfig::default(), now)
    else {
        return;
    };
    let mut epoch = Epoch(1);
    let mut script = Script::new(data);
    while !script.is_empty() {
        match script.byte() % 4 {
            0 | 1 => {
                let from = id(u64::from(script.byte() % 8));
                if let Ok(message) = ges::Message::decode(script.chunk(1)) {
                    engine.handle_message(from, message, now);
                }
            }
            2 => {
                // Members always include this instance; epochs jump anywhere, even back.
                let bits = u64::from(script.byte() & 0b111) | 1;
                let jump = script.byte();
                let next = if jump == 0xff {
                    Epoch(script.u64())
                } else {
                    Epoch(epoch.0.saturating_add(u64::from(jump % 3)))
                };
                if engine
                    .on_new_epoch(next, InstanceSet::from_bits(bits), now)
                    .is_ok()
                {
                    epoch = next;
                }
            }
            _ => {
                now = now + Duration::from_millis(u64::from(script.byte()) * 4);
                engine.handle_timeout(now);
            }
        }
        let mut drained = 0;
        while engine.poll_transmit().is_some() || engine.poll_event().is_some() {
            drained += 1;
            assert!(drained < MAX_OUTPUTS_PER_STEP, "ges outputs unbounded");
        }
    }
}

/// GCS at instance 0 of three, fed any messages from any sender (with any epoch, SCN and
/// durable SCN in them), reconfigurations and time.
pub fn gcs_engine(data: &[u8]) {
    let members = InstanceSet::from_bits(0b111);
    let map = |epoch: Epoch, live: InstanceSet| {
        grd::BucketMap::new(epoch, live, grd::BucketMapConfig::default())
    };
    let Ok(directory) = map(Epoch(1), members) else {
        return;
    };
    let Ok(mut engine) = gcs::Engine::new(id(0), Epoch(1), members, directory, Default::default())
    else {
        return;
    };
    let mut now = Timestamp::ZERO;
    let mut script = Script::new(data);
    while !script.is_empty() {
        match script.byte() % 4 {
            0 | 1 => {
                let from = id(u64::from(script.byte() % 8));
                if let Ok(message) = gcs::GcsMessage::decode(script.chunk(1)) {
                    let _ = engine.handle_message(from, message, now);
                }
            }
            2 => {
                // The driver's reconfiguration: a later epoch, this instance a survivor.
                let live = InstanceSet::from_bits(u64::from(script.byte() & 0b111) | 1);
                let epoch = Epoch(engine.epoch().0.saturating_add(1));
                if epoch > engine.epoch()
                    && let Ok(directory) = map(epoch, live)
                {
                    let _ = engine.on_reconfigure(epoch, live, directory, now);
                }
            }
            _ => {
                now = now + Duration::from_millis(u64::from(script.byte()) * 4);
                engine.handle_timeout(now);
                let _ = engine.observe_scn(Scn(script.u64()));
            }
        }
        let mut drained = 0;
        while engine.poll_transmit().is_some()
            || engine.poll_event().is_some()
            || engine.poll_io().is_some()
        {
            drained += 1;
            assert!(drained < MAX_OUTPUTS_PER_STEP, "gcs outputs unbounded");
        }
    }
}

/// The control area's sector decoders, and the geometry check of a decoded header.
pub fn control(data: &[u8]) {
    if let Ok(header) = storage::format::ControlHeader::decode(data) {
        let _ = storage::format::Layout::from_header(header);
    }
    let _ = storage::format::InstanceSlot::decode(data);
}

/// The data block verifier, at any expected id and offset.
pub fn block(data: &[u8]) {
    let mut script = Script::new(data);
    let expected = gcs::BlockId::new(0, (script.u64() & 0xffff) as u32);
    let offset = script.u64();
    let _ = storage::format::verify_block(data, expected, offset);
}

/// The redo entry decoder.
pub fn redo_entry(data: &[u8]) {
    if let Ok(records) = storage::redo::codec::decode_entry(data) {
        let mut out = Vec::new();
        if storage::redo::codec::encode_entry(&records, &mut out).is_ok() {
            assert_eq!(out, data, "an entry re-encodes to its bytes");
        }
    }
}

/// Log blocks of one thread, in the order given, through the block validator and the entry
/// reassembler, and every entry reassembled through the entry decoder.
pub fn redo_blocks(data: &[u8]) {
    use storage::redo::codec::{EntryAssembler, LOG_BLOCK_SIZE, decode_block, peek_block};
    let ident = storage::redo::LogIdent {
        cluster_id: ClusterId(7),
        instance: id(1),
        incarnation: 1,
    };
    let mut assembler = EntryAssembler::new();
    let mut done = Vec::new();
    for buf in data.chunks(LOG_BLOCK_SIZE) {
        let Ok(header) = peek_block(buf, ident) else {
            continue;
        };
        if let Ok(block) = decode_block(buf, ident, header.sequence)
            && assembler.push(&block, &mut done).is_err()
        {
            assembler = EntryAssembler::new();
        }
    }
    for entry in done {
        let _ = storage::redo::codec::decode_entry(&entry);
    }
}

/// Recovery's apply: records decoded from the input, applied to a block image.
pub fn recovery_apply(data: &[u8]) {
    let mut script = Script::new(data);
    let block_len = 4096usize << (script.byte() % 4);
    let base = Scn(script.u64());
    let target = gcs::BlockId::new(0, u32::from(script.byte() % 2));
    let mut records = Vec::new();
    while !script.is_empty() {
        if let Ok(entry) = storage::redo::codec::decode_entry(script.chunk(16)) {
            records.extend(entry);
        }
    }
    let mut image = vec![0u8; block_len];
    let _ = storage::recovery::apply(target, &mut image, base, &records);
}

/// The shm ring's receive side: a peer that pushes any records, writes anywhere in the
/// ring's shared memory and lands blocks, against the pops and frame checks of the
/// transport (`interconnect::shm::fuzzing::ring_pop`, which owns the unsafe mapping).
pub fn shm_ring_pop(data: &[u8]) {
    interconnect::shm::fuzzing::ring_pop(data);
}

/// The configuration parser (the secret file it names does not exist; inline secrets and
/// every other key are checked).
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = instance::config::InstanceConfig::parse(
            text,
            std::path::Path::new("/nonexistent/fuzz.toml"),
        );
    }
}
