//! Every operation round-trips through the protocol.

use client::{ByteRange, MetaEntry, MetaMode, UploadOptions};
use proto::frame::STREAM_CHUNK;
use proto::{Request, RequestEnvelope};

use crate::fake::FakeServer;
use crate::{bounded, client_for, fast_cfg, pattern};

const SIZES: [usize; 5] = [0, 1, 4096, (1 << 20) + 1, 3 * (1 << 20) + 17];

#[tokio::test]
async fn upload_download_all_sizes() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        for (i, &size) in SIZES.iter().enumerate() {
            let data = pattern(size, i as u8);
            let st = c
                .upload(
                    &data,
                    UploadOptions::new().ext("bin").meta("n", size.to_string()),
                )
                .await
                .unwrap();
            assert_eq!(st.size, size as u64);
            assert_eq!(st.crc32, crc32fast::hash(&data));
            assert!(st.file_id.ends_with(".bin"));
            assert_eq!(fake.file_data(&st.file_id).unwrap(), data);
            assert_eq!(c.download(&st.file_id).await.unwrap(), data);

            // Streamed both ways.
            let st2 = c
                .upload_reader(&data[..], size as u64, UploadOptions::new())
                .await
                .unwrap();
            let mut out = Vec::new();
            let got = c.download_to(&st2.file_id, &mut out, ..).await.unwrap();
            assert_eq!(got.size, size as u64);
            assert_eq!(out, data);

            // Ranges.
            if size > 2 {
                let mid = size as u64 / 2;
                let part = c.download_range(&st.file_id, 1, mid).await.unwrap();
                assert_eq!(part, &data[1..1 + mid as usize]);
                let mut tail = Vec::new();
                c.download_to(&st.file_id, &mut tail, mid..).await.unwrap();
                assert_eq!(tail, &data[mid as usize..]);
            }
        }
        assert!(fake.max_chunk() <= STREAM_CHUNK);
        assert_eq!(
            fake.max_chunk(),
            STREAM_CHUNK,
            "large bodies are sent in full chunks"
        );
        // One connection served everything.
        assert_eq!(fake.accepted(), 1);
    });
}

#[tokio::test]
async fn download_into_reuses_and_appends() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        let a = c.upload(b"abc", UploadOptions::new()).await.unwrap();
        let mut buf = b"x".to_vec();
        let st = c
            .download_into(&a.file_id, ByteRange::all(), &mut buf)
            .await
            .unwrap();
        assert_eq!(buf, b"xabc");
        assert_eq!(st.version, a.version);
    });
}

