//! Engine tests on real disks (tempfile dirs).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proto::{ErrorCode, FileId, MetaEntry, MetaMode};

use super::*;

pub(super) const THRESHOLD: u64 = 256 << 10;

pub(super) fn config(dir: &Path, stores: usize) -> EngineConfig {
    EngineConfig {
        group: "g1".into(),
        server_id: 7,
        store_paths: (0..stores).map(|i| dir.join(format!("store{i}"))).collect(),
        meta_dir: dir.join("meta"),
        large_file_threshold: THRESHOLD,
        chunk_file_size: 1 << 20,
        reserve_ratio: 0.2,
        reserved_space: 0,
        fsync: FsyncPolicy::Always,
        fsync_interval_ms: 5,
        io_uring: true,
        lanes: 16,
    }
}

/// A body that hands out `data` in pieces of `piece` bytes.
pub(super) struct VecBody {
    data: Bytes,
    piece: usize,
    taken: usize,
}

impl VecBody {
    pub(super) fn new(data: &[u8]) -> Self {
        VecBody {
            data: Bytes::copy_from_slice(data),
            piece: 100_000,
            taken: 0,
        }
    }
}

impl Body for VecBody {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, EngineError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let n = self.data.len().min(self.piece);
        self.taken += n;
        Ok(Some(self.data.split_to(n)))
    }
}

pub(super) fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

pub(super) async fn read_all(
    e: &Engine,
    id: &FileId,
    offset: u64,
    len: Option<u64>,
) -> Result<Vec<u8>, EngineError> {
    let mut r = e.open_read(id, offset, len).await?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk(70_000).await? {
        assert!(c.len() <= 70_000);
        out.extend_from_slice(&c);
    }
    assert_eq!(out.len() as u64, r.length);
    Ok(out)
}

pub(super) async fn check(e: &Engine, id: &FileId, model: &[u8]) {
    let st = e.stat(id).await.unwrap();
    assert_eq!(st.size, model.len() as u64, "{id}");
    assert_eq!(st.crc32, crc32fast::hash(model), "{id}");
    let got = read_all(e, id, 0, None).await.unwrap();
    assert!(
        got == model,
        "{id}: content differs (len {} vs {})",
        got.len(),
        model.len()
    );
    if model.len() > 10 {
        let mid = model.len() / 3;
        let part = read_all(e, id, mid as u64, Some(7)).await.unwrap();
        assert_eq!(part, &model[mid..mid + 7]);
    }
}

pub(super) async fn upload(e: &Engine, data: &[u8], appender: bool) -> FileId {
    upload_body(e, data.len() as u64, appender, &mut VecBody::new(data)).await
}

