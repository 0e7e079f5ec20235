//! New records written with O_DIRECT: every size around the buffer and
//! block boundaries round-trips, lands block-aligned with a valid header,
//! takes in-place appends and modifies, and survives reopening — with the
//! io_uring disk thread and with the pwrite fallback, and with bodies
//! received the way the server receives them (1 MiB frames in
//! [`RecvBuf`]s, written without a copy) as well as in arbitrary pieces.

use bytes::Bytes;
use proto::FileId;

use super::chunk::{decode_header, HEADER_LEN};
use super::content::FLUSH;
use super::dio::{RecvBuf, DIRECT_MIN, ZERO_COPIED};
use super::disk::DIO_ALIGN;
use super::tests::{check, config, pattern, small_data_at, upload, upload_body, VecBody};
use super::*;

fn sizes() -> Vec<usize> {
    let (min, f, h) = (DIRECT_MIN as usize, FLUSH, HEADER_LEN as usize);
    vec![
        min - 1,
        min,
        f - h - 1,
        f - h,
        f - h + 1,
        f,
        f + DIO_ALIGN,
        2 * f - h,
        3 * f + 5,
    ]
}

/// A body in frames of up to 1 MiB, each in a [`RecvBuf`] like the
/// server's (small ones in plain buffers, as there).
struct FramedBody(Vec<Bytes>);

impl FramedBody {
    fn new(data: &[u8]) -> Self {
        let frames = data
            .chunks(FLUSH)
            .map(|c| match RecvBuf::new(c.len()) {
                Some(mut b) => {
                    b.space().copy_from_slice(c);
                    b.freeze()
                }
                None => Bytes::copy_from_slice(c),
            })
            .rev()
            .collect();
        FramedBody(frames)
    }
}

impl Body for FramedBody {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        Ok(self.0.pop())
    }
}

async fn upload_framed(e: &Engine, data: &[u8], appender: bool) -> FileId {
    upload_body(e, data.len() as u64, appender, &mut FramedBody::new(data)).await
}

async fn round_trip(io_uring: bool, framed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.large_file_threshold = 4 << 20;
    cfg.chunk_file_size = 16 << 20;
    cfg.io_uring = io_uring;
    let e = Engine::open(cfg.clone()).unwrap();
    let mut model: Vec<(FileId, Vec<u8>)> = Vec::new();
    for (i, size) in sizes().into_iter().enumerate() {
        let data = pattern(size, i as u8 + 1);
        let appender = i % 2 == 0;
        let id = if framed {
            upload_framed(&e, &data, appender).await
        } else {
            upload(&e, &data, appender).await
        };
        let (path, data_at) = small_data_at(&e, &cfg, &id);
        let record = data_at - HEADER_LEN;
        if size as u64 >= DIRECT_MIN {
            assert_eq!(
                record % DIO_ALIGN as u64,
                0,
                "size {size}: record not aligned"
            );
        }
        let raw = std::fs::read(&path).unwrap();
        let h = decode_header(&raw[record as usize..]).expect("valid record header");
        assert_eq!(h.file_id, id.to_string());
        assert_eq!((h.len, h.data_crc), (size as u64, crc32fast::hash(&data)));
        assert_eq!(h.version, e.stat(&id).await.unwrap().version);
        check(&e, &id, &data).await;
        model.push((id, data));
    }
    // In-place changes to records written with O_DIRECT.
    for (i, (id, data)) in model.iter_mut().enumerate() {
        let p = pattern(700, 0x40 + i as u8);
        let at = data.len() / 2;
        e.modify(id, at as u64, 700, None, &mut VecBody::new(&p))
            .await
            .unwrap();
        let end = at + 700;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[at..end].copy_from_slice(&p);
        if i % 2 == 0 {
            let add = pattern(3000, 0x80 + i as u8);
            e.append(id, 3000, None, &mut VecBody::new(&add))
                .await
                .unwrap();
            data.extend_from_slice(&add);
        }
        check(&e, id, data).await;
    }
    // A crash (no shutdown), then a clean reopen.
    drop(e);
    let e = Engine::open(cfg.clone()).unwrap();
    for (id, data) in &model {
        check(&e, id, data).await;
    }
    // Deleted records free their aligned space for the next ones.
    for (id, _) in model.drain(..4) {
        e.delete(&id, None).await.unwrap();
    }
    let again = pattern(FLUSH + 1, 9);
    let id = upload(&e, &again, false).await;
    check(&e, &id, &again).await;
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_records_round_trip_with_io_uring() {
    round_trip(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_records_round_trip_from_received_frames() {
    use std::sync::atomic::Ordering;
    let before = ZERO_COPIED.load(Ordering::Relaxed);
    round_trip(true, true).await;
    round_trip(false, true).await;
    // Most of the bytes of every frame went to disk from where they were.
    let uploaded: usize = sizes().iter().sum();
    assert!(ZERO_COPIED.load(Ordering::Relaxed) - before >= uploaded as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_records_round_trip_with_pwrite() {
    round_trip(false, false).await;
}

/// A store whose file system refused O_DIRECT writes new records through
/// the page cache: unaligned, and they round-trip across a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_o_direct_records_go_through_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.large_file_threshold = 4 << 20;
    cfg.chunk_file_size = 16 << 20;
    let e = Engine::open(cfg.clone()).unwrap();
    e.stores[0]
        .dio_ok
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let small = pattern(100, 1);
    let small_id = upload(&e, &small, false).await;
    let big = pattern(FLUSH + 5, 2);
    let big_id = upload(&e, &big, false).await;
    let (_, data_at) = small_data_at(&e, &cfg, &big_id);
    // Right after the first record: not moved to a block boundary.
    assert_eq!(data_at - HEADER_LEN, HEADER_LEN + 100);
    check(&e, &big_id, &big).await;
    drop(e);
    let e = Engine::open(cfg).unwrap();
    check(&e, &small_id, &small).await;
    check(&e, &big_id, &big).await;
    e.shutdown().await.unwrap();
}
