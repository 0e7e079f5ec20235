//! Rollback to a kept version at open (`rollback.rs`), on real disks.

use std::path::Path;

use bytes::Bytes;
use proto::FileId;

use super::tests::{check, config, pattern, upload, VecBody, THRESHOLD};
use super::*;

struct Kept {
    small: (FileId, Vec<u8>),
    deleted: (FileId, Vec<u8>),
    appender: (FileId, Vec<u8>),
    large: (FileId, Vec<u8>),
    version: u64,
}

/// Files at the kept version, then a checkpoint there.
async fn kept_state(e: &Engine) -> Kept {
    let small = pattern(3000, 1);
    let deleted = pattern(5000, 2);
    let appender = pattern(700, 3);
    let large = pattern(THRESHOLD as usize + 5000, 4);
    let k = Kept {
        small: (upload(e, &small, true).await, small),
        deleted: (upload(e, &deleted, false).await, deleted),
        appender: (upload(e, &appender, true).await, appender),
        large: (upload(e, &large, true).await, large),
        version: 0,
    };
    e.checkpoint().unwrap();
    Kept {
        version: e.data_version(),
        ..k
    }
}

/// Versions past the kept one touching every kind of file, a new file,
/// and a checkpoint past the kept version. The delete comes last: space it
/// frees (merged with free space next to it) is reused by nothing, so no
/// kept byte is overwritten. Returns the new file.
async fn diverge(e: &Engine, k: &Kept) -> FileId {
    let new = upload(e, &pattern(20_000, 7), false).await;
    let more = pattern(900, 9);
    e.append(&k.appender.0, 900, None, &mut VecBody::new(&more))
        .await
        .unwrap();
    e.modify(
        &k.small.0,
        10,
        100,
        None,
        &mut VecBody::new(&pattern(100, 8)),
    )
    .await
    .unwrap();
    e.append(&k.large.0, 900, None, &mut VecBody::new(&more))
        .await
        .unwrap();
    e.delete(&k.deleted.0, None).await.unwrap();
    assert_eq!(e.data_version(), k.version + 5);
    e.checkpoint().unwrap();
    new
}

