//! Bad input gets a clear error, changes nothing, and never takes the
//! server down.

use std::net::SocketAddr;

use proto::frame::{FrameHeader, PROTOCOL_VERSION};
use proto::{
    DataChunk, ErrorCode, FileId, Message, MetaEntry, MetaMode, Reply, Request, RequestEnvelope,
};
use rand::{Rng, SeedableRng};
use testkit::{Dataserver, DataserverOpts};

use crate::raw::{upload, RawConn};

async fn data_version(addr: SocketAddr) -> u64 {
    let mut c = RawConn::connect(addr).await;
    match c.call(Request::Ping, &[]).await {
        Ok(Reply::Pong { data_version, .. }) => data_version,
        other => panic!("ping failed: {other:?}"),
    }
}

/// The server still answers and still has `file` byte-exact.
async fn still_serving(addr: SocketAddr, file: &str, content: &[u8]) {
    let mut c = RawConn::connect(addr).await;
    assert_eq!(c.download(file).await.expect("download"), content);
}

fn frame(meta_len: u32, payload_len: u32, body: &[u8]) -> Vec<u8> {
    let mut v = FrameHeader {
        version: PROTOCOL_VERSION,
        flags: 0,
        meta_len,
        payload_len,
    }
    .encode()
    .to_vec();
    v.extend_from_slice(body);
    v
}

