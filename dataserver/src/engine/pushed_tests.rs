//! Async replication at the engine level: a source engine's files pushed
//! to a peer engine by [`Engine::apply_pushed`].

use proto::{AsyncItem, FileId, MetaEntry, MetaMode, ReplOp, ReplRecord};

use super::tests::{config, pattern, read_all, upload, VecBody, THRESHOLD};
use super::*;

fn engines(dir: &std::path::Path) -> (Arc<Engine>, Arc<Engine>) {
    let mut a = config(&dir.join("a"), 1);
    a.server_id = 1;
    let mut b = config(&dir.join("b"), 1);
    b.server_id = 2;
    (Engine::open(a).unwrap(), Engine::open(b).unwrap())
}

/// The source's current state of `id` as a pushed install, with its bytes.
async fn install_of(src: &Engine, id: &FileId) -> (ReplRecord, Vec<u8>) {
    let snap = src.snapshot_file(id).await.unwrap().unwrap();
    let mut bytes = Vec::new();
    for c in snap.content.chunks().await.unwrap() {
        bytes.extend_from_slice(&c);
    }
    let rec = ReplRecord {
        version: snap.version,
        file_id: id.to_string(),
        op: ReplOp::Install,
        prev_version: 0,
        file_version: snap.version,
        body_len: snap.state.size,
        state: Some(snap.state),
        client_id: 0,
        seq: 0,
    };
    (rec, bytes)
}

fn delete_of(id: &FileId, file_version: u64) -> ReplRecord {
    ReplRecord {
        version: file_version,
        file_id: id.to_string(),
        op: ReplOp::Delete,
        prev_version: 0,
        file_version,
        state: None,
        body_len: 0,
        client_id: 0,
        seq: 0,
    }
}

/// The op codes of `e`'s binlog, in order.
fn ops(e: &Engine) -> Vec<u8> {
    e.binlog_records_since(0, 1000)
        .unwrap()
        .iter()
        .map(|r| r.op)
        .collect()
}

#[tokio::test]
async fn a_pushed_install_is_taken_only_when_newer() {
    let dir = tempfile::tempdir().unwrap();
    let (src, peer) = engines(dir.path());
    let data = pattern(5000, 1);
    let id = upload(&src, &data, true).await;
    assert_eq!(id.source_server(), 1);

    // Missing on the peer: taken, at the peer's next data version, with
    // the source's file version, times and metadata.
    let (rec, bytes) = install_of(&src, &id).await;
    let before = peer.data_version();
    let out = peer
        .apply_pushed(&rec, &mut VecBody::new(&bytes))
        .await
        .unwrap();
    assert_eq!(out, PushOutcome::Taken);
    assert_eq!(peer.data_version(), before + 1);
    // The version it took is settled (visible to the peer's own pushers).
    assert_eq!(peer.settled_version(), before + 1);
    assert_eq!(peer.stat(&id).await.unwrap(), src.stat(&id).await.unwrap());
    assert_eq!(
        peer.get_meta(&id).await.unwrap(),
        src.get_meta(&id).await.unwrap()
    );
    assert_eq!(read_all(&peer, &id, 0, None).await.unwrap(), data);

    // The same version again, or an older one: nothing, no version used.
    let again = peer
        .apply_pushed(&rec, &mut VecBody::new(&bytes))
        .await
        .unwrap();
    assert_eq!(again, PushOutcome::Unchanged);
    assert_eq!(peer.data_version(), before + 1);

    // The source changes it: the newer version replaces the peer's copy.
    src.append(&id, 300, None, &mut VecBody::new(&pattern(300, 2)))
        .await
        .unwrap();
    src.set_meta(&id, vec![MetaEntry::new("x", "y")], MetaMode::Merge, None)
        .await
        .unwrap();
    let (newer, newer_bytes) = install_of(&src, &id).await;
    assert!(newer.file_version > rec.file_version);
    assert!(peer.wants(&AsyncItem {
        file_id: id.to_string(),
        file_version: newer.file_version,
        delete: false
    }));
    let out = peer
        .apply_pushed(&newer, &mut VecBody::new(&newer_bytes))
        .await
        .unwrap();
    assert_eq!(out, PushOutcome::Taken);
    assert_eq!(peer.stat(&id).await.unwrap(), src.stat(&id).await.unwrap());
    assert_eq!(
        peer.get_meta(&id).await.unwrap(),
        src.get_meta(&id).await.unwrap()
    );
    // An older push arriving late changes nothing.
    let stale = peer
        .apply_pushed(&rec, &mut VecBody::new(&bytes))
        .await
        .unwrap();
    assert_eq!(stale, PushOutcome::Unchanged);
    assert_eq!(peer.stat(&id).await.unwrap().version, newer.file_version);
    assert!(!peer.wants(&AsyncItem {
        file_id: id.to_string(),
        file_version: rec.file_version,
        delete: false
    }));

    // The peer's records are lower case (never pushed again); the
    // source's are upper case.
    assert!(
        ops(&peer).iter().all(|op| op.is_ascii_lowercase()),
        "{:?}",
        ops(&peer)
    );
    assert!(ops(&src).iter().all(|op| op.is_ascii_uppercase()));
    let peer_recs = peer.binlog_records_since(0, 100).unwrap();
    assert!(peer_recs.iter().all(|r| !r.is_local()));
}

