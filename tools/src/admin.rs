//! Cluster commands: `status` (like FastDFS's fdfs_monitor), `failover`,
//! `server remove`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use client::leader::{ClientTimeouts, LeaderClient};
use proto::cluster::{ClusterMap, LeaderStatus, ReplicationMode, ServerStatus};
use proto::units::format_size;
use serde::Serialize;
use serde_json::json;

use crate::cli::{FailoverArgs, ServerCommand, StatusArgs};
use crate::output::{print_json, print_line, CliError, CliResult, Output};

/// How long one leader may take to answer `status` before it is shown as
/// unreachable.
const LEADER_STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// A leader client with the CLI's `--timeout`.
pub fn leader_client(leaders: &[String], timeout: Duration) -> LeaderClient {
    LeaderClient::with_timeouts(
        leaders.to_vec(),
        ClientTimeouts {
            connect: timeout.min(Duration::from_secs(1)),
            request: timeout,
            call: timeout,
            ..ClientTimeouts::default()
        },
    )
}

/// One leader as `status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaderRow {
    pub address: String,
    pub reachable: bool,
    pub id: Option<u64>,
    /// "leader", "follower", "candidate", "learner", "shutdown".
    pub role: Option<String>,
    pub is_raft_leader: bool,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub map_version: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupRow {
    pub name: String,
    pub mode: String,
    pub master: Option<u64>,
    pub master_address: Option<String>,
    pub epoch: u64,
    pub members: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServerRow {
    pub id: u64,
    pub address: String,
    pub group: String,
    /// Lower-case status name ("active", "offline", ...).
    pub status: String,
    /// "master" or "slave" (sync groups), "peer" (async groups).
    pub role: String,
    /// The latest reported data version (live heartbeat figure when the
    /// Raft leader has one, else the map's).
    pub data_version: u64,
    /// The master's data version minus this server's (none without a
    /// master, so none in async groups, whose members number their own
    /// changes).
    pub lag: Option<u64>,
    /// Async groups: how far behind (ms) this server's pushes to its peers
    /// are, from its last heartbeat (none in sync groups, or when the Raft
    /// leader has no live figure for it).
    pub sync_delay_ms: Option<u64>,
    pub disk_free: u64,
    pub disk_total: u64,
    /// Milliseconds since the Raft leader last heard from it (none when it
    /// has no record, e.g. an OFFLINE server after a leader change).
    pub last_heartbeat_ms: Option<u64>,
    pub status_changed_ms: u64,
}

/// Everything `status` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport {
    pub map_version: u64,
    pub raft_leader: Option<String>,
    pub leaders: Vec<LeaderRow>,
    pub groups: Vec<GroupRow>,
    pub servers: Vec<ServerRow>,
}

