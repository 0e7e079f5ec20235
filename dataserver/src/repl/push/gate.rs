//! The request gate of async groups (pure; see `server::conn::gate`).
//!
//! | request                               | `Peer` (ACTIVE)              | `PeerWaiting` | any other role   |
//! |---------------------------------------|------------------------------|---------------|------------------|
//! | Ping, ListFiles                       | ok                           | ok            | (sync gate)      |
//! | reads, Upload                         | ok                           | `unavailable` | (sync gate)      |
//! | Append/Modify/Truncate/Delete/SetMeta | ok for its own files, else `not_master` naming the source | `unavailable` | (sync gate) |
//! | ReplFetch                             | ok                           | `unavailable` | (sync gate)      |
//! | AsyncOffer / AsyncPush                | ok from an ACTIVE member of the group, else `unavailable` | `unavailable` | refused |
//! | Replicate / ReplLog / ReplReady       | `bad_request`                | `bad_request` | (sync gate)      |

use proto::cluster::{ClusterMap, ServerId, ServerStatus};
use proto::{ErrorCode, FileId, Request, WireError};

use crate::cluster::Role;

/// Whether `op` changes an existing file (only its source may).
fn mutates_existing(op: &Request) -> bool {
    matches!(
        op,
        Request::Append { .. }
            | Request::Modify { .. }
            | Request::Truncate { .. }
            | Request::Delete { .. }
            | Request::SetMeta { .. }
    )
}

/// The async part of the gate. `None`: not an async matter, the sync gate
/// decides; `Some(result)`: decided here.
pub fn admit(
    role: &Role,
    map: Option<&ClusterMap>,
    me: ServerId,
    group: &str,
    op: &Request,
) -> Option<Result<(), WireError>> {
    let waiting = match role {
        Role::Peer => false,
        Role::PeerWaiting { .. } => true,
        Role::Joining => {
            return matches!(op, Request::AsyncOffer { .. } | Request::AsyncPush { .. }).then(
                || {
                    Err(WireError::new(
                        ErrorCode::Unavailable,
                        "this server has not joined the cluster yet",
                    ))
                },
            )
        }
        other => {
            return matches!(op, Request::AsyncOffer { .. } | Request::AsyncPush { .. }).then(
                || {
                    Err(WireError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "async replication refused: this server ({}) is not a member of an async group (group {group} replicates synchronously)",
                            other.name()
                        ),
                    ))
                },
            )
        }
    };
    let not_yet = || {
        let status = match role {
            Role::PeerWaiting { status } => *status,
            _ => ServerStatus::Active,
        };
        Err(WireError::new(
            ErrorCode::Unavailable,
            format!("this member of async group {group} is {status}, not ACTIVE yet"),
        ))
    };
    Some(match op {
        Request::Ping | Request::ListFiles { .. } => Ok(()),
        Request::Replicate(_)
        | Request::ReplicateBatch { .. }
        | Request::ReplLog { .. }
        | Request::ReplReady { .. } => Err(WireError::new(
            ErrorCode::BadRequest,
            format!("group {group} replicates async: it takes no synchronous replication"),
        )),
        _ if waiting => not_yet(),
        Request::AsyncOffer { source, .. } | Request::AsyncPush { source, .. } => {
            source_ok(map, me, group, *source)
        }
        op if mutates_existing(op) => owner_ok(map, me, group, op),
        _ => Ok(()),
    })
}

/// An offer or push must come from another ACTIVE member of the group.
fn source_ok(
    map: Option<&ClusterMap>,
    me: ServerId,
    group: &str,
    source: ServerId,
) -> Result<(), WireError> {
    let ok = source != me
        && map
            .and_then(|m| m.server(source))
            .is_some_and(|s| s.group == group && s.status == ServerStatus::Active);
    if ok {
        Ok(())
    } else {
        Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "server {source} is not an ACTIVE member of async group {group} in this server's map; retry shortly"
            ),
        ))
    }
}

