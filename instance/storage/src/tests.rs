//! Tests of the file-backed implementations on a temporary file: io_uring (skipped with one
//! line where it is refused) and pread/pwrite.

use super::uring::UringStorage;
use super::*;

const FILE_LEN: u64 = 4 << 20;

fn temp_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("storage.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(FILE_LEN)
        .unwrap();
    (dir, path)
}

fn backends(path: &Path) -> Vec<Arc<dyn SharedStorage>> {
    let mut out: Vec<Arc<dyn SharedStorage>> =
        vec![Arc::new(sync_io::SyncStorage::open(path, true).unwrap())];
    for redo_syscalls in [true, false] {
        let options = StorageOptions {
            redo_syscalls,
            ..StorageOptions::default()
        };
        match UringStorage::open(path, &options) {
            Ok(s) => out.push(Arc::new(s)),
            Err(uring::UringOpenError::Refused(why)) => {
                println!("SKIP io_uring storage tests: io_uring refused here ({why})");
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    out
}

fn pattern(len: usize, seed: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(len, 4096).unwrap();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ seed;
    }
    buf
}

#[test]
fn writes_read_back_on_every_backend() {
    let (_dir, path) = temp_file();
    for storage in backends(&path) {
        let info = storage.info();
        assert_eq!(storage.len(), FILE_LEN);
        assert!(
            storage.alignment().is_power_of_two() && storage.alignment() <= 4096,
            "{info}"
        );
        let data = pattern(64 * 1024, 7);
        storage.write_at(8192, &data, IoClass::Data).unwrap();
        storage.sync(IoClass::Data).unwrap();
        let more = pattern(8192, 9);
        storage
            .write_durable_at(1 << 20, &more, IoClass::Redo)
            .unwrap();
        let mut back = AlignedBuf::new(64 * 1024, 4096).unwrap();
        storage.read_at(8192, &mut back).unwrap();
        assert_eq!(&back[..], &data[..], "{info}");
        storage.read_at(1 << 20, &mut back[..8192]).unwrap();
        assert_eq!(&back[..8192], &more[..], "{info}");

        // A batch of reads, all in flight at once on io_uring.
        let mut bufs: Vec<AlignedBuf> = (0..16)
            .map(|_| AlignedBuf::new(4096, 4096).unwrap())
            .collect();
        let mut ops: Vec<ReadOp<'_>> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, buf)| ReadOp {
                offset: 8192 + i as u64 * 4096,
                buf: &mut buf[..],
            })
            .collect();
        storage.read_batch(&mut ops).unwrap();
        for (i, buf) in bufs.iter().enumerate() {
            assert_eq!(&buf[..], &data[i * 4096..(i + 1) * 4096], "{info}");
        }

        // A batch of writes (out of order, in flight at once on io_uring), read back.
        let written: Vec<AlignedBuf> = (0..16u8)
            .map(|i| {
                let mut buf = AlignedBuf::new(4096, 4096).unwrap();
                buf.copy_from_slice(&pattern(4096, 100 + i));
                buf
            })
            .collect();
        let writes: Vec<WriteOp<'_>> = written
            .iter()
            .enumerate()
            .rev()
            .map(|(i, buf)| WriteOp {
                offset: (2 << 20) + i as u64 * 4096,
                buf: &buf[..],
            })
            .collect();
        storage.write_batch(&writes, IoClass::Data).unwrap();
        storage.sync(IoClass::Data).unwrap();
        let mut all = AlignedBuf::new(16 * 4096, 4096).unwrap();
        storage.read_at(2 << 20, &mut all).unwrap();
        for (i, buf) in written.iter().enumerate() {
            assert_eq!(&all[i * 4096..(i + 1) * 4096], &buf[..], "{info}");
        }
    }
}