/// Build the report from each leader's answer (in the order given) and the
/// map.
pub fn build_report(
    statuses: &[(String, Result<LeaderStatus, String>)],
    map: &ClusterMap,
) -> StatusReport {
    let raft_leader = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term);
    let leaders = statuses
        .iter()
        .map(|(addr, s)| match s {
            Ok(s) => LeaderRow {
                address: addr.clone(),
                reachable: true,
                id: Some(s.id),
                role: Some(s.role.clone()),
                is_raft_leader: raft_leader.is_some_and(|l| l.id == s.id),
                term: Some(s.term),
                last_log_index: s.last_log_index,
                last_applied_index: s.last_applied_index,
                map_version: Some(s.map_version),
                error: None,
            },
            Err(e) => LeaderRow {
                address: addr.clone(),
                reachable: false,
                id: None,
                role: None,
                is_raft_leader: false,
                term: None,
                last_log_index: None,
                last_applied_index: None,
                map_version: None,
                error: Some(e.clone()),
            },
        })
        .collect();
    let live = |id: u64| raft_leader.and_then(|l| l.live.iter().find(|x| x.id == id));
    let version_of = |id: u64| {
        live(id)
            .map(|x| x.data_version)
            .or_else(|| map.server(id).map(|s| s.data_version))
    };
    let groups = map
        .groups
        .iter()
        .map(|g| GroupRow {
            name: g.name.clone(),
            mode: g.mode.as_str().to_string(),
            master: g.master,
            master_address: map.master_of(&g.name).map(|s| s.addr.clone()),
            epoch: g.epoch,
            members: g.members.clone(),
        })
        .collect();
    let servers = map
        .servers
        .iter()
        .map(|s| {
            let group = map.group(&s.group);
            let master = group.and_then(|g| g.master);
            let is_async = group.is_some_and(|g| g.mode == ReplicationMode::Async);
            let l = live(s.id);
            let version = version_of(s.id).unwrap_or(s.data_version);
            ServerRow {
                id: s.id,
                address: s.addr.clone(),
                group: s.group.clone(),
                status: s.status.as_str().to_ascii_lowercase(),
                role: if is_async {
                    "peer"
                } else if master == Some(s.id) {
                    "master"
                } else {
                    "slave"
                }
                .to_string(),
                data_version: version,
                lag: master
                    .filter(|_| !is_async)
                    .and_then(version_of)
                    .map(|mv| mv.saturating_sub(version)),
                sync_delay_ms: l.filter(|_| is_async).map(|l| l.sync_delay_ms),
                disk_free: l.map_or(s.disk_free, |l| l.disk_free),
                disk_total: l.map_or(s.disk_total, |l| l.disk_total),
                last_heartbeat_ms: l.map(|l| l.ms_since_heartbeat),
                status_changed_ms: s.status_changed_ms,
            }
        })
        .collect();
    StatusReport {
        map_version: map.version,
        raft_leader: raft_leader.map(|l| l.addr.clone()),
        leaders,
        groups,
        servers,
    }
}

/// Every leader's own status, asked in parallel; in the order given.
async fn leader_statuses(leaders: &[String]) -> Vec<(String, Result<LeaderStatus, String>)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, addr) in leaders.iter().enumerate() {
        let addr = addr.clone();
        set.spawn(async move {
            let r = LeaderClient::status_of(&addr, LEADER_STATUS_TIMEOUT)
                .await
                .map_err(|e| e.to_string());
            (i, addr, r)
        });
    }
    let mut out: Vec<(usize, String, Result<LeaderStatus, String>)> = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(x) => out.push(x),
            Err(e) => tracing::warn!("leader status task failed: {e}"),
        }
    }
    out.sort_by_key(|(i, ..)| *i);
    out.into_iter().map(|(_, a, r)| (a, r)).collect()
}

