//! Errors, timeouts, retries and pool hygiene.

use std::time::Duration;

use client::{Client, ClientError, ErrorCode, UploadOptions};

use crate::fake::{FakeServer, Fault};
use crate::{bounded, client_for, fast_cfg, pattern};

#[tokio::test]
async fn server_error_keeps_connection_protocol_error_drops_it() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg().retries(0)).await;
        let st = c.upload(b"data", UploadOptions::new()).await.unwrap();

        fake.inject(Fault::Error(ErrorCode::Io));
        let err = c.stat(&st.file_id).await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Server {
                    code: ErrorCode::Io,
                    ..
                }
            ),
            "{err}"
        );
        c.stat(&st.file_id).await.unwrap();
        assert_eq!(fake.accepted(), 1);

        fake.inject(Fault::Garbage);
        let err = c.stat(&st.file_id).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        assert_eq!(c.idle_connections(), 0);
        c.stat(&st.file_id).await.unwrap();
        assert_eq!(fake.accepted(), 2, "the broken connection was not reused");

        fake.inject(Fault::WrongId);
        let err = c.exists(&st.file_id).await.unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err}");
        c.stat(&st.file_id).await.unwrap();
        assert_eq!(fake.accepted(), 3);
    });
}

#[tokio::test]
async fn error_on_body_op_after_full_body() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        let st = c
            .upload(b"x", UploadOptions::new().appender(true))
            .await
            .unwrap();
        fake.inject(Fault::Error(ErrorCode::VersionMismatch));
        let big = pattern(3 << 20, 1);
        let err = c
            .append(&st.file_id, &big, Some(st.version))
            .await
            .unwrap_err();
        assert!(err.is_version_mismatch());
        // The connection stayed in step and is reused.
        c.append(&st.file_id, b"y", None).await.unwrap();
        assert_eq!(c.download(&st.file_id).await.unwrap(), b"xy");
        assert_eq!(fake.accepted(), 1);
    });
}

#[tokio::test]
async fn idempotent_ops_retry_with_the_same_seq() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg().retries(2)).await;
        let st = c.upload(b"abc", UploadOptions::new()).await.unwrap();
        let before = fake.log().len();
        fake.inject(Fault::Drop);
        fake.inject(Fault::Drop);
        assert_eq!(c.stat(&st.file_id).await.unwrap().size, 3);
        let log = fake.log();
        let tries = &log[before..];
        assert_eq!(tries.len(), 3);
        assert!(tries.iter().all(|e| e.seq == tries[0].seq));
        assert!(tries[1].id != tries[0].id && tries[2].id != tries[1].id);
        assert_eq!(fake.accepted(), 3);

        // Out of retries: the error surfaces.
        for _ in 0..3 {
            fake.inject(Fault::Drop);
        }
        let err = c.exists(&st.file_id).await.unwrap_err();
        assert!(matches!(err, ClientError::Connection { .. }), "{err}");
        assert!(err.is_network());
    });
}

#[tokio::test]
async fn non_idempotent_ops_are_not_retried_after_sending() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg().retries(3)).await;
        let st = c
            .upload(b"abc", UploadOptions::new().appender(true))
            .await
            .unwrap();
        fake.inject(Fault::Drop);
        let err = c.append(&st.file_id, b"d", None).await.unwrap_err();
        assert!(matches!(err, ClientError::Connection { .. }), "{err}");
        let appends = fake
            .log()
            .iter()
            .filter(|e| e.op.op_name() == "append")
            .count();
        assert_eq!(appends, 1);
    });
}

#[tokio::test]
async fn download_retry_discards_partial_data() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        let data = pattern(3 << 20, 7);
        let st = c.upload(&data, UploadOptions::new()).await.unwrap();
        fake.inject(Fault::CloseMidDownload);
        assert_eq!(c.download(&st.file_id).await.unwrap(), data);

        // A writer that already received data cannot be rewound: no retry.
        fake.inject(Fault::CloseMidDownload);
        let mut out = Vec::new();
        let err = c.download_to(&st.file_id, &mut out, ..).await.unwrap_err();
        assert!(matches!(err, ClientError::Connection { .. }), "{err}");
        assert_eq!(out.len(), data.len() / 2);
        assert_eq!(out, &data[..data.len() / 2]);
    });
}

#[tokio::test]
async fn checksum_mismatch_is_reported() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg().retries(0)).await;
        let st = c.upload(b"checked", UploadOptions::new()).await.unwrap();
        fake.inject(Fault::BadCrc);
        let err = c.download(&st.file_id).await.unwrap_err();
        assert!(matches!(err, ClientError::ChecksumMismatch { .. }), "{err}");
        // Ranges are not checked (the crc covers the whole file).
        fake.inject(Fault::BadCrc);
        assert_eq!(c.download_range(&st.file_id, 1, 3).await.unwrap(), b"hec");
        // Verification can be turned off.
        let c2 = client_for(&fake, fast_cfg().verify_crc(false)).await;
        fake.inject(Fault::BadCrc);
        assert_eq!(c2.download(&st.file_id).await.unwrap(), b"checked");
    });
}

#[tokio::test]
async fn slow_server_times_out_and_connection_is_dropped() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let cfg = fast_cfg()
            .request_timeout(Duration::from_millis(200))
            .retries(0);
        let c = client_for(&fake, cfg).await;
        fake.inject(Fault::Delay(Duration::from_secs(2)));
        let started = std::time::Instant::now();
        let err = c.ping().await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert_eq!(err.code(), Some(ErrorCode::Timeout));
        assert!(started.elapsed() < Duration::from_secs(1));
        c.ping().await.unwrap();
        assert_eq!(fake.accepted(), 2);
    });
}

#[tokio::test]
async fn short_reader_fails_and_drops_connection() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        let err = c
            .upload_reader(&b"only ten b"[..], 100, UploadOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::ShortBody {
                    expected: 100,
                    got: 10
                }
            ),
            "{err}"
        );
        assert_eq!(c.idle_connections(), 0);
        c.ping().await.unwrap();
        assert_eq!(fake.accepted(), 2);
    });
}

#[tokio::test]
async fn pooled_connection_closed_by_server_is_replaced() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg().retries(0)).await;
        fake.inject(Fault::CloseAfter);
        c.ping().await.unwrap();
        // Let the FIN arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Non-idempotent and no retries: works only because the stale
        // connection is detected before use.
        c.upload(b"z", UploadOptions::new()).await.unwrap();
        assert_eq!(fake.accepted(), 2);
    });
}

#[tokio::test]
async fn invalid_arguments_are_refused_locally() {
    bounded!(async {
        let fake = FakeServer::start().await;
        let c = client_for(&fake, fast_cfg()).await;
        let err = c.stat("group1/../../etc/passwd").await.unwrap_err();
        assert!(matches!(err, ClientError::InvalidFileId(_)), "{err}");
        assert_eq!(err.kind_str(), "invalid_file_id");
        let err = c
            .upload(b"x", UploadOptions::new().ext("no/slash"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
        assert!(fake.log().is_empty());
    });
}

#[tokio::test]
async fn connect_errors() {
    bounded!(async {
        // A port nobody listens on: bind, learn the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = Client::connect_direct(format!("127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err}");
        assert_eq!(err.kind_str(), "connect");
        assert!(err.is_retryable());
    });
}