#[tokio::test]
async fn a_pushed_delete_removes_only_what_it_supersedes() {
    let dir = tempfile::tempdir().unwrap();
    let (src, peer) = engines(dir.path());
    let id = upload(&src, &pattern(THRESHOLD as usize + 1000, 3), false).await;
    let (rec, bytes) = install_of(&src, &id).await;
    peer.apply_pushed(&rec, &mut VecBody::new(&bytes))
        .await
        .unwrap();

    // A delete older than the peer's copy: nothing.
    let v = peer.data_version();
    let old = delete_of(&id, rec.file_version - 1);
    assert!(!peer.wants(&AsyncItem {
        file_id: id.to_string(),
        file_version: old.file_version,
        delete: true
    }));
    let out = peer
        .apply_pushed(&old, &mut VecBody::new(&[]))
        .await
        .unwrap();
    assert_eq!(out, PushOutcome::Unchanged);
    assert!(peer.exists(&id).await.unwrap());
    assert_eq!(peer.data_version(), v);

    // The source's delete: the large file goes.
    let dv = src.delete(&id, None).await.unwrap();
    let del = delete_of(&id, dv);
    let out = peer
        .apply_pushed(&del, &mut VecBody::new(&[]))
        .await
        .unwrap();
    assert_eq!(out, PushOutcome::Taken);
    assert!(!peer.exists(&id).await.unwrap());
    assert_eq!(peer.data_version(), v + 1);
    assert_eq!(peer.settled_version(), v + 1);

    // A delete of a file the peer does not have: nothing, no version.
    let out = peer
        .apply_pushed(&del, &mut VecBody::new(&[]))
        .await
        .unwrap();
    assert_eq!(out, PushOutcome::Unchanged);
    assert_eq!(peer.data_version(), v + 1);
    assert!(!peer.wants(&AsyncItem {
        file_id: id.to_string(),
        file_version: dv,
        delete: true
    }));
}

#[tokio::test]
async fn a_push_that_does_not_match_its_state_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (src, peer) = engines(dir.path());
    for size in [2000usize, THRESHOLD as usize + 500] {
        let id = upload(&src, &pattern(size, 4), false).await;
        let (rec, mut bytes) = install_of(&src, &id).await;
        bytes[10] ^= 0xff;
        let v = peer.data_version();
        let err = peer
            .apply_pushed(&rec, &mut VecBody::new(&bytes))
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Diverged(_)), "{err}");
        assert!(!peer.exists(&id).await.unwrap());
        assert_eq!(peer.data_version(), v);
        // Only installs and deletes are pushed.
        let mut wrong = rec.clone();
        wrong.op = ReplOp::SetMeta;
        assert!(matches!(
            peer.apply_pushed(&wrong, &mut VecBody::new(&[])).await,
            Err(EngineError::BadRequest(_))
        ));
    }
}