/// The map, asked of the Raft leader first (the freshest), then the others.
async fn fetch_map(
    leaders: &[String],
    statuses: &[(String, Result<LeaderStatus, String>)],
    timeout: Duration,
) -> CliResult<ClusterMap> {
    let mut order: Vec<String> = statuses
        .iter()
        .filter(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader"))
        .map(|(a, _)| a.clone())
        .collect();
    for a in leaders {
        if !order.contains(a) {
            order.push(a.clone());
        }
    }
    Ok(leader_client(&order, timeout).get_map(false).await?)
}

fn age(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
        None => "-".into(),
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Left-aligned columns, two spaces apart.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("  ");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(head.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

/// The human rendering.
pub fn render(r: &StatusReport) -> String {
    let reachable = r.leaders.iter().filter(|l| l.reachable).count();
    let mut out = format!(
        "cluster map version {}; leaders: {reachable} of {} reachable, Raft leader {}\n",
        r.map_version,
        r.leaders.len(),
        r.raft_leader.as_deref().unwrap_or("unknown"),
    );
    out.push_str("\nLEADERS\n");
    let rows: Vec<Vec<String>> = r
        .leaders
        .iter()
        .map(|l| {
            if !l.reachable {
                return vec![
                    "-".into(),
                    l.address.clone(),
                    "UNREACHABLE".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ];
            }
            let role = l.role.clone().unwrap_or_default();
            vec![
                opt(l.id),
                l.address.clone(),
                if l.is_raft_leader {
                    format!("{role} *")
                } else {
                    role
                },
                opt(l.term),
                opt(l.last_log_index),
                opt(l.last_applied_index),
                opt(l.map_version),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ID", "ADDRESS", "ROLE", "TERM", "LAST LOG", "APPLIED", "MAP",
        ],
        &rows,
    ));
    out.push_str("\n\nGROUPS\n");
    let rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.mode.clone(),
                match (&g.master, &g.master_address) {
                    (Some(id), Some(a)) => format!("{id} ({a})"),
                    (Some(id), None) => id.to_string(),
                    _ if g.mode == ReplicationMode::Async.as_str() => "- (async: none)".into(),
                    _ => "none".into(),
                },
                g.epoch.to_string(),
                g.members
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    out.push_str(&table(
        &["NAME", "MODE", "MASTER", "EPOCH", "MEMBERS"],
        &rows,
    ));
    out.push_str("\n\nSERVERS\n");
    // The sync delay column only when some group replicates asynchronously.
    let async_groups: Vec<&str> = r
        .groups
        .iter()
        .filter(|g| g.mode == ReplicationMode::Async.as_str())
        .map(|g| g.name.as_str())
        .collect();
    let rows: Vec<Vec<String>> = r
        .servers
        .iter()
        .map(|s| {
            let mut row = vec![
                s.id.to_string(),
                s.address.clone(),
                s.group.clone(),
                s.status.to_ascii_uppercase(),
                s.role.clone(),
                s.data_version.to_string(),
                opt(s.lag),
                format!(
                    "{} / {}",
                    format_size(s.disk_free),
                    format_size(s.disk_total)
                ),
                age(s.last_heartbeat_ms),
            ];
            if !async_groups.is_empty() {
                row.push(sync_delay(s, &async_groups));
            }
            row
        })
        .collect();
    let mut head = vec![
        "ID",
        "ADDRESS",
        "GROUP",
        "STATUS",
        "ROLE",
        "VERSION",
        "LAG",
        "DISK FREE / TOTAL",
        "HEARTBEAT",
    ];
    if !async_groups.is_empty() {
        head.push("SYNC DELAY");
    }
    out.push_str(&table(&head, &rows));
    out
}

/// The SYNC DELAY cell: `12 ms` for a member of an async group with a live
/// figure, `?` for one without, `-` in sync groups.
fn sync_delay(s: &ServerRow, async_groups: &[&str]) -> String {
    if !async_groups.contains(&s.group.as_str()) {
        return "-".into();
    }
    match s.sync_delay_ms {
        Some(ms) => format!("{ms} ms"),
        None => "?".into(),
    }
}

fn show(out: Output, r: &StatusReport, redraw: bool) -> CliResult {
    if out.json {
        return print_json(r);
    }
    if redraw && std::io::stdout().is_terminal() {
        // Clear the screen and home the cursor.
        let mut o = std::io::stdout().lock();
        write!(o, "\x1b[2J\x1b[H")?;
    }
    print_line(&render(r))
}

/// `chorus status [--watch]`.
pub async fn status(
    leaders: &[String],
    timeout: Duration,
    args: StatusArgs,
    out: Output,
) -> CliResult {
    if !args.watch {
        let statuses = leader_statuses(leaders).await;
        let map = fetch_map(leaders, &statuses, timeout).await?;
        return show(out, &build_report(&statuses, &map), false);
    }
    let lc = leader_client(leaders, timeout);
    let mut sub = lc.subscribe();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            map = sub.next() => {
                let Some(map) = map else {
                    return Err(CliError::new("internal", "the map subscription ended", 1));
                };
                let statuses = leader_statuses(leaders).await;
                if !out.json && !std::io::stdout().is_terminal() {
                    print_line("")?;
                }
                show(out, &build_report(&statuses, &map), true)?;
            }
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

/// `chorus failover GROUP [--to SERVER]`.
pub async fn failover(
    leaders: &[String],
    timeout: Duration,
    args: FailoverArgs,
    out: Output,
) -> CliResult {
    let lc = leader_client(leaders, timeout);
    let g = lc.failover(&args.group, args.to).await?;
    // The new master's address, for the message (best effort).
    let addr = match lc.get_map(false).await {
        Ok(m) => g.master.and_then(|id| m.server(id).map(|s| s.addr.clone())),
        Err(_) => None,
    };
    if out.json {
        return print_json(&json!({
            "group": g.name,
            "master": g.master,
            "master_address": addr,
            "epoch": g.epoch,
            "members": g.members,
        }));
    }
    print_line(&format!(
        "{}: master is now server {}{}, epoch {}",
        g.name,
        opt(g.master),
        addr.map(|a| format!(" ({a})")).unwrap_or_default(),
        g.epoch
    ))
}

/// `chorus server remove ID`.
pub async fn server(
    leaders: &[String],
    timeout: Duration,
    cmd: ServerCommand,
    out: Output,
) -> CliResult {
    let lc = leader_client(leaders, timeout);
    match cmd {
        ServerCommand::Remove { id } => {
            let s = lc.remove_server(id).await?;
            if out.json {
                return print_json(&json!({
                    "id": s.id,
                    "address": s.addr,
                    "group": s.group,
                    "status": s.status.as_str().to_ascii_lowercase(),
                }));
            }
            let note = if s.status == ServerStatus::Deleted {
                ""
            } else {
                " (status not yet DELETED)"
            };
            print_line(&format!(
                "server {} ({}) removed from {}{note}",
                s.id, s.addr, s.group
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::{GroupInfo, LeaderRedirect, ServerInfo, ServerLive};

    fn leader(id: u64, role: &str, live: Vec<ServerLive>) -> LeaderStatus {
        LeaderStatus {
            id,
            addr: format!("127.0.0.1:710{id}"),
            role: role.into(),
            raft_leader: Some(LeaderRedirect {
                id: 1,
                addr: "127.0.0.1:7101".into(),
            }),
            term: 4,
            last_log_index: Some(20),
            last_applied_index: Some(20),
            map_version: 9,
            peers: vec![],
            live,
        }
    }

    fn srv(id: u64, status: ServerStatus, version: u64) -> ServerInfo {
        ServerInfo {
            id,
            addr: format!("127.0.0.1:711{id}"),
            group: "group1".into(),
            status,
            data_version: version,
            disk_free: 1 << 30,
            disk_total: 4 << 30,
            status_changed_ms: 1,
        }
    }

    #[test]
    fn report_joins_leaders_map_and_live_figures() {
        let map = ClusterMap {
            version: 9,
            updated_ms: 0,
            groups: vec![GroupInfo {
                name: "group1".into(),
                mode: ReplicationMode::Sync,
                members: vec![1, 2, 3],
                master: Some(1),
                epoch: 2,
                master_lease_ms: 3000,
                epoch_starts: Vec::new(),
            }],
            servers: vec![
                srv(1, ServerStatus::Active, 10),
                srv(2, ServerStatus::Active, 10),
                srv(3, ServerStatus::Offline, 4),
            ],
        };
        let live = vec![
            ServerLive {
                id: 1,
                ms_since_heartbeat: 300,
                data_version: 50,
                disk_free: 7,
                disk_total: 9,
                sync_delay_ms: 0,
            },
            ServerLive {
                id: 2,
                ms_since_heartbeat: 800,
                data_version: 48,
                disk_free: 7,
                disk_total: 9,
                sync_delay_ms: 0,
            },
        ];
        let statuses = vec![
            ("127.0.0.1:7101".to_string(), Ok(leader(1, "leader", live))),
            (
                "127.0.0.1:7102".to_string(),
                Ok(leader(2, "follower", vec![])),
            ),
            (
                "127.0.0.1:7103".to_string(),
                Err("connection refused".into()),
            ),
        ];
        let r = build_report(&statuses, &map);
        assert_eq!(r.raft_leader.as_deref(), Some("127.0.0.1:7101"));
        let flags: Vec<(bool, bool)> = r
            .leaders
            .iter()
            .map(|l| (l.reachable, l.is_raft_leader))
            .collect();
        assert_eq!(flags, [(true, true), (true, false), (false, false)]);
        assert_eq!(
            r.groups[0].master_address.as_deref(),
            Some("127.0.0.1:7111")
        );
        type Row<'a> = (&'a str, &'a str, u64, Option<u64>, Option<u64>);
        let s: Vec<Row> = r
            .servers
            .iter()
            .map(|s| {
                (
                    s.status.as_str(),
                    s.role.as_str(),
                    s.data_version,
                    s.lag,
                    s.last_heartbeat_ms,
                )
            })
            .collect();
        assert_eq!(
            s,
            [
                ("active", "master", 50, Some(0), Some(300)),
                ("active", "slave", 48, Some(2), Some(800)),
                ("offline", "slave", 4, Some(46), None),
            ]
        );
        let text = render(&r);
        assert!(text.contains("UNREACHABLE"), "{text}");
        assert!(text.contains("leader *"), "{text}");
        assert!(text.contains("1 (127.0.0.1:7111)"), "{text}");
        let v = serde_json::to_value(&r).unwrap();
        for key in ["id", "address", "group", "status", "role"] {
            assert!(v["servers"][0].get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn async_groups_show_peers_and_each_servers_sync_delay() {
        let mut a3 = srv(3, ServerStatus::Active, 4);
        a3.group = "group2".into();
        let mut a4 = srv(4, ServerStatus::Syncing, 0);
        a4.group = "group2".into();
        let map = ClusterMap {
            version: 12,
            updated_ms: 0,
            groups: vec![
                GroupInfo {
                    name: "group1".into(),
                    mode: ReplicationMode::Sync,
                    members: vec![1, 2],
                    master: Some(1),
                    epoch: 2,
                    master_lease_ms: 3000,
                    epoch_starts: Vec::new(),
                },
                GroupInfo {
                    name: "group2".into(),
                    mode: ReplicationMode::Async,
                    members: vec![3, 4],
                    master: None,
                    epoch: 0,
                    master_lease_ms: 3000,
                    epoch_starts: Vec::new(),
                },
            ],
            servers: vec![
                srv(1, ServerStatus::Active, 10),
                srv(2, ServerStatus::Active, 10),
                a3,
                a4,
            ],
        };
        let live = |id, delay| ServerLive {
            id,
            ms_since_heartbeat: 100,
            data_version: 10,
            disk_free: 7,
            disk_total: 9,
            sync_delay_ms: delay,
        };
        // Server 4 has no live figure (e.g. just after a leader change).
        let statuses = vec![(
            "127.0.0.1:7101".to_string(),
            Ok(leader(
                1,
                "leader",
                vec![live(1, 0), live(2, 0), live(3, 37)],
            )),
        )];
        let r = build_report(&statuses, &map);
        let s: Vec<(&str, Option<u64>, Option<u64>)> = r
            .servers
            .iter()
            .map(|s| (s.role.as_str(), s.lag, s.sync_delay_ms))
            .collect();
        assert_eq!(
            s,
            [
                ("master", Some(0), None),
                ("slave", Some(0), None),
                ("peer", None, Some(37)),
                ("peer", None, None),
            ]
        );
        assert_eq!(r.groups[1].mode, "async");
        assert_eq!(r.groups[1].master, None);
        let text = render(&r);
        assert!(text.contains("SYNC DELAY"), "{text}");
        assert!(text.contains("37 ms"), "{text}");
        assert!(text.contains("- (async: none)"), "{text}");
        let line = |id: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(id) && l.contains("127.0.0.1:711"))
                .unwrap()
                .to_string()
        };
        assert!(line("4 ").trim_end().ends_with('?'), "{text}");
        assert!(line("1 ").trim_end().ends_with('-'), "{text}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["servers"][2]["sync_delay_ms"], 37);
        assert!(v["servers"][0]["sync_delay_ms"].is_null());
        assert_eq!(v["groups"][1]["mode"], "async");

        // A sync-only cluster keeps its table as it was.
        let mut sync_only = map.clone();
        sync_only.groups.truncate(1);
        sync_only.servers.truncate(2);
        let text = render(&build_report(&statuses, &sync_only));
        assert!(!text.contains("SYNC DELAY"), "{text}");
    }
}