fn expect_err(r: Result<Reply, proto::WireError>, code: ErrorCode) -> proto::WireError {
    match r {
        Err(e) => {
            assert_eq!(e.code, code, "wrong code for {e}");
            assert!(!e.message.is_empty());
            e
        }
        Ok(reply) => panic!("expected {code}, got {reply:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_and_server_keeps_serving() {
    let ds = Dataserver::start(DataserverOpts::default());
    let content = b"precious bytes".to_vec();
    let stat = upload(ds.addr, &content).await;
    let before = data_version(ds.addr).await;

    let cases: Vec<(&str, Vec<u8>, Option<ErrorCode>)> = vec![
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            Some(ErrorCode::Protocol),
        ),
        (
            "wrong version",
            {
                let mut f = frame(4, 0, &[0; 4]);
                f[2] = 99;
                f
            },
            Some(ErrorCode::Protocol),
        ),
        (
            "huge archive",
            frame(u32::MAX, 0, &[]),
            Some(ErrorCode::TooLarge),
        ),
        (
            "huge payload",
            frame(16, u32::MAX, &[0; 16]),
            Some(ErrorCode::TooLarge),
        ),
        (
            "invalid archive",
            frame(64, 0, &[0xAB; 64]),
            Some(ErrorCode::Protocol),
        ),
        ("empty archive", frame(0, 0, &[]), Some(ErrorCode::Protocol)),
        ("truncated frame", frame(100, 0, &[1, 2, 3]), None),
    ];
    for (name, bytes, code) in cases {
        let mut c = RawConn::connect(ds.addr).await;
        c.w.write_raw(&bytes).await.expect("send");
        if code.is_none() {
            // Hang up mid-frame: the server must just drop the connection.
            drop(c);
        } else {
            let r = c.response(0).await;
            let e = expect_err(r, code.unwrap_or(ErrorCode::Protocol));
            println!("{name}: {e}");
            assert!(c.closed_by_server().await, "{name}: connection left open");
        }
        still_serving(ds.addr, &stat.file_id, &content).await;
    }

    // A frame of the wrong kind first: a response or a data frame.
    for msg in [
        Message::Data(DataChunk { id: 1, last: true }),
        Message::Response(proto::ResponseEnvelope {
            id: 1,
            result: Ok(Reply::Exists(true)),
        }),
    ] {
        let mut c = RawConn::connect(ds.addr).await;
        c.w.write(&msg, b"xyz").await.expect("send");
        expect_err(c.response(0).await, ErrorCode::Protocol);
        assert!(c.closed_by_server().await);
    }

    // Random bytes, several seeds, some prefixed with a valid header.
    for seed in 0..20u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let len = rng.random_range(1..4096);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if seed % 2 == 0 {
            let meta_len = (len as u32).min(2000);
            let mut f = frame(meta_len, 0, &[]);
            f.append(&mut bytes);
            bytes = f;
        }
        let mut c = RawConn::connect(ds.addr).await;
        let _ = c.w.write_raw(&bytes).await;
        drop(c);
    }
    still_serving(ds.addr, &stat.file_id, &content).await;
    assert_eq!(
        data_version(ds.addr).await,
        before,
        "garbage changed the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_change_nothing() {
    let ds = Dataserver::start(DataserverOpts::default());
    let content = vec![7u8; 10_000];
    let stat = upload(ds.addr, &content).await;
    let before = data_version(ds.addr).await;

    let upload_req = |id| {
        Message::Request(RequestEnvelope {
            id,
            client_id: 0,
            seq: 0,
            epoch: 0,
            op: Request::Upload {
                size: 100,
                ext: String::new(),
                meta: vec![],
                appender: false,
            },
        })
    };
    // Longer than declared.
    let mut c = RawConn::connect(ds.addr).await;
    c.w.write(&upload_req(1), &[]).await.unwrap();
    c.w.write(&Message::Data(DataChunk { id: 1, last: true }), &[0; 150])
        .await
        .unwrap();
    expect_err(c.response(1).await, ErrorCode::Protocol);
    assert!(c.closed_by_server().await);
    // Shorter than declared (last flag too early).
    let mut c = RawConn::connect(ds.addr).await;
    c.w.write(&upload_req(2), &[]).await.unwrap();
    c.w.write(&Message::Data(DataChunk { id: 2, last: true }), &[0; 50])
        .await
        .unwrap();
    expect_err(c.response(2).await, ErrorCode::Protocol);
    // Data for another request.
    let mut c = RawConn::connect(ds.addr).await;
    c.w.write(&upload_req(3), &[]).await.unwrap();
    c.w.write(&Message::Data(DataChunk { id: 4, last: true }), &[0; 100])
        .await
        .unwrap();
    expect_err(c.response(3).await, ErrorCode::Protocol);
    // A new request in the middle of a body.
    let mut c = RawConn::connect(ds.addr).await;
    c.w.write(&upload_req(5), &[]).await.unwrap();
    c.w.write(&upload_req(6), &[]).await.unwrap();
    expect_err(c.response(5).await, ErrorCode::Protocol);
    // Hang up in the middle of a body.
    let mut c = RawConn::connect(ds.addr).await;
    c.w.write(&upload_req(7), &[]).await.unwrap();
    c.w.write(&Message::Data(DataChunk { id: 7, last: false }), &[0; 60])
        .await
        .unwrap();
    drop(c);
    // An append whose body breaks must not touch the file.
    let mut c = RawConn::connect(ds.addr).await;
    let app = Message::Request(RequestEnvelope {
        id: 8,
        client_id: 0,
        seq: 0,
        epoch: 0,
        op: Request::Append {
            file_id: stat.file_id.clone(),
            size: 10,
            if_version: None,
        },
    });
    c.w.write(&app, &[]).await.unwrap();
    c.w.write(&Message::Data(DataChunk { id: 8, last: true }), &[1; 20])
        .await
        .unwrap();
    expect_err(c.response(8).await, ErrorCode::Protocol);

    // A body larger than the server accepts is refused up front.
    let mut c = RawConn::connect(ds.addr).await;
    let huge = Message::Request(RequestEnvelope {
        id: 9,
        client_id: 0,
        seq: 0,
        epoch: 0,
        op: Request::Upload {
            size: u64::MAX,
            ext: String::new(),
            meta: vec![],
            appender: false,
        },
    });
    c.w.write(&huge, &[]).await.unwrap();
    expect_err(c.response(9).await, ErrorCode::TooLarge);

    // Give the server a moment to finish with the broken connections.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    still_serving(ds.addr, &stat.file_id, &content).await;
    assert_eq!(
        data_version(ds.addr).await,
        before,
        "a broken body changed the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_file_ids_are_refused() {
    let ds = Dataserver::start(DataserverOpts::default());
    let content = b"hello".to_vec();
    let stat = upload(ds.addr, &content).await;
    let id = FileId::parse(&stat.file_id).unwrap();
    let before = data_version(ds.addr).await;
    let name = id.name();
    let other_group = FileId::new(
        "group2",
        id.store_path(),
        id.source_server(),
        id.create_time(),
        id.size_at_create(),
        id.crc32_at_create(),
        id.unique(),
        id.ext(),
    )
    .unwrap()
    .to_string();
    let unknown = FileId::new("group1", 0, 1, 2, 3, 4, 0x1234, "bin")
        .unwrap()
        .to_string();
    let missing_store = FileId::new("group1", 9, 1, 2, 3, 4, 0x1234, "bin")
        .unwrap()
        .to_string();
    let cases: Vec<(String, ErrorCode)> = vec![
        ("../../../../etc/passwd".into(), ErrorCode::InvalidFileId),
        (
            format!("group1/M00/../../{name}.bin"),
            ErrorCode::InvalidFileId,
        ),
        (
            format!("group1/M00/00/00/../../../{name}"),
            ErrorCode::InvalidFileId,
        ),
        (
            "group1/M00/00/00/%2e%2e%2fetc".into(),
            ErrorCode::InvalidFileId,
        ),
        (
            format!("group1/M00/00/00/{}B", "A".repeat(37)),
            ErrorCode::InvalidFileId,
        ),
        (
            format!("group1/M00/AB/CD/{}!!.bin", &name[..36]),
            ErrorCode::InvalidFileId,
        ),
        (String::new(), ErrorCode::InvalidFileId),
        ("x".repeat(100_000), ErrorCode::InvalidFileId),
        (other_group, ErrorCode::WrongGroup),
        (unknown, ErrorCode::NotFound),
        (missing_store, ErrorCode::InvalidFileId),
    ];
    let mut c = RawConn::connect(ds.addr).await;
    for (fid, code) in &cases {
        let ops = vec![
            (
                Request::Stat {
                    file_id: fid.clone(),
                },
                vec![],
            ),
            (
                Request::GetMeta {
                    file_id: fid.clone(),
                },
                vec![],
            ),
            (
                Request::Delete {
                    file_id: fid.clone(),
                    if_version: None,
                },
                vec![],
            ),
            (
                Request::Truncate {
                    file_id: fid.clone(),
                    size: 0,
                    if_version: None,
                },
                vec![],
            ),
            (
                Request::SetMeta {
                    file_id: fid.clone(),
                    meta: vec![MetaEntry::new("a", "b")],
                    mode: MetaMode::Merge,
                    if_version: None,
                },
                vec![],
            ),
            (
                Request::Append {
                    file_id: fid.clone(),
                    size: 3,
                    if_version: None,
                },
                b"abc".to_vec(),
            ),
            (
                Request::Modify {
                    file_id: fid.clone(),
                    offset: 0,
                    size: 3,
                    if_version: None,
                },
                b"abc".to_vec(),
            ),
        ];
        for (op, body) in ops {
            let name = op.op_name();
            let r = c.call(op, &body).await;
            match (&r, code) {
                // Exists answers false for a well-formed unknown id instead.
                (Err(e), _) => assert_eq!(e.code, *code, "{name} {fid:.80}: {e}"),
                (Ok(rep), _) => panic!("{name} {fid:.80}: accepted: {rep:?}"),
            }
        }
        match c.download(fid).await {
            Err(e) => assert_eq!(e.code, *code, "download {fid:.80}: {e}"),
            Ok(_) => panic!("download {fid:.80} accepted"),
        }
        let r = c
            .call(
                Request::Exists {
                    file_id: fid.clone(),
                },
                &[],
            )
            .await;
        if *code == ErrorCode::NotFound {
            assert_eq!(r, Ok(Reply::Exists(false)));
        } else {
            expect_err(r, *code);
        }
    }
    assert_eq!(data_version(ds.addr).await, before);
    still_serving(ds.addr, &stat.file_id, &content).await;
    // Bad extension on upload.
    let mut c = RawConn::connect(ds.addr).await;
    let r = c
        .call(
            Request::Upload {
                size: 1,
                ext: "../x".into(),
                meta: vec![],
                appender: false,
            },
            b"a",
        )
        .await;
    expect_err(r, ErrorCode::BadRequest);
    assert_eq!(data_version(ds.addr).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_version_mismatch_changes_nothing() {
    let ds = Dataserver::start(DataserverOpts::default());
    let content = b"0123456789".to_vec();
    let stat = upload(ds.addr, &content).await;
    let fid = stat.file_id.clone();
    let v = stat.version;
    let wrong = Some(v + 1000);
    let mut c = RawConn::connect(ds.addr).await;
    c.call(
        Request::SetMeta {
            file_id: fid.clone(),
            meta: vec![MetaEntry::new("k", "v")],
            mode: MetaMode::Overwrite,
            if_version: Some(v),
        },
        &[],
    )
    .await
    .expect("set meta with the right version");
    let st = match c
        .call(
            Request::Stat {
                file_id: fid.clone(),
            },
            &[],
        )
        .await
    {
        Ok(Reply::Stat(s)) => s,
        other => panic!("{other:?}"),
    };
    assert!(st.version > v, "set_meta must raise the version");
    let before = data_version(ds.addr).await;
    let ops = vec![
        (
            Request::Delete {
                file_id: fid.clone(),
                if_version: Some(v),
            },
            vec![],
        ),
        (
            Request::Append {
                file_id: fid.clone(),
                size: 3,
                if_version: wrong,
            },
            b"abc".to_vec(),
        ),
        (
            Request::Modify {
                file_id: fid.clone(),
                offset: 2,
                size: 3,
                if_version: wrong,
            },
            b"abc".to_vec(),
        ),
        (
            Request::Truncate {
                file_id: fid.clone(),
                size: 1,
                if_version: wrong,
            },
            vec![],
        ),
        (
            Request::SetMeta {
                file_id: fid.clone(),
                meta: vec![],
                mode: MetaMode::Overwrite,
                if_version: Some(v),
            },
            vec![],
        ),
    ];
    for (op, body) in ops {
        let name = op.op_name();
        let e = expect_err(c.call(op, &body).await, ErrorCode::VersionMismatch);
        assert!(
            e.message.contains(&st.version.to_string()),
            "{name}: message should name the current version: {e}"
        );
    }
    assert_eq!(data_version(ds.addr).await, before);
    assert_eq!(c.download(&fid).await.unwrap(), content);
    match c
        .call(
            Request::GetMeta {
                file_id: fid.clone(),
            },
            &[],
        )
        .await
    {
        Ok(Reply::Meta { meta, version }) => {
            assert_eq!(meta, vec![MetaEntry::new("k", "v")]);
            assert_eq!(version, st.version);
        }
        other => panic!("{other:?}"),
    }
    // The matching version works.
    match c
        .call(
            Request::Append {
                file_id: fid.clone(),
                size: 3,
                if_version: Some(st.version),
            },
            b"abc",
        )
        .await
    {
        Ok(Reply::Stat(s)) => assert_eq!(s.size, 13),
        other => panic!("{other:?}"),
    }
}

pub(crate) fn mount_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Lazily unmounts its path when dropped.
pub(crate) struct Unmount(pub(crate) std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_store_path_refuses_writes_and_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("small-disk");
    std::fs::create_dir_all(&dir).unwrap();
    // A real small filesystem (root is required; CI runs as root).
    assert!(
        mount_tmpfs(&dir, "48m"),
        "mounting a tmpfs needs root: run the tests as root"
    );
    let _unmount = Unmount(dir.clone());
    let opts = DataserverOpts {
        reserved_space: "8MiB".into(),
        ..DataserverOpts::default()
    };
    let mut ds = Dataserver::start_in(&dir, opts.clone());
    let mut stored = Vec::new();
    let chunk = vec![0x5au8; 1 << 20];
    let mut refused = None;
    for i in 0..100 {
        let mut c = RawConn::connect(ds.addr).await;
        let r = c
            .call(
                Request::Upload {
                    size: chunk.len() as u64,
                    ext: "bin".into(),
                    meta: vec![],
                    appender: false,
                },
                &chunk,
            )
            .await;
        match r {
            Ok(Reply::Stat(s)) => stored.push(s.file_id),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
            Ok(other) => panic!("{other:?}"),
        }
    }
    let (n, err) = refused.expect("the small disk never filled up");
    assert_eq!(err.code, ErrorCode::NoSpace, "{err}");
    assert!(n >= 10, "refused too early, after {n} uploads: {err}");
    println!("refused after {n} MiB: {err}");
    let before = data_version(ds.addr).await;
    // Other writes are refused too, reads still work, nothing changes.
    let mut c = RawConn::connect(ds.addr).await;
    expect_err(
        c.call(
            Request::Upload {
                size: chunk.len() as u64,
                ext: String::new(),
                meta: vec![],
                appender: true,
            },
            &chunk,
        )
        .await,
        ErrorCode::NoSpace,
    );
    assert_eq!(c.download(&stored[0]).await.unwrap(), chunk);
    assert_eq!(data_version(ds.addr).await, before);
    // Deleting frees room; writes work again.
    for fid in stored.drain(..4) {
        c.call(
            Request::Delete {
                file_id: fid,
                if_version: None,
            },
            &[],
        )
        .await
        .expect("delete on a full disk");
    }
    match c
        .call(
            Request::Upload {
                size: chunk.len() as u64,
                ext: String::new(),
                meta: vec![],
                appender: false,
            },
            &chunk,
        )
        .await
    {
        Ok(Reply::Stat(s)) => stored.push(s.file_id),
        other => panic!("upload after delete: {other:?}"),
    }
    // And the server restarts on the full disk with everything intact.
    ds.restart_with(opts);
    let mut c = RawConn::connect(ds.addr).await;
    for fid in &stored {
        assert_eq!(c.download(fid).await.unwrap(), chunk);
    }
    drop(c);
    ds.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_busy() {
    let ds = Dataserver::start(DataserverOpts {
        extra_args: vec!["--max-connections".into(), "4".into()],
        ..DataserverOpts::default()
    });
    let stat = upload(ds.addr, b"abc").await;
    // Four idle connections take every slot...
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = RawConn::connect(ds.addr).await;
        c.call(Request::Ping, &[]).await.expect("ping");
        held.push(c);
    }
    // ...so the fifth is told so, clearly, and closed.
    let mut c = RawConn::connect(ds.addr).await;
    expect_err(c.response(0).await, ErrorCode::Busy);
    // The held connections still work, and a freed slot is reusable.
    let mut first = held.remove(0);
    assert_eq!(first.download(&stat.file_id).await.unwrap(), b"abc");
    drop(first);
    let mut ok = false;
    for _ in 0..50 {
        // The server may still be closing the freed slot: a refused or
        // dropped attempt is retried, not a failure.
        let mut c = RawConn::connect(ds.addr).await;
        if let Ok(Ok(_)) = c.try_call(Request::Ping, &[]).await {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed connection slot was never reused");
}
