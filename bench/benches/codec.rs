//! Criterion micro-benchmarks of the frame codec: header encode and decode (with its
//! validation and checksum), which every message and block transfer pays once per side.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use interconnect::frame::{BlockDescriptor, FrameHeader, HEADER_LEN};
use interconnect::{ClusterId, Epoch, InstanceId, LandingToken, Priority, Scn, Service};

fn header() -> FrameHeader {
    FrameHeader {
        service: Service::Gcs,
        priority: Priority::High,
        cluster: ClusterId(0x5eed),
        source: InstanceId::new(1).expect("in range"),
        destination: InstanceId::new(2).expect("in range"),
        epoch: Epoch(3),
        scn: Scn(123_456),
        body_len: 64,
        block: Some(BlockDescriptor {
            len: 8192,
            landing: LandingToken::new(17, 4),
        }),
        payload_crc: 0,
    }
}

fn codec(c: &mut Criterion) {
    let header = header();
    let mut raw = [0u8; HEADER_LEN];
    c.bench_function("frame header encode", |b| {
        b.iter(|| black_box(&header).encode(black_box(&mut raw)));
    });
    header.encode(&mut raw);
    c.bench_function("frame header decode+validate", |b| {
        b.iter(|| FrameHeader::decode(black_box(&raw)));
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