fn marker(meta: &Path) -> bool {
    meta.join("ROLLBACK").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_drops_later_versions_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2);
    let e = Engine::open(cfg.clone()).unwrap();
    let k = kept_state(&e).await;
    let new = diverge(&e, &k).await;
    drop(e); // a crash: no shutdown

    request_rollback(&cfg.meta_dir, k.version).unwrap();
    let e = Engine::open(cfg.clone()).unwrap();
    let r = e.rolled_back().expect("a rollback report");
    assert_eq!(r.kept, k.version);
    assert_eq!(r.touched, 5);
    assert!(r.broken.is_empty(), "{:?}", r.broken);
    assert!(!marker(&cfg.meta_dir));
    assert_eq!(e.data_version(), k.version);
    assert_eq!(e.next_version(), k.version + 1);
    for (id, data) in [&k.small, &k.deleted, &k.appender, &k.large] {
        check(&e, id, data).await;
    }
    assert!(!e.exists(&new).await.unwrap(), "a dropped upload is gone");
    // The large file lost the dropped append on disk too.
    let lpath = cfg.store_paths[k.large.0.store_path() as usize]
        .join("data")
        .join(k.large.0.relative_path());
    assert_eq!(
        std::fs::metadata(&lpath).unwrap().len(),
        k.large.1.len() as u64
    );

    // The engine goes on from the kept version, and keeps it all across a
    // clean restart (no rollback again).
    let next = upload(&e, &pattern(4000, 5), false).await;
    assert_eq!(e.stat(&next).await.unwrap().version, k.version + 1);
    e.shutdown().await.unwrap();
    drop(e);
    let e = Engine::open(cfg.clone()).unwrap();
    assert!(e.rolled_back().is_none());
    assert_eq!(e.data_version(), k.version + 1);
    check(&e, &k.appender.0, &k.appender.1).await;
    check(&e, &next, &pattern(4000, 5)).await;
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_that_finds_a_kept_file_overwritten_reports_it_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    let k = kept_state(&e).await;
    let kept_loc = e.index.read().get(&k.small.0).map(|x| x.loc);
    diverge(&e, &k).await;
    drop(e);
    // The dropped modify moved the file, freeing its kept extent for other
    // dropped versions to reuse: simulated by scribbling over it.
    let Some(index::Loc::Small { chunk, offset, .. }) = kept_loc else {
        panic!("the kept file is small");
    };
    let path = cfg.store_paths[0]
        .join("chunks")
        .join(chunk::chunk_name(chunk));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 64], offset + chunk::HEADER_LEN + 5)
        .unwrap();
    drop(f);

    // And the large file patched over in place (simulated the same way).
    let lpath = cfg.store_paths[0]
        .join("data")
        .join(k.large.0.relative_path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&lpath)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 64], 1000).unwrap();
    drop(f);

    // Reported, the marker stays, and so every time it opens (as after a
    // crash before the files were restored).
    request_rollback(&cfg.meta_dir, k.version).unwrap();
    let mut want = vec![k.small.0.to_string(), k.large.0.to_string()];
    want.sort();
    for _ in 0..2 {
        let e = Engine::open(cfg.clone()).unwrap();
        let r = e.rolled_back().expect("a rollback report");
        let mut got = r.broken.clone();
        got.sort();
        assert_eq!(got, want);
        assert_eq!(r.touched, 5);
        assert!(!r.must_recopy());
        assert!(marker(&cfg.meta_dir));
        assert_eq!(e.data_version(), k.version);
        drop(e);
    }

    // Restored from copies at the kept versions (other content is refused
    // and changes nothing), then the rollback is complete.
    let e = Engine::open(cfg.clone()).unwrap();
    let (small_v, large_v) = (
        e.kept_version(&k.small.0).unwrap(),
        e.kept_version(&k.large.0).unwrap(),
    );
    let wrong = Bytes::from(pattern(k.small.1.len(), 99));
    assert!(!e.restore_kept(&k.small.0, small_v, wrong).await.unwrap());
    let right = Bytes::from(k.small.1.clone());
    assert!(!e
        .restore_kept(&k.small.0, small_v + 1, right.clone())
        .await
        .unwrap());
    assert!(e.restore_kept(&k.small.0, small_v, right).await.unwrap());
    let large = Bytes::from(k.large.1.clone());
    assert!(e.restore_kept(&k.large.0, large_v, large).await.unwrap());
    e.complete_rollback().unwrap();
    assert!(e.rollback_broken().is_empty());
    assert!(!marker(&cfg.meta_dir));
    check(&e, &k.small.0, &k.small.1).await;
    check(&e, &k.large.0, &k.large.1).await;
    drop(e); // a crash: the restores are durable, no rollback again
    let e = Engine::open(cfg.clone()).unwrap();
    assert!(e.rolled_back().is_none());
    for (id, data) in [&k.small, &k.appender, &k.large] {
        check(&e, id, data).await;
    }
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_marker_that_is_not_a_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    upload(&e, b"abc", false).await;
    e.shutdown().await.unwrap();
    drop(e);
    std::fs::write(cfg.meta_dir.join("ROLLBACK"), "twelve\n").unwrap();
    let err = Engine::open(cfg.clone()).err().expect("refused");
    assert!(err.to_string().contains("not a version"), "{err}");
    // Nothing was changed: without the marker the engine opens as before.
    std::fs::remove_file(cfg.meta_dir.join("ROLLBACK")).unwrap();
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.data_version(), 1);
    e.shutdown().await.unwrap();
}