#[tokio::test]
async fn mutations_and_metadata() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        let st = c
            .upload(b"hello", UploadOptions::new().appender(true).meta("a", "1"))
            .await
            .unwrap();
        let id = st.file_id.clone();
        assert!(st.appender);

        c.append(&id, b" world", Some(st.version)).await.unwrap();
        assert_eq!(c.download(&id).await.unwrap(), b"hello world");
        let big = pattern(STREAM_CHUNK + 5, 9);
        let st = c
            .append_reader(&id, &big[..], big.len() as u64, None)
            .await
            .unwrap();
        assert_eq!(st.size, 11 + big.len() as u64);
        let st = c.truncate(&id, 11, Some(st.version)).await.unwrap();
        assert_eq!(st.size, 11);

        c.modify(&id, 0, b"HELLO", Some(st.version)).await.unwrap();
        let st = c.modify_reader(&id, 11, &b"!!"[..], 2, None).await.unwrap();
        assert_eq!(c.download(&id).await.unwrap(), b"HELLO world!!");

        let err = c
            .modify(&id, 0, b"x", Some(st.version - 1))
            .await
            .unwrap_err();
        assert!(err.is_version_mismatch(), "{err}");
        assert_eq!(c.download(&id).await.unwrap(), b"HELLO world!!");

        c.set_meta(&id, vec![MetaEntry::new("b", "2")], MetaMode::Merge, None)
            .await
            .unwrap();
        let m = c.get_meta(&id).await.unwrap();
        assert_eq!((m.get("a"), m.get("b")), (Some("1"), Some("2")));
        let st = c
            .set_meta(
                &id,
                vec![MetaEntry::new("c", "3")],
                MetaMode::Overwrite,
                None,
            )
            .await
            .unwrap();
        let m = c.get_meta(&id).await.unwrap();
        assert_eq!(m.entries, vec![MetaEntry::new("c", "3")]);
        assert_eq!(m.version, st.version);

        assert_eq!(c.stat(&id).await.unwrap().size, 13);
        assert!(c.exists(&id).await.unwrap());
        let err = c.delete(&id, Some(1)).await.unwrap_err();
        assert!(err.is_version_mismatch());
        c.delete(&id, None).await.unwrap();
        assert!(!c.exists(&id).await.unwrap());
        let err = c.stat(&id).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.kind_str(), "not_found");

        // Append to a non-appender.
        let plain = c.upload(b"p", UploadOptions::new()).await.unwrap();
        let err = c.append(&plain.file_id, b"q", None).await.unwrap_err();
        assert!(err.is_not_appender());

        let info = c.ping().await.unwrap();
        assert_eq!(info.group, "group1");
        // Error answers keep the connection.
        assert_eq!(fake.accepted(), 1);
    });
}

#[tokio::test]
async fn requests_carry_client_id_and_growing_seq() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        c.ping().await.unwrap();
        let st = c.upload(b"x", UploadOptions::new()).await.unwrap();
        c.stat(&st.file_id).await.unwrap();
        let log: Vec<RequestEnvelope> = fake.log();
        assert_eq!(log.len(), 3);
        assert!(log
            .iter()
            .all(|e| e.client_id == c.client_id() && e.client_id != 0));
        assert!(log
            .windows(2)
            .all(|w| w[1].seq > w[0].seq && w[1].id != w[0].id));
        assert!(matches!(log[1].op, Request::Upload { size: 1, .. }));
    });
}

#[tokio::test]
async fn concurrent_use_of_one_client() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg().pool_size(4)).await;
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..8u8 {
            let c = c.clone();
            tasks.spawn(async move {
                for i in 0..10 {
                    let data = pattern(1000 + i, t);
                    let st = c.upload(&data, UploadOptions::new()).await.unwrap();
                    assert_eq!(c.download(&st.file_id).await.unwrap(), data);
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        assert!(fake.accepted() <= 8 + 1, "accepted {}", fake.accepted());
        assert!(c.idle_connections() <= 4);
    });
}

/// Every operation's future can be spawned on a multi-threaded runtime.
#[test]
fn futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    async fn all(c: client::Client) {
        let id = "x";
        let mut v = Vec::new();
        let mut sink = tokio::io::sink();
        let _ = c.ping().await;
        let _ = c.upload(b"", UploadOptions::new()).await;
        let _ = c
            .upload_reader(tokio::io::empty(), 0, UploadOptions::new())
            .await;
        let _ = c.download(id).await;
        let _ = c.download_range(id, 0, 1).await;
        let _ = c.download_into(id, .., &mut v).await;
        let _ = c.download_to(id, &mut sink, 1..).await;
        let _ = c.delete(id, None).await;
        let _ = c.append(id, b"", None).await;
        let _ = c.append_reader(id, tokio::io::empty(), 0, None).await;
        let _ = c.modify(id, 0, b"", None).await;
        let _ = c.modify_reader(id, 0, tokio::io::empty(), 0, None).await;
        let _ = c.truncate(id, 0, None).await;
        let _ = c.stat(id).await;
        let _ = c.set_meta(id, vec![], MetaMode::Merge, None).await;
        let _ = c.get_meta(id).await;
        let _ = c.exists(id).await;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let fut = async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        all(c).await
    };
    is_send(&fut);
}