#[test]
fn misaligned_and_out_of_bounds_transfers_are_typed_errors() {
    let (_dir, path) = temp_file();
    for storage in backends(&path) {
        let info = storage.info();
        let align = storage.alignment();
        let mut buf = AlignedBuf::new(3 * 4096, 4096).unwrap();
        assert!(
            matches!(
                storage.read_at(align as u64 / 2, &mut buf[..4096]),
                Err(StorageError::Misaligned {
                    what: Misalignment::Offset,
                    ..
                })
            ),
            "{info}"
        );
        assert!(matches!(
            storage.write_at(0, &buf[..align + 1], IoClass::Data),
            Err(StorageError::Misaligned {
                what: Misalignment::Length,
                ..
            })
        ));
        assert!(matches!(
            storage.read_at(0, &mut buf[1..align + 1]),
            Err(StorageError::Misaligned {
                what: Misalignment::BufferAddress,
                ..
            })
        ));
        assert!(matches!(
            storage.read_at(FILE_LEN - 4096, &mut buf[..8192]),
            Err(StorageError::OutOfBounds { .. })
        ));
        assert!(matches!(
            storage.write_at(u64::MAX - 4095, &buf[..4096], IoClass::Redo),
            Err(StorageError::OutOfBounds { .. }) | Err(StorageError::Misaligned { .. })
        ));
    }
}

#[test]
fn registered_arenas_serve_as_fixed_buffers() {
    let (_dir, path) = temp_file();
    for storage in backends(&path) {
        let arena = IoArena::new(16 * 8192, 4096).unwrap();
        let registered = storage.register_arena(&arena).unwrap();
        let mut frames = arena.into_frames(8192).unwrap();
        for (i, frame) in frames.iter_mut().enumerate() {
            frame.fill(i as u8 + 1);
            storage
                .write_at(i as u64 * 8192, frame, IoClass::Data)
                .unwrap();
        }
        for frame in frames.iter_mut() {
            frame.fill(0);
        }
        for (i, frame) in frames.iter_mut().enumerate() {
            storage.read_at(i as u64 * 8192, frame).unwrap();
            assert!(frame.iter().all(|&b| b == i as u8 + 1));
        }
        println!("{}: arena registered: {registered}", storage.info());
    }
}

#[test]
fn the_read_queue_keeps_many_reads_in_flight() {
    let (_dir, path) = temp_file();
    let storage = match UringStorage::open(&path, &StorageOptions::default()) {
        Ok(s) => s,
        Err(uring::UringOpenError::Refused(why)) => {
            println!("SKIP io_uring read queue test: io_uring refused here ({why})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let data = pattern(256 * 1024, 3);
    storage.write_durable_at(0, &data, IoClass::Data).unwrap();
    let arena = IoArena::new(32 * 8192, 4096).unwrap();
    assert!(storage.register_arena(&arena).unwrap() || !storage.info().fixed_buffers);
    let mut frames = arena.into_frames(8192).unwrap();
    let mut queue = storage.read_queue();
    assert!(queue.depth() >= 32);
    for (i, frame) in frames.drain(..).enumerate() {
        queue.push(i as u64 * 8192, frame, i as u64).unwrap();
    }
    let mut done = Vec::new();
    while done.len() < 32 {
        done.extend(queue.submit_and_wait(1).unwrap());
    }
    assert_eq!(queue.in_flight(), 0);
    for c in &done {
        c.result.as_ref().unwrap();
        let at = c.tag as usize * 8192;
        assert_eq!(&c.frame[..], &data[at..at + 8192]);
    }
    // A misaligned read is refused up front and the frame comes back.
    let frame = done.pop().unwrap().frame;
    let (frame, err) = queue.push(100, frame, 0).unwrap_err();
    assert!(matches!(err, StorageError::Misaligned { .. }));
    assert_eq!(frame.len(), 8192);
}

#[test]
fn automatic_choice_and_buffered_fallback_say_what_they_are() {
    let (_dir, path) = temp_file();
    let auto = open(&path, &StorageOptions::default()).unwrap();
    let info = auto.info();
    assert!(
        info.backend.starts_with("io_uring") || info.fallback_reason.is_some(),
        "{info}"
    );
    let buffered = open(
        &path,
        &StorageOptions {
            direct: false,
            ..StorageOptions::default()
        },
    )
    .unwrap();
    assert!(matches!(buffered.info().direct, DirectIo::Off { .. }));
    assert!(matches!(
        open(
            Path::new("/nonexistent/fusion.img"),
            &StorageOptions::default()
        ),
        Err(StorageError::Open { .. })
    ));
    // tmpfs: O_DIRECT is refused on older kernels; either way the storage works.
    if let Ok(dir) = tempfile::tempdir_in("/dev/shm") {
        let path = dir.path().join("tmpfs.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let storage = open(&path, &StorageOptions::default()).unwrap();
        let buf = pattern(4096, 1);
        storage.write_durable_at(0, &buf, IoClass::Data).unwrap();
        println!("tmpfs: {}", storage.info());
    }
}