/// Upload `len` bytes from `body`.
pub(super) async fn upload_body(
    e: &Engine,
    len: u64,
    appender: bool,
    body: &mut impl Body,
) -> FileId {
    let st = e
        .upload(len, "bin", vec![MetaEntry::new("k", "v")], appender, body)
        .await
        .unwrap();
    FileId::parse(&st.file_id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_op_round_trips_at_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    for &size in &[
        0usize,
        1,
        4096,
        THRESHOLD as usize,
        THRESHOLD as usize + 1,
        (1 << 20) + 1,
    ] {
        let mut model = pattern(size, size as u8);
        let id = upload(&e, &model, true).await;
        check(&e, &id, &model).await;
        let (meta, v0) = e.get_meta(&id).await.unwrap();
        assert_eq!(meta, vec![MetaEntry::new("k", "v")]);
        assert!(e.exists(&id).await.unwrap());

        // append (in place for small files with reserve, else rewrite/migrate)
        let add = pattern(1000, 3);
        let st = e
            .append(&id, 1000, Some(v0), &mut VecBody::new(&add))
            .await
            .unwrap();
        model.extend_from_slice(&add);
        assert!(st.version > v0);
        check(&e, &id, &model).await;

        // modify inside and extending past the end
        let patch = pattern(500, 9);
        let off = model.len() / 2;
        e.modify(&id, off as u64, 500, None, &mut VecBody::new(&patch))
            .await
            .unwrap();
        let need = off + 500;
        if model.len() < need {
            model.resize(need, 0);
        }
        model[off..off + 500].copy_from_slice(&patch);
        check(&e, &id, &model).await;
        let tail = pattern(300, 11);
        let end = model.len();
        e.modify(&id, end as u64 - 100, 300, None, &mut VecBody::new(&tail))
            .await
            .unwrap();
        model.truncate(end - 100);
        model.extend_from_slice(&tail);
        check(&e, &id, &model).await;

        // truncate: shrink, extend with zeros
        let short = model.len() / 2;
        e.truncate(&id, short as u64, None).await.unwrap();
        model.truncate(short);
        check(&e, &id, &model).await;
        e.truncate(&id, short as u64 + 5000, None).await.unwrap();
        model.resize(short + 5000, 0);
        check(&e, &id, &model).await;

        // metadata
        e.set_meta(&id, vec![MetaEntry::new("a", "1")], MetaMode::Merge, None)
            .await
            .unwrap();
        let (meta, _) = e.get_meta(&id).await.unwrap();
        assert_eq!(
            meta,
            vec![MetaEntry::new("k", "v"), MetaEntry::new("a", "1")]
        );
        e.set_meta(
            &id,
            vec![MetaEntry::new("b", "2")],
            MetaMode::Overwrite,
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            e.get_meta(&id).await.unwrap().0,
            vec![MetaEntry::new("b", "2")]
        );
        check(&e, &id, &model).await;

        let v = e.stat(&id).await.unwrap().version;
        let dv = e.delete(&id, Some(v)).await.unwrap();
        assert!(dv > v);
        assert_eq!(e.data_version(), dv);
        assert_eq!(e.stat(&id).await.unwrap_err().code(), ErrorCode::NotFound);
        assert!(!e.exists(&id).await.unwrap());
    }
    // Non-appender files refuse append and truncate.
    let id = upload(&e, b"hello", false).await;
    let err = e
        .append(&id, 1, None, &mut VecBody::new(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotAppender);
    assert_eq!(
        e.truncate(&id, 0, None).await.unwrap_err().code(),
        ErrorCode::NotAppender
    );
    // Bad requests.
    let err = e
        .modify(&id, 6, 1, None, &mut VecBody::new(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    let err = e
        .upload(10, "", vec![], false, &mut VecBody::new(b"short"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    let err = e
        .upload(2, "", vec![], false, &mut VecBody::new(b"long"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    let big = vec![MetaEntry::new("k", "x".repeat(MAX_VALUE + 1))];
    let err = e
        .upload(1, "", big, false, &mut VecBody::new(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    let other = FileId::new("g2", 0, 1, 2, 3, 4, 5, "").unwrap();
    assert_eq!(
        e.stat(&other).await.unwrap_err().code(),
        ErrorCode::WrongGroup
    );
    let far = FileId::new("g1", 9, 1, 2, 3, 4, 5, "").unwrap();
    assert_eq!(
        e.stat(&far).await.unwrap_err().code(),
        ErrorCode::InvalidFileId
    );
    check(&e, &id, b"hello").await;
    e.shutdown().await.unwrap();
}

const MAX_VALUE: usize = super::write::MAX_META_VALUE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    for size in [100usize, THRESHOLD as usize + 10] {
        let model = pattern(size, 1);
        let id = upload(&e, &model, true).await;
        let before = e.stat(&id).await.unwrap();
        let wrong = Some(before.version + 1);
        let mut body = VecBody::new(b"abc");
        let err = e.append(&id, 3, wrong, &mut body).await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::VersionMismatch);
        assert!(
            err.to_string()
                .contains(&format!("actual {}", before.version)),
            "{err}"
        );
        assert_eq!(body.taken, 0, "body must not be consumed");
        let err = e
            .modify(&id, 0, 3, wrong, &mut VecBody::new(b"abc"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::VersionMismatch);
        assert_eq!(
            e.truncate(&id, 1, wrong).await.unwrap_err().code(),
            ErrorCode::VersionMismatch
        );
        let err = e
            .set_meta(&id, vec![], MetaMode::Overwrite, wrong)
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::VersionMismatch);
        assert_eq!(
            e.delete(&id, wrong).await.unwrap_err().code(),
            ErrorCode::VersionMismatch
        );
        assert_eq!(e.stat(&id).await.unwrap(), before);
        check(&e, &id, &model).await;
    }
    e.shutdown().await.unwrap();
}

type Model = Vec<(FileId, Vec<u8>)>;

/// A mixed workload over small and large files; returns the live files.
async fn workload(e: &Engine, seed: u8) -> Model {
    let mut live = Model::new();
    for (i, size) in [0usize, 1, 4096, 70_000, THRESHOLD as usize + 1, 600_000]
        .into_iter()
        .enumerate()
    {
        let s = seed.wrapping_add(i as u8);
        let mut data = pattern(size, s);
        let id = upload(e, &data, true).await;
        if i % 2 == 0 {
            let add = pattern(2000, s ^ 0x55);
            e.append(&id, 2000, None, &mut VecBody::new(&add))
                .await
                .unwrap();
            data.extend_from_slice(&add);
        }
        if data.len() > 100 {
            let p = pattern(50, s ^ 0x77);
            e.modify(&id, 10, 50, None, &mut VecBody::new(&p))
                .await
                .unwrap();
            data[10..60].copy_from_slice(&p);
        }
        if i == 3 {
            e.truncate(&id, 1234, None).await.unwrap();
            data.truncate(1234);
        }
        live.push((id, data));
    }
    let doomed = upload(e, &pattern(5000, seed), false).await;
    e.delete(&doomed, None).await.unwrap();
    let doomed = upload(e, &pattern(THRESHOLD as usize * 2, seed), false).await;
    e.delete(&doomed, None).await.unwrap();
    live
}

async fn check_model(e: &Engine, model: &Model) {
    for (id, data) in model {
        check(e, id, data).await;
    }
    assert_eq!(e.file_count(), model.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_shutdown_and_after_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2);
    let e = Engine::open(cfg.clone()).unwrap();
    let mut model = workload(&e, 1).await;
    let v = e.data_version();
    e.shutdown().await.unwrap();
    drop(e);

    let e = Engine::open(cfg.clone()).unwrap();
    assert_eq!(e.data_version(), v);
    check_model(&e, &model).await;
    // More work after the checkpoint, then a crash (no shutdown).
    model.extend(workload(&e, 50).await);
    let v2 = e.data_version();
    assert!(v2 > v);
    drop(e);

    // Torn binlog tail: half a record.
    let bdir = cfg.meta_dir.join("binlog");
    let seg = std::fs::read_dir(&bdir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .max()
        .unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    let rec = binlog::encode(
        v2 + 1,
        binlog::op::DELETE,
        &model[0].0.to_string(),
        v2 + 1,
        None,
        0,
    );
    f.write_all(&rec[..rec.len() - 5]).unwrap();
    drop(f);
    // Garbage after the end of a chunk file, and stale bytes beyond the
    // committed length of a large file.
    for s in &cfg.store_paths {
        let chunks = s.join("chunks");
        for c in std::fs::read_dir(&chunks).unwrap() {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(c.unwrap().path())
                .unwrap();
            f.write_all(&pattern(3000, 99)).unwrap();
        }
    }
    let (large_id, large_data) = model
        .iter()
        .find(|(_, d)| d.len() as u64 > THRESHOLD)
        .cloned()
        .unwrap();
    let lpath = cfg.store_paths[large_id.store_path() as usize]
        .join("data")
        .join(large_id.relative_path());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&lpath)
        .unwrap();
    f.write_all(b"uncommitted append").unwrap();
    drop(f);

    let e = Engine::open(cfg.clone()).unwrap();
    assert_eq!(e.data_version(), v2, "torn record must be cut");
    check_model(&e, &model).await;
    assert_eq!(
        std::fs::metadata(&lpath).unwrap().len(),
        large_data.len() as u64
    );
    // The engine keeps working on the repaired log, and again after a crash.
    model.extend(workload(&e, 100).await);
    drop(e);
    let e = Engine::open(cfg.clone()).unwrap();
    check_model(&e, &model).await;
    // Replay from scratch if the checkpoint is unusable.
    e.shutdown().await.unwrap();
    drop(e);
    std::fs::write(cfg.meta_dir.join("index.ckpt"), b"garbage").unwrap();
    let e = Engine::open(cfg).unwrap();
    check_model(&e, &model).await;
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_large_modify_patch_is_redone_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    let mut data = pattern(THRESHOLD as usize * 2, 4);
    let id = upload(&e, &data, false).await;
    let p = pattern(10_000, 5);
    e.modify(&id, 1000, 10_000, None, &mut VecBody::new(&p))
        .await
        .unwrap();
    data[1000..11_000].copy_from_slice(&p);
    let rec = e
        .binlog_records_since(0, 100)
        .unwrap()
        .into_iter()
        .rev()
        .find(|r| r.op == binlog::op::MODIFY)
        .unwrap();
    drop(e);
    // Simulate a crash after the binlog record but before the patch reached
    // the file: old bytes in place, the patch file still there.
    let lpath = cfg.store_paths[0].join("data").join(id.relative_path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&lpath)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 10_000], 1000).unwrap();
    let ppath = write::patch_path(&cfg.store_paths[0].join("tmp"), rec.patch);
    let mut pf = std::fs::File::create(&ppath).unwrap();
    pf.write_all(&write::encode_patch_header(
        &id.to_string(),
        1000,
        10_000,
        crc32fast::hash(&p),
    ))
    .unwrap();
    pf.write_all(&p).unwrap();
    drop(pf);
    let e = Engine::open(cfg).unwrap();
    check(&e, &id, &data).await;
    assert!(!ppath.exists());
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freed_space_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(upload(&e, &pattern(10_000, i), false).await);
    }
    let chunk_len = || {
        std::fs::read_dir(cfg.store_paths[0].join("chunks"))
            .unwrap()
            .map(|c| c.unwrap().metadata().unwrap().len())
            .sum::<u64>()
    };
    let before = chunk_len();
    // A reader keeps its extent alive until it is done.
    let mut reader = e.open_read(&ids[0], 0, None).await.unwrap();
    for id in &ids {
        e.delete(id, None).await.unwrap();
    }
    assert!(e.chunk_free_bytes() >= 19 * 10_000);
    let mut again = Vec::new();
    for i in 0..19 {
        again.push((
            upload(&e, &pattern(10_000, 100 + i), false).await,
            pattern(10_000, 100 + i),
        ));
    }
    assert_eq!(chunk_len(), before, "new files must reuse freed extents");
    let mut got = Vec::new();
    while let Some(c) = reader.next_chunk(4096).await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, pattern(10_000, 0));
    drop(reader);
    for (id, d) in &again {
        check(&e, id, d).await;
    }
    // Free space is rebuilt at start: restart and reuse again.
    e.shutdown().await.unwrap();
    drop(e);
    let e = Engine::open(cfg.clone()).unwrap();
    assert!(e.chunk_free_bytes() >= 10_000);
    let id = upload(&e, &pattern(10_000, 1), false).await;
    assert_eq!(chunk_len(), before);
    check(&e, &id, &pattern(10_000, 1)).await;
    e.shutdown().await.unwrap();
}

/// Small records land in chunk space zeroed ahead (the chunk file does not
/// grow per record), the binlog is zeroed ahead of its end, and both are
/// read back right after a shutdown and after a crash, the binlog's zeroed
/// tail cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_in_space_zeroed_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.chunk_file_size = 64 << 20;
    let chunk_len = |cfg: &EngineConfig| {
        std::fs::read_dir(cfg.store_paths[0].join("chunks"))
            .unwrap()
            .map(|c| c.unwrap().metadata().unwrap().len())
            .sum::<u64>()
    };
    let segment = |cfg: &EngineConfig| {
        std::fs::read_dir(cfg.meta_dir.join("binlog"))
            .unwrap()
            .map(|d| d.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("binlog."))
            .max()
            .unwrap()
    };
    let e = Engine::open(cfg.clone()).unwrap();
    let mut all = vec![(upload(&e, &pattern(4096, 1), false).await, pattern(4096, 1))];
    // The first record grew the chunk file and started a prefill.
    for _ in 0..500 {
        if !e.stores[0]
            .prefilling
            .load(std::sync::atomic::Ordering::Acquire)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let filled = chunk_len(&cfg);
    assert!(
        filled >= chunk::PREFILL,
        "chunk space zeroed ahead: {filled}"
    );
    assert!(e.chunk_free_bytes() >= chunk::PREFILL);
    for i in 0..200u8 {
        all.push((upload(&e, &pattern(4096, i), false).await, pattern(4096, i)));
    }
    assert_eq!(
        chunk_len(&cfg),
        filled,
        "records must land in the zeroed space"
    );
    let seg_len = std::fs::metadata(segment(&cfg)).unwrap().len();
    assert!(seg_len >= 1 << 20, "binlog zeroed ahead: {seg_len}");
    let v = e.data_version();

    // A crash: the zeroed tail is cut, every record is there.
    drop(e);
    let e = Engine::open(cfg.clone()).unwrap();
    assert_eq!(e.data_version(), v);
    assert!(std::fs::metadata(segment(&cfg)).unwrap().len() < seg_len);
    for (id, d) in &all {
        check(&e, id, d).await;
    }
    // It goes on writing (into the zeroed chunk space, now free space), and
    // after a clean shutdown the same holds.
    for i in 0..50u8 {
        all.push((
            upload(&e, &pattern(4096, 200 - i), false).await,
            pattern(4096, 200 - i),
        ));
    }
    assert_eq!(chunk_len(&cfg), filled);
    let v = e.data_version();
    e.shutdown().await.unwrap();
    drop(e);
    let e = Engine::open(cfg.clone()).unwrap();
    assert_eq!(e.data_version(), v);
    for (id, d) in &all {
        check(&e, id, d).await;
    }
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_space_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    let id = upload(&e, b"abc", true).await;
    e.shutdown().await.unwrap();
    drop(e);
    cfg.reserved_space = u64::MAX / 2;
    let e = Engine::open(cfg).unwrap();
    // Anything that needs more of the file system is refused before its
    // body is read (chunk space already zeroed ahead, like freed space, is
    // the store's already: a small record that fits there is taken).
    let size = THRESHOLD.max(e.chunk_free_bytes()) + 1;
    let data = vec![7u8; size as usize];
    let mut body = VecBody::new(&data);
    let err = e
        .upload(size, "", vec![], false, &mut body)
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoSpace);
    assert_eq!(body.taken, 0);
    let err = e
        .append(&id, 5, None, &mut VecBody::new(b"hello"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::NoSpace);
    assert_eq!(e.file_count(), 1);
    check(&e, &id, b"abc").await;
    assert!(e.usage()[0].free_bytes > 0);
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    let before = e.counters().fsyncs;
    let mut tasks = Vec::new();
    for t in 0..32u8 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..8u8 {
                let d = pattern(4096, t.wrapping_mul(8).wrapping_add(i));
                out.push((upload(&e, &d, false).await, d));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let ops = all.len() as u64;
    let fsyncs = e.counters().fsyncs - before;
    // Without group commit: 2 fsyncs per upload (data, binlog).
    assert!(fsyncs < ops, "fsyncs {fsyncs} for {ops} uploads");
    for (id, d) in &all {
        check(&e, id, d).await;
    }
    let versions: std::collections::HashSet<u64> =
        futures_versions(&e, &all).await.into_iter().collect();
    assert_eq!(versions.len(), all.len(), "data versions are unique");
    e.shutdown().await.unwrap();
}

async fn futures_versions(e: &Engine, all: &[(FileId, Vec<u8>)]) -> Vec<u64> {
    let mut v = Vec::new();
    for (id, _) in all {
        v.push(e.stat(id).await.unwrap().version);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_record_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.large_file_threshold = 6 << 20;
    cfg.chunk_file_size = 16 << 20;
    let e = Engine::open(cfg.clone()).unwrap();
    let small = pattern(4096, 1);
    let id = upload(&e, &small, false).await;
    let bigsmall = pattern(5 << 20, 2); // above the inline-verify size
    let id2 = upload(&e, &bigsmall, false).await;
    check(&e, &id2, &bigsmall).await;
    let chunk = cfg.store_paths[0].join("chunks").join(chunk::chunk_name(0));
    let raw = std::fs::read(&chunk).unwrap();
    let h = chunk::decode_header(&raw[..128]).unwrap();
    assert_eq!(h.file_id, id.to_string());
    assert_eq!(h.len, 4096);
    assert_eq!(h.data_crc, crc32fast::hash(&small));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap();
    let flip =
        |off: u64, byte: u8| std::os::unix::fs::FileExt::write_all_at(&f, &[byte], off).unwrap();
    flip(128 + 100, small[100] ^ 0xff);
    let err = e.open_read(&id, 0, None).await.err().unwrap();
    assert_eq!(err.code(), ErrorCode::Io);
    let err = e
        .modify(&id, 0, 1, None, &mut VecBody::new(b"x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Io, "no rewrite from corrupt bytes");
    // The big record: corrupt its last byte; streaming must fail before
    // handing out the final piece.
    let off2 = 128 + 4096 + 128 + (5 << 20) - 1;
    flip(off2 as u64, bigsmall[(5 << 20) - 1] ^ 0xff);
    let mut r = e.open_read(&id2, 0, None).await.unwrap();
    let mut got = 0usize;
    let res = loop {
        match r.next_chunk(1 << 20).await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert_eq!(res.unwrap_err().code(), ErrorCode::Io);
    assert!(got < bigsmall.len());
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_and_batch_policy_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1);
    cfg.io_uring = false;
    cfg.fsync = FsyncPolicy::Batch;
    let e = Engine::open(cfg.clone()).unwrap();
    let model = workload(&e, 7).await;
    check_model(&e, &model).await;
    e.shutdown().await.unwrap();
    drop(e);
    cfg.fsync = FsyncPolicy::Never;
    let e = Engine::open(cfg).unwrap();
    check_model(&e, &model).await;
    assert_eq!(
        e.upload(1, "", vec![], false, &mut VecBody::new(b"z"))
            .await
            .unwrap()
            .size,
        1
    );
    e.shutdown().await.unwrap();
    let err = e
        .upload(1, "", vec![], false, &mut VecBody::new(b"z"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binlog_records_carry_versions_and_ops() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    let id = upload(&e, b"abc", true).await;
    e.append(&id, 2, None, &mut VecBody::new(b"de"))
        .await
        .unwrap();
    e.set_meta(&id, vec![], MetaMode::Overwrite, None)
        .await
        .unwrap();
    e.truncate(&id, 1, None).await.unwrap();
    let dv = e.delete(&id, None).await.unwrap();
    let recs = e.binlog_records_since(0, 100).unwrap();
    let ops: Vec<u8> = recs.iter().map(|r| r.op).collect();
    assert_eq!(ops, b"CASTD".to_vec());
    for w in recs.windows(2) {
        assert_eq!(w[1].version, w[0].version + 1);
    }
    assert_eq!(recs.last().unwrap().version, dv);
    assert_eq!(e.binlog_records_since(dv - 1, 100).unwrap().len(), 1);
    assert!(recs.iter().all(|r| r.file_id == id.to_string()));
    e.shutdown().await.unwrap();
}

/// Where a small file's data lives: chunk file path and data offset.
pub(super) fn small_data_at(
    e: &Engine,
    cfg: &EngineConfig,
    id: &FileId,
) -> (std::path::PathBuf, u64) {
    let idx = e.index.read();
    match idx.get(id).unwrap().loc {
        index::Loc::Small {
            store,
            chunk,
            offset,
            ..
        } => (
            cfg.store_paths[store as usize]
                .join("chunks")
                .join(chunk::chunk_name(chunk)),
            offset + chunk::HEADER_LEN,
        ),
        index::Loc::Large { .. } => panic!("{id} is not small"),
    }
}

/// Rewrite the binlog with every record's commit watermark lowered to at
/// most `to`: as if the records after `to` had been written while their
/// data was still in flight.
fn lower_watermarks(cfg: &EngineConfig, to: u64) {
    let bdir = cfg.meta_dir.join("binlog");
    let mut segs: std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> = Default::default();
    binlog::recover(&bdir, 0, |r, path| {
        let frame = binlog::encode_committed(
            r.version,
            r.op,
            &r.file_id,
            r.file_version,
            r.state.as_ref(),
            r.patch,
            r.committed.min(to),
        );
        assert_eq!(frame.len(), r.raw.len());
        segs.entry(path.to_path_buf()).or_default().extend(frame);
    })
    .unwrap();
    for (p, b) in segs {
        std::fs::write(p, b).unwrap();
    }
}

fn scribble(path: &Path, off: u64, len: usize) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0x5a; len], off).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_without_its_data_at_the_tail_is_voided() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    let a = pattern(3000, 1);
    let b = pattern(5000, 2);
    let ia = upload(&e, &a, false).await;
    let ib = upload(&e, &b, true).await;
    let v = e.data_version();
    // Sequential uploads: the last record is above the watermark the
    // records carry (its own data was in flight when it was built).
    let recs = e.binlog_records_since(0, 10).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].committed, recs[0].version);
    let (chunk, off_b) = small_data_at(&e, &cfg, &ib);
    drop(e); // crash

    // The data of the last record never reached the disk: the chunk file
    // ends before it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap()
        .set_len(off_b + 100)
        .unwrap();
    let e = Engine::open(cfg.clone()).unwrap();
    check(&e, &ia, &a).await;
    assert!(!e.exists(&ib).await.unwrap(), "unacknowledged record kept");
    assert_eq!(e.file_count(), 1);
    assert_eq!(e.data_version(), v, "versions are not reused");
    let recs = e.binlog_records_since(0, 10).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.op).collect::<Vec<_>>(),
        b"CV".to_vec()
    );
    assert_eq!(recs[1].version, v);
    // The void is durable: more work, a crash, and the state still holds.
    let c = pattern(4000, 3);
    let ic = upload(&e, &c, false).await;
    assert!(e.data_version() > v);
    drop(e);
    let e = Engine::open(cfg.clone()).unwrap();
    check(&e, &ia, &a).await;
    check(&e, &ic, &c).await;
    assert!(!e.exists(&ib).await.unwrap());
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tail_record_is_voided_and_later_good_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2);
    let e = Engine::open(cfg.clone()).unwrap();
    // Small first files so the later, larger ones never reuse their space.
    let a = pattern(1000, 1);
    let ia = upload(&e, &a, false).await;
    let w = e.data_version();
    let b = pattern(3000, 2);
    let ib = upload(&e, &b, false).await;
    let a2 = pattern(1000, 9);
    e.modify(&ia, 0, 1000, None, &mut VecBody::new(&a2))
        .await
        .unwrap();
    let c = pattern(3000, 3);
    let ic = upload(&e, &c, false).await;
    let mut d = pattern(3000, 4);
    let id = upload(&e, &d, true).await;
    e.append(&id, 10, None, &mut VecBody::new(&pattern(10, 5)))
        .await
        .unwrap();
    d.extend(pattern(10, 5));
    let (chunk_b, off_b) = small_data_at(&e, &cfg, &ib);
    let (chunk_a, off_a) = small_data_at(&e, &cfg, &ia);
    let all = e.binlog_records_since(0, 100).unwrap();
    drop(e); // crash

    // Everything after `w` was written while its data was in flight; the
    // data of B and of A's modify did not make it, C's and D's did.
    lower_watermarks(&cfg, w);
    scribble(&chunk_b, off_b + 10, 20);
    scribble(&chunk_a, off_a, 1000);
    let e = Engine::open(cfg.clone()).unwrap();
    check(&e, &ia, &a).await;
    assert!(!e.exists(&ib).await.unwrap());
    check(&e, &ic, &c).await;
    check(&e, &id, &d).await;
    let ops: Vec<u8> = e
        .binlog_records_since(0, 100)
        .unwrap()
        .iter()
        .map(|r| r.op)
        .collect();
    assert_eq!(ops, b"CVVCCA".to_vec());
    assert_eq!(all.len(), ops.len());
    // Replaying from scratch (no checkpoint) gives the same state.
    e.shutdown().await.unwrap();
    drop(e);
    std::fs::remove_file(cfg.meta_dir.join("index.ckpt")).unwrap();
    let e = Engine::open(cfg.clone()).unwrap();
    check(&e, &ia, &a).await;
    assert!(!e.exists(&ib).await.unwrap());
    check(&e, &ic, &c).await;
    check(&e, &id, &d).await;
    e.shutdown().await.unwrap();
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Engine>();
    is::<Arc<Engine>>();
}