/// Two uploads, the last one's data lost in a crash (its record durable):
/// recovery voids it. Returns the first file and the voided version.
async fn voided_tail(cfg: &EngineConfig) -> ((FileId, Vec<u8>), u64) {
    let e = Engine::open(cfg.clone()).unwrap();
    let a = pattern(3000, 1);
    let ia = upload(&e, &a, false).await;
    let ib = upload(&e, &pattern(5000, 2), true).await;
    let v = e.data_version();
    let (chunk, off) = super::tests::small_data_at(&e, cfg, &ib);
    drop(e); // crash
    std::fs::OpenOptions::new()
        .write(true)
        .open(&chunk)
        .unwrap()
        .set_len(off + 100)
        .unwrap();
    ((ia, a), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voided_version_is_remembered_until_a_rollback_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let ((ia, a), v) = voided_tail(&cfg).await;
    let e = Engine::open(cfg.clone()).unwrap();
    assert_eq!(e.voided_from(), Some(v));
    assert_eq!(e.data_version(), v, "the void keeps its number");
    drop(e);
    // Still known after another start (the void itself is not redone).
    let e = Engine::open(cfg.clone()).unwrap();
    assert_eq!(e.voided_from(), Some(v));
    e.shutdown().await.unwrap();
    drop(e);
    // A rollback below it drops the void and with it the note.
    request_rollback(&cfg.meta_dir, v - 1).unwrap();
    let e = Engine::open(cfg.clone()).unwrap();
    assert!(e.rolled_back().is_some_and(|r| r.broken.is_empty()));
    assert_eq!(e.voided_from(), None);
    assert_eq!(e.data_version(), v - 1);
    check(&e, &ia, &a).await;
    e.shutdown().await.unwrap();
    drop(e);
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.voided_from(), None);
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voided_version_is_forgotten_when_the_history_becomes_the_groups() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let (_, v) = voided_tail(&cfg).await;
    let e = Engine::open(cfg.clone()).unwrap();
    assert_eq!(e.voided_from(), Some(v));
    e.forget_voided().unwrap();
    assert_eq!(e.voided_from(), None);
    e.shutdown().await.unwrap();
    drop(e);
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.voided_from(), None);
    assert_eq!(e.data_version(), v);
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_past_the_kept_history_changes_nothing_and_asks_for_a_recopy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    let k = kept_state(&e).await;
    let new = diverge(&e, &k).await;
    let v = e.data_version();
    e.shutdown().await.unwrap(); // a checkpoint past the kept version
    drop(e);
    // The log no longer starts at version 1 (as if older segments were
    // gone): the index at the kept version cannot be rebuilt.
    let bdir = cfg.meta_dir.join("binlog");
    std::fs::rename(
        bdir.join(format!("binlog.{:020}", 1)),
        bdir.join(format!("binlog.{:020}", 2)),
    )
    .unwrap();
    request_rollback(&cfg.meta_dir, k.version).unwrap();
    let e = Engine::open(cfg.clone()).unwrap();
    let r = e.rolled_back().expect("a rollback report");
    assert!(r.history_missing && r.must_recopy(), "{r:?}");
    assert!(marker(&cfg.meta_dir), "the marker stays until the re-copy");
    assert_eq!(e.data_version(), v, "nothing was dropped");
    assert!(e.exists(&new).await.unwrap());
    e.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_deleted_by_a_dropped_version_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1);
    let e = Engine::open(cfg.clone()).unwrap();
    let data = pattern(THRESHOLD as usize + 777, 6);
    let id = upload(&e, &data, false).await;
    let kept = e.data_version();
    e.delete(&id, None).await.unwrap();
    drop(e);

    request_rollback(&cfg.meta_dir, kept).unwrap();
    let e = Engine::open(cfg.clone()).unwrap();
    let r = e.rolled_back().expect("a rollback report");
    assert_eq!(r.broken, vec![id.to_string()], "its file is gone");
    let v = e.kept_version(&id).unwrap();
    assert!(e
        .restore_kept(&id, v, Bytes::from(data.clone()))
        .await
        .unwrap());
    e.complete_rollback().unwrap();
    check(&e, &id, &data).await;
    drop(e);
    let e = Engine::open(cfg).unwrap();
    assert!(e.rolled_back().is_none());
    check(&e, &id, &data).await;
    e.shutdown().await.unwrap();
}