#[tokio::test]
async fn records_after_reads_on_from_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _peer) = engines(dir.path());
    for i in 0..10u8 {
        upload(&src, &pattern(100, i), false).await;
    }
    let (first, pos) = src.records_after(0, 4, None).unwrap();
    assert_eq!(
        first.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let pos = pos.unwrap();
    assert_eq!(pos.version, 4);
    let (rest, end) = src.records_after(4, 100, Some(pos)).unwrap();
    assert_eq!(
        rest.iter().map(|r| r.version).collect::<Vec<_>>(),
        (5..=10).collect::<Vec<_>>()
    );
    // Without the hint, the same records.
    let (plain, _) = src.records_after(4, 100, None).unwrap();
    assert_eq!(plain.len(), rest.len());
    assert!(rest.iter().zip(&plain).all(|(a, b)| a.raw == b.raw));
    assert!(src.records_after(10, 100, end).unwrap().0.is_empty());
    assert!(rest.iter().all(|r| r.is_local() && r.time_us().is_some()));
}

/// A pushed file keeps its source's file version, which may be far above
/// the peer's own data versions; the peer's log must still continue without
/// a gap after a restart (a gap ended the log for its readers, and the next
/// recovery cut every record after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_continue_from_the_log_after_a_restart_with_pushed_files() {
    let dir = tempfile::tempdir().unwrap();
    let (src, peer) = engines(dir.path());
    // The source is far ahead: its file's version is well above anything
    // the peer has handed out.
    for _ in 0..20 {
        upload(&src, b"x", false).await;
    }
    let id = upload(&src, &pattern(3000, 3), false).await;
    let (rec, bytes) = install_of(&src, &id).await;
    assert!(rec.file_version > 20);
    peer.apply_pushed(&rec, &mut VecBody::new(&bytes))
        .await
        .unwrap();
    let before = peer.data_version();
    let peer_cfg = {
        let mut c = config(&dir.path().join("b"), 1);
        c.server_id = 2;
        c
    };
    // A crash (no shutdown), a restart, and local writes after it.
    drop(peer);
    let peer = Engine::open(peer_cfg.clone()).unwrap();
    assert_eq!(peer.data_version(), before);
    let mine = upload(&peer, &pattern(100, 4), false).await;
    assert_eq!(peer.data_version(), before + 1);
    let versions: Vec<u64> = peer
        .binlog_records_since(0, 1000)
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, (1..=before + 1).collect::<Vec<_>>());
    let (recs, _) = peer.records_after(before, 10, None).unwrap();
    assert_eq!(
        recs.len(),
        1,
        "the local write after the restart is readable"
    );
    // And it survives the next restart.
    peer.shutdown().await.unwrap();
    drop(peer);
    let peer = Engine::open(peer_cfg).unwrap();
    assert_eq!(peer.data_version(), before + 1);
    assert_eq!(
        read_all(&peer, &mine, 0, None).await.unwrap(),
        pattern(100, 4)
    );
    assert_eq!(
        read_all(&peer, &id, 0, None).await.unwrap(),
        pattern(3000, 3)
    );
}

/// Catch-up reads the log batch by batch (each read continues where the
/// last stopped); reads at any other point still start from the segment.
#[tokio::test]
async fn records_since_reads_batches_in_turn_and_any_point_too() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = engines(dir.path());
    for i in 0..40u8 {
        upload(&src, &[i; 10], false).await;
    }
    let versions = |after: u64, max: usize| -> Vec<u64> {
        src.binlog_records_since(after, max)
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect()
    };
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let batch = versions(after, 7);
        if batch.is_empty() {
            break;
        }
        after = *batch.last().unwrap();
        seen.extend(batch);
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    assert_eq!(versions(5, 3), vec![6, 7, 8]);
    assert_eq!(versions(8, 2), vec![9, 10]);
    assert_eq!(versions(0, 2), vec![1, 2]);
    assert_eq!(versions(38, 10), vec![39, 40]);
}
