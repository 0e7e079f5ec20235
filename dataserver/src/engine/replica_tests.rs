//! Replication at the engine level: a master engine's changes, captured by
//! its hook, applied to a second engine, must give the same files.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use proto::{FileId, MetaEntry, MetaMode, ReplOp, ReplRecord};

use super::tests::{config, pattern, read_all, upload, VecBody, THRESHOLD};
use super::*;

/// Records every replicated change with its bytes.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<(ReplRecord, Vec<u8>)>>,
}

impl ReplicateHook for Recorder {
    fn replicate(&self, rec: ReplRecord, content: Option<Content>) -> HookFuture<'_> {
        Box::pin(async move {
            let mut bytes = Vec::new();
            if let Some(c) = content {
                for b in c.chunks().await? {
                    bytes.extend_from_slice(&b);
                }
            }
            assert_eq!(bytes.len() as u64, rec.body_len);
            self.log.lock().push((rec, bytes));
            Ok(())
        })
    }
}

async fn same_files(a: &Engine, b: &Engine, ids: &[FileId]) {
    for id in ids {
        let sa = a.stat(id).await;
        let sb = b.stat(id).await;
        match (sa, sb) {
            (Ok(x), Ok(y)) => {
                assert_eq!(x, y, "{id}");
                assert_eq!(
                    read_all(a, id, 0, None).await.unwrap(),
                    read_all(b, id, 0, None).await.unwrap(),
                    "{id}"
                );
                assert_eq!(a.get_meta(id).await.unwrap(), b.get_meta(id).await.unwrap());
            }
            (Err(_), Err(_)) => {}
            (x, y) => panic!("{id}: master {x:?}, replica {y:?}"),
        }
    }
}

#[tokio::test]
async fn a_replica_applying_the_masters_changes_ends_identical() {
    let dir = tempfile::tempdir().unwrap();
    let master = Engine::open(config(&dir.path().join("m"), 1)).unwrap();
    let rec = Arc::new(Recorder::default());
    master.set_replicate_hook(Some(rec.clone()));

    let mut ids = Vec::new();
    let small = upload(&master, &pattern(5000, 1), false).await;
    let app = upload(&master, &pattern(100, 2), true).await;
    let big = upload(&master, &pattern(THRESHOLD as usize + 10_000, 3), true).await;
    let gone = upload(&master, &pattern(10, 4), false).await;
    ids.extend([small.clone(), app.clone(), big.clone(), gone.clone()]);
    master
        .append(&app, 30, None, &mut VecBody::new(&pattern(30, 5)))
        .await
        .unwrap();
    master
        .append(&app, 300, None, &mut VecBody::new(&pattern(300, 6)))
        .await
        .unwrap();
    master
        .modify(&small, 100, 50, None, &mut VecBody::new(&pattern(50, 7)))
        .await
        .unwrap();
    master.truncate(&app, 64, None).await.unwrap();
    master.truncate(&app, 500, None).await.unwrap();
    master
        .set_meta(
            &small,
            vec![MetaEntry::new("a", "b")],
            MetaMode::Merge,
            None,
        )
        .await
        .unwrap();
    master
        .append(&big, 4000, None, &mut VecBody::new(&pattern(4000, 8)))
        .await
        .unwrap();
    master
        .modify(&big, 10, 7000, None, &mut VecBody::new(&pattern(7000, 9)))
        .await
        .unwrap();
    master.truncate(&big, 1000, None).await.unwrap();
    master.delete(&gone, None).await.unwrap();

    let log = rec.log.lock().clone();
    assert_eq!(log.len() as u64, master.data_version());
    let versions: Vec<u64> = log.iter().map(|(r, _)| r.version).collect();
    assert_eq!(versions, (1..=log.len() as u64).collect::<Vec<_>>());
    assert!(matches!(log[4].0.op, ReplOp::Append { offset: 100 }));

    let rdir = dir.path().join("r");
    let replica = Engine::open(config(&rdir, 1)).unwrap();
    for (r, bytes) in &log {
        let v = replica
            .apply_replicated(r, &mut VecBody::new(bytes))
            .await
            .unwrap();
        assert_eq!(v, r.file_version);
    }
    assert_eq!(replica.data_version(), master.data_version());
    same_files(&master, &replica, &ids).await;

    // Out of order, or a change that does not fit, is refused and changes nothing.
    let (first, bytes) = &log[0];
    let e = replica
        .apply_replicated(first, &mut VecBody::new(bytes))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Diverged(_)), "{e}");
    let mut wrong = log[5].0.clone();
    wrong.version = replica.data_version() + 1;
    wrong.file_version = wrong.version;
    wrong.prev_version = 1;
    let e = replica
        .apply_replicated(&wrong, &mut VecBody::new(&log[5].1))
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Diverged(_)), "{e}");
    assert_eq!(replica.data_version(), master.data_version());

    // The replica's binlog holds lower-case op codes and survives a restart.
    let recs = replica.binlog_records_since(0, 1000).unwrap();
    assert!(recs.iter().all(|r| r.op.is_ascii_lowercase()));
    replica.shutdown().await.unwrap();
    drop(replica);
    let replica = Engine::open(config(&rdir, 1)).unwrap();
    same_files(&master, &replica, &ids).await;
}

#[tokio::test]
async fn noops_and_installs_keep_versions_consecutive() {
    let dir = tempfile::tempdir().unwrap();
    let master = Engine::open(config(&dir.path().join("m"), 1)).unwrap();
    let id = upload(&master, &pattern(2000, 1), true).await;
    master
        .append(&id, 10, None, &mut VecBody::new(&pattern(10, 2)))
        .await
        .unwrap();
    let stat = master.stat(&id).await.unwrap();
    let content = read_all(&master, &id, 0, None).await.unwrap();

    // Catch-up: version 1 (the create) is superseded, so a no-op; version
    // 2 installs the current state.
    let replica = Engine::open(config(&dir.path().join("r"), 1)).unwrap();
    let noop = ReplRecord {
        version: 1,
        file_id: String::new(),
        op: ReplOp::Noop,
        prev_version: 0,
        file_version: 1,
        state: None,
        body_len: 0,
        client_id: 0,
        seq: 0,
    };
    replica
        .apply_replicated(&noop, &mut VecBody::new(&[]))
        .await
        .unwrap();
    let (meta, _) = master.get_meta(&id).await.unwrap();
    let install = ReplRecord {
        version: 2,
        file_id: id.to_string(),
        op: ReplOp::Install,
        prev_version: 0,
        file_version: stat.version,
        state: Some(proto::ReplState {
            size: stat.size,
            crc32: stat.crc32,
            create_time_us: stat.create_time_us,
            modify_time_us: stat.modify_time_us,
            appender: true,
            meta,
        }),
        body_len: content.len() as u64,
        client_id: 0,
        seq: 0,
    };
    replica
        .apply_replicated(&install, &mut VecBody::new(&content))
        .await
        .unwrap();
    assert_eq!(replica.data_version(), 2);
    same_files(&master, &replica, std::slice::from_ref(&id)).await;
    // A later change the copy already has is a no-op that still takes its version.
    let mut again = install.clone();
    again.version = 3;
    again.op = ReplOp::Append { offset: 2000 };
    again.prev_version = 1;
    again.body_len = 0;
    replica
        .apply_replicated(&again, &mut VecBody::new(&[]))
        .await
        .unwrap();
    assert_eq!(replica.data_version(), 3);
    same_files(&master, &replica, &[id]).await;
    let _ = Bytes::new();
}