/// A file is changed only at its source server.
fn owner_ok(
    map: Option<&ClusterMap>,
    me: ServerId,
    group: &str,
    op: &Request,
) -> Result<(), WireError> {
    // A malformed id is answered by the request handler.
    let Some(id) = op.file_id().and_then(|s| FileId::parse(s).ok()) else {
        return Ok(());
    };
    let source = ServerId::from(id.source_server());
    if source == me || id.group() != group {
        return Ok(());
    }
    let addr = map
        .and_then(|m| m.server(source))
        .map_or_else(|| "unknown".to_string(), |s| s.addr.clone());
    Err(WireError::new(
        ErrorCode::NotMaster,
        format!(
            "file {id} belongs to server {source} (its source in async group {group}); change it there; master={addr}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::{GroupInfo, ReplicationMode, ServerInfo};
    use proto::{MetaMode, Request};

    fn server(id: ServerId, status: ServerStatus) -> ServerInfo {
        ServerInfo {
            id,
            addr: format!("127.0.0.1:{}", 23000 + id),
            group: "g1".into(),
            status,
            data_version: 0,
            disk_free: 1,
            disk_total: 2,
            status_changed_ms: 0,
        }
    }

    fn map() -> ClusterMap {
        ClusterMap {
            version: 3,
            updated_ms: 0,
            groups: vec![GroupInfo {
                name: "g1".into(),
                mode: ReplicationMode::Async,
                members: vec![1, 2, 3],
                master: None,
                epoch: 0,
                master_lease_ms: 3000,
                epoch_starts: Vec::new(),
            }],
            servers: vec![
                server(1, ServerStatus::Active),
                server(2, ServerStatus::Active),
                server(3, ServerStatus::Syncing),
            ],
        }
    }

    fn file_of(source: u32) -> String {
        FileId::generate("g1", 0, source, 1_700_000_000, 10, 7, "txt")
            .unwrap()
            .to_string()
    }

    fn code(r: Option<Result<(), WireError>>) -> Option<ErrorCode> {
        r.expect("decided by the async gate").err().map(|e| e.code)
    }

    #[test]
    fn roles_of_async_members() {
        let m = map();
        assert_eq!(
            crate::cluster::view::derive_role(Some(&m), 1, "g1", None),
            Role::Peer
        );
        assert_eq!(
            crate::cluster::view::derive_role(Some(&m), 3, "g1", None),
            Role::PeerWaiting {
                status: ServerStatus::Syncing
            }
        );
    }

    #[test]
    fn a_peer_changes_only_its_own_files() {
        let m = map();
        let set_meta = |id: String| Request::SetMeta {
            file_id: id,
            meta: Vec::new(),
            mode: MetaMode::Merge,
            if_version: None,
        };
        let del = |id: String| Request::Delete {
            file_id: id,
            if_version: None,
        };
        assert_eq!(
            code(admit(&Role::Peer, Some(&m), 1, "g1", &set_meta(file_of(1)))),
            None
        );
        let theirs = admit(&Role::Peer, Some(&m), 1, "g1", &del(file_of(2)))
            .unwrap()
            .unwrap_err();
        assert_eq!(theirs.code, ErrorCode::NotMaster);
        assert!(theirs.message.contains("server 2"), "{}", theirs.message);
        assert!(
            theirs.message.ends_with("master=127.0.0.1:23002"),
            "{}",
            theirs.message
        );
        // Reads and uploads of anything.
        let stat = Request::Stat {
            file_id: file_of(2),
        };
        assert_eq!(code(admit(&Role::Peer, Some(&m), 1, "g1", &stat)), None);
        // A member still copying serves no clients.
        let waiting = Role::PeerWaiting {
            status: ServerStatus::Syncing,
        };
        assert_eq!(
            code(admit(&waiting, Some(&m), 3, "g1", &stat)),
            Some(ErrorCode::Unavailable)
        );
        assert_eq!(
            code(admit(&waiting, Some(&m), 3, "g1", &Request::Ping)),
            None
        );
    }

    #[test]
    fn offers_only_from_active_members_and_never_to_sync_servers() {
        let m = map();
        let offer = |source| Request::AsyncOffer {
            source,
            items: Vec::new(),
        };
        assert_eq!(code(admit(&Role::Peer, Some(&m), 1, "g1", &offer(2))), None);
        assert_eq!(
            code(admit(&Role::Peer, Some(&m), 1, "g1", &offer(3))),
            Some(ErrorCode::Unavailable)
        );
        assert_eq!(
            code(admit(&Role::Peer, Some(&m), 1, "g1", &offer(9))),
            Some(ErrorCode::Unavailable)
        );
        let slave = Role::Slave {
            master: None,
            epoch: 1,
        };
        assert_eq!(
            code(admit(&slave, Some(&m), 1, "g1", &offer(2))),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(admit(&Role::Standalone, None, 1, "g1", &offer(2))),
            Some(ErrorCode::BadRequest)
        );
        // Sync traffic is not an async matter on a sync server ...
        assert!(admit(
            &slave,
            Some(&m),
            1,
            "g1",
            &Request::ReplLog { from: 1, max: 1 }
        )
        .is_none());
        // ... and refused on an async one.
        assert_eq!(
            code(admit(
                &Role::Peer,
                Some(&m),
                1,
                "g1",
                &Request::ReplLog { from: 1, max: 1 }
            )),
            Some(ErrorCode::BadRequest)
        );
    }
}
