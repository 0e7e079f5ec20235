//! `chorus verify GROUP`: compare the files every member of a group holds
//! (ids, sizes, crc32, versions) and report each difference.
//!
//! The map comes from the leaders (a linearizable read); every member that
//! is not DELETED is listed directly (`ListFiles`, answered whatever the
//! member's role or status), all at once, page by page.
//!
//! * **Sync groups**: OFFLINE members are skipped unless `--all`. The
//!   reference copy is the master's listing (or, without a listed master,
//!   the member with the highest data version); every other member is
//!   compared with it file by file.
//! * **Async groups** (no master): only ACTIVE members are listed unless
//!   `--all` (the others are still copying). Every listed member is
//!   compared with every other, file by file: each file's reference copy
//!   is its source server's (the member named in the file id, which alone
//!   applies its changes), or, when the source was not listed, the copy
//!   most listed members hold. Pushes run behind writes, so `--wait SECS`
//!   lists again (every second, up to SECS) while the members differ.
//!
//! Exit status: 0 when every listed member agrees with the reference,
//! [`EXIT_DIFFER`] when some differ, 5 (unreachable) when they agree but a
//! member that should have been compared could not be listed, or nobody
//! could.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig, FileSummary};
use proto::cluster::{ClusterMap, GroupInfo, ReplicationMode, ServerId, ServerStatus};
use serde::Serialize;

use crate::admin::leader_client;
use crate::cli::VerifyArgs;
use crate::output::{exit, print_json, print_line, CliError, CliResult, Output};

/// Exit status when replicas differ (see [`crate::cli::EXIT_CODES`]).
pub const EXIT_DIFFER: u8 = 6;

/// Difference lines printed in text mode (all of them go to `--json`).
const MAX_PRINTED: usize = 50;

/// A member's listing: its files (sorted by id) and its data version, or
/// why it could not be listed.
pub type Listing = Result<(Vec<FileSummary>, u64), String>;

/// One file as a member holds it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileState {
    pub size: u64,
    pub crc32: u32,
    pub version: u64,
}

impl From<&FileSummary> for FileState {
    fn from(f: &FileSummary) -> Self {
        FileState {
            size: f.size,
            crc32: f.crc32,
            version: f.version,
        }
    }
}

impl FileState {
    fn describe(&self) -> String {
        format!(
            "size {} crc32 {:08x} version {}",
            self.size, self.crc32, self.version
        )
    }
}

/// How a member's copy of a file differs from the reference.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// The reference has the file, the member does not.
    Missing,
    /// The member has a file the reference does not.
    Extra,
    /// Both have it, with another size, crc32 or version.
    Mismatch,
}

/// One difference between a member and the reference.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Difference {
    pub file_id: String,
    /// The member that differs from the reference.
    pub server: ServerId,
    pub kind: DiffKind,
    /// For a mismatch: which of "size", "crc32", "version" differ.
    pub fields: Vec<&'static str>,
    /// The reference's copy (none when it lacks the file).
    pub expected: Option<FileState>,
    /// The member's copy (none when it lacks the file).
    pub found: Option<FileState>,
}

/// One member as `verify` reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberReport {
    pub id: ServerId,
    pub address: String,
    /// Lower-case status from the map ("active", "offline", ...).
    pub status: String,
    /// "master" or "slave" (sync groups), "peer" (async groups).
    pub role: String,
    /// Not listed: OFFLINE, or not ACTIVE in an async group (without
    /// `--all`).
    pub skipped: bool,
    /// Listed successfully.
    pub listed: bool,
    /// Why listing failed.
    pub error: Option<String>,
    /// The member's data version when it answered its last page.
    pub data_version: Option<u64>,
    pub files: Option<usize>,
    pub bytes: Option<u64>,
    /// The reference copy everyone else is compared with (sync groups).
    pub reference: bool,
    /// Differences from the reference.
    pub differences: usize,
}

/// Everything `verify` found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    pub group: String,
    /// The group's replication mode, "sync" or "async".
    pub mode: String,
    pub map_version: u64,
    pub epoch: u64,
    pub master: Option<ServerId>,
    /// The member whose listing is the reference (none: nothing listed,
    /// or an async group, where each file's source server is its
    /// reference).
    pub reference: Option<ServerId>,
    /// How many times the members were listed (more than once only when
    /// `--wait` let an async group settle).
    pub rounds: u32,
    pub members: Vec<MemberReport>,
    pub compared: usize,
    pub skipped: usize,
    pub unreachable: usize,
    /// Whether every listed member agrees with the reference.
    pub agree: bool,
    pub difference_count: usize,
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    /// 0, [`EXIT_DIFFER`] or unreachable, as the module docs say.
    pub fn exit_status(&self) -> u8 {
        if !self.agree {
            EXIT_DIFFER
        } else if self.unreachable > 0 || self.compared == 0 {
            exit::UNREACHABLE
        } else {
            0
        }
    }
}

/// What to list, from the map: a row for every member of `group` that is
/// not DELETED, and whether it is skipped (OFFLINE, without `all`).
fn members_to_list(
    map: &ClusterMap,
    group: &str,
    all: bool,
) -> CliResult<Vec<(MemberReport, bool)>> {
    let Some(g) = map.group(group) else {
        let known: Vec<&str> = map.groups.iter().map(|g| g.name.as_str()).collect();
        return Err(CliError::new(
            "not_found",
            format!(
                "no group {group} in the cluster map (groups: {})",
                known.join(", ")
            ),
            exit::NOT_FOUND,
        ));
    };
    let is_async = g.mode == ReplicationMode::Async;
    let mut out = Vec::new();
    for &id in &g.members {
        let Some(s) = map.server(id) else { continue };
        if s.status == ServerStatus::Deleted {
            continue;
        }
        let skipped = !all
            && if is_async {
                s.status != ServerStatus::Active
            } else {
                s.status == ServerStatus::Offline
            };
        out.push((
            MemberReport {
                id,
                address: s.addr.clone(),
                status: s.status.as_str().to_ascii_lowercase(),
                role: if is_async {
                    "peer"
                } else if g.master == Some(id) {
                    "master"
                } else {
                    "slave"
                }
                .to_string(),
                skipped,
                listed: false,
                error: None,
                data_version: None,
                files: None,
                bytes: None,
                reference: false,
                differences: 0,
            },
            skipped,
        ));
    }
    Ok(out)
}

/// What differs between two copies of a file: size, crc32, version.
fn differing_fields(a: &FileState, b: &FileState) -> Vec<&'static str> {
    [
        ("size", a.size != b.size),
        ("crc32", a.crc32 != b.crc32),
        ("version", a.version != b.version),
    ]
    .into_iter()
    .filter_map(|(name, differs)| differs.then_some(name))
    .collect()
}

/// Compare `found` (member `server`'s listing) with the reference
/// listing; both sorted by file id.
pub fn diff_listings(
    reference: &[FileSummary],
    found: &[FileSummary],
    server: ServerId,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        let ord = match (reference.get(i), found.get(j)) {
            (None, None) => return out,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(r), Some(f)) => r.file_id.cmp(&f.file_id),
        };
        match ord {
            Ordering::Less => {
                let r = &reference[i];
                out.push(Difference {
                    file_id: r.file_id.clone(),
                    server,
                    kind: DiffKind::Missing,
                    fields: Vec::new(),
                    expected: Some(r.into()),
                    found: None,
                });
                i += 1;
            }
            Ordering::Greater => {
                let f = &found[j];
                out.push(Difference {
                    file_id: f.file_id.clone(),
                    server,
                    kind: DiffKind::Extra,
                    fields: Vec::new(),
                    expected: None,
                    found: Some(f.into()),
                });
                j += 1;
            }
            Ordering::Equal => {
                let (r, f) = (&reference[i], &found[j]);
                let fields = differing_fields(&r.into(), &f.into());
                if !fields.is_empty() {
                    out.push(Difference {
                        file_id: r.file_id.clone(),
                        server,
                        kind: DiffKind::Mismatch,
                        fields,
                        expected: Some(r.into()),
                        found: Some(f.into()),
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
}

/// Async groups: compare every listing with every other. Each file's
/// reference copy is its source server's when the source was listed (a
/// file the source no longer has is `extra` wherever it remains), else the
/// copy most listings hold (ties: the lowest server id's); a member is
/// reported for every file where it differs from that reference.
/// `listings` are (server, files sorted by id).
pub fn diff_async(listings: &[(ServerId, &[FileSummary])]) -> Vec<Difference> {
    use std::collections::BTreeMap;
    // file id -> (server -> its copy), over every listing.
    let mut files: BTreeMap<&str, BTreeMap<ServerId, FileState>> = BTreeMap::new();
    for (server, list) in listings {
        for f in *list {
            files
                .entry(f.file_id.as_str())
                .or_default()
                .insert(*server, f.into());
        }
    }
    let listed: Vec<ServerId> = listings.iter().map(|(id, _)| *id).collect();
    let mut out = Vec::new();
    for (file_id, copies) in files {
        let source = proto::FileId::parse(file_id)
            .ok()
            .map(|id| ServerId::from(id.source_server()))
            .filter(|s| listed.contains(s));
        let expected: Option<FileState> = match source {
            Some(src) => copies.get(&src).cloned(),
            None => {
                // The most common copy; BTreeMap order makes ties go to
                // the lowest server id holding it.
                let mut best: Option<(&FileState, usize)> = None;
                for c in copies.values() {
                    let n = copies.values().filter(|o| *o == c).count();
                    if best.is_none_or(|(_, bn)| n > bn) {
                        best = Some((c, n));
                    }
                }
                best.map(|(c, _)| c.clone())
            }
        };
        for &server in &listed {
            let found = copies.get(&server).cloned();
            let (kind, fields) = match (&expected, &found) {
                (None, None) => continue,
                (Some(_), None) => (DiffKind::Missing, Vec::new()),
                (None, Some(_)) => (DiffKind::Extra, Vec::new()),
                (Some(e), Some(f)) => {
                    let fields = differing_fields(e, f);
                    if fields.is_empty() {
                        continue;
                    }
                    (DiffKind::Mismatch, fields)
                }
            };
            out.push(Difference {
                file_id: file_id.to_string(),
                server,
                kind,
                fields,
                expected: expected.clone(),
                found,
            });
        }
    }
    out
}

/// Build the report from the map's view of the group and each member's
/// listing (`None` for skipped members).
pub fn build_report(
    map: &ClusterMap,
    group: &str,
    members: Vec<(MemberReport, Option<Listing>)>,
) -> VerifyReport {
    let g = map.group(group);
    let is_async = g.is_some_and(|g| g.mode == ReplicationMode::Async);
    let master = g.and_then(|g| g.master);
    let mut rows = Vec::with_capacity(members.len());
    let mut listings: Vec<(ServerId, Vec<FileSummary>, u64)> = Vec::new();
    for (mut row, listing) in members {
        match listing {
            None => {}
            Some(Ok((files, version))) => {
                row.listed = true;
                row.data_version = Some(version);
                row.files = Some(files.len());
                row.bytes = Some(files.iter().map(|f| f.size).sum());
                listings.push((row.id, files, version));
            }
            Some(Err(e)) => row.error = Some(e),
        }
        rows.push(row);
    }
    if is_async {
        let lists: Vec<(ServerId, &[FileSummary])> = listings
            .iter()
            .map(|(id, files, _)| (*id, files.as_slice()))
            .collect();
        let differences = diff_async(&lists);
        for row in rows.iter_mut() {
            row.differences = differences.iter().filter(|d| d.server == row.id).count();
        }
        return finish(map, group, g, None, rows, differences);
    }
    // The master's copy is the truth in sync mode; without it, the most
    // advanced member's.
    let reference = listings
        .iter()
        .find(|(id, ..)| Some(*id) == master)
        .or_else(|| listings.iter().max_by_key(|(id, _, v)| (*v, u64::MAX - id)))
        .map(|(id, ..)| *id);
    let mut differences = Vec::new();
    if let Some(rid) = reference {
        let empty = Vec::new();
        let ref_files = listings
            .iter()
            .find(|(id, ..)| *id == rid)
            .map_or(&empty, |(_, f, _)| f);
        for (id, files, _) in &listings {
            if *id == rid {
                continue;
            }
            let d = diff_listings(ref_files, files, *id);
            if let Some(row) = rows.iter_mut().find(|r| r.id == *id) {
                row.differences = d.len();
            }
            differences.extend(d);
        }
        if let Some(row) = rows.iter_mut().find(|r| r.id == rid) {
            row.reference = true;
        }
    }
    finish(map, group, g, reference, rows, differences)
}

fn finish(
    map: &ClusterMap,
    group: &str,
    g: Option<&GroupInfo>,
    reference: Option<ServerId>,
    rows: Vec<MemberReport>,
    differences: Vec<Difference>,
) -> VerifyReport {
    let compared = rows.iter().filter(|r| r.listed).count();
    let skipped = rows.iter().filter(|r| r.skipped).count();
    let unreachable = rows.iter().filter(|r| r.error.is_some()).count();
    VerifyReport {
        group: group.to_string(),
        mode: g.map_or(ReplicationMode::Sync, |g| g.mode).to_string(),
        map_version: map.version,
        epoch: g.map_or(0, |g| g.epoch),
        master: g.and_then(|g| g.master),
        reference,
        rounds: 1,
        members: rows,
        compared,
        skipped,
        unreachable,
        agree: differences.is_empty(),
        difference_count: differences.len(),
        differences,
    }
}

fn describe_diff(d: &Difference) -> String {
    let fmt = |s: &Option<FileState>| s.as_ref().map_or("-".to_string(), FileState::describe);
    match d.kind {
        DiffKind::Missing => format!(
            "server {}: missing {} ({})",
            d.server,
            d.file_id,
            fmt(&d.expected)
        ),
        DiffKind::Extra => format!(
            "server {}: extra {} ({})",
            d.server,
            d.file_id,
            fmt(&d.found)
        ),
        DiffKind::Mismatch => format!(
            "server {}: {} differs in {}: has {}, reference has {}",
            d.server,
            d.file_id,
            d.fields.join(", "),
            fmt(&d.found),
            fmt(&d.expected)
        ),
    }
}

/// The human rendering: a line per member, one per difference (at most
/// [`MAX_PRINTED`]), and a verdict.
pub fn render(r: &VerifyReport) -> String {
    let is_async = r.mode == ReplicationMode::Async.as_str();
    let mut out = if is_async {
        format!(
            "group {} (async): no master; each file compared with its source server's copy \
             (or the copy most members hold), map version {}{}\n",
            r.group,
            r.map_version,
            if r.rounds > 1 {
                format!(", listed {} times", r.rounds)
            } else {
                String::new()
            }
        )
    } else {
        format!(
            "group {}: epoch {}, master {}, map version {}\n",
            r.group,
            r.epoch,
            r.master.map_or("none".to_string(), |m| m.to_string()),
            r.map_version
        )
    };
    for m in &r.members {
        let head = format!(
            "  server {} {} {} {}",
            m.id,
            m.address,
            m.status.to_ascii_uppercase(),
            m.role
        );
        let tail = if m.skipped {
            format!(
                "skipped ({}; --all to include)",
                if m.status == "offline" {
                    "offline"
                } else {
                    "not ACTIVE in an async group"
                }
            )
        } else if let Some(e) = &m.error {
            format!("UNREACHABLE: {e}")
        } else {
            let what = if m.reference {
                "reference".to_string()
            } else if m.differences == 0 {
                "agrees".to_string()
            } else {
                format!("{} differences", m.differences)
            };
            format!(
                "data_version {} files {} bytes {}: {what}",
                m.data_version.unwrap_or(0),
                m.files.unwrap_or(0),
                m.bytes.unwrap_or(0)
            )
        };
        out.push_str(&format!("{head}  {tail}\n"));
    }
    for d in r.differences.iter().take(MAX_PRINTED) {
        out.push_str(&describe_diff(d));
        out.push('\n');
    }
    if r.differences.len() > MAX_PRINTED {
        out.push_str(&format!(
            "... and {} more\n",
            r.differences.len() - MAX_PRINTED
        ));
    }
    let files = r
        .members
        .iter()
        .filter(|m| m.reference || (is_async && m.listed))
        .filter_map(|m| m.files)
        .max()
        .unwrap_or(0);
    let verdict = if !r.agree {
        format!(
            "replicas differ: {} differences among {} members listed",
            r.difference_count, r.compared
        )
    } else if r.compared == 0 {
        "nothing compared: no member could be listed".to_string()
    } else {
        format!(
            "{} of {} members listed agree: {files} files{}",
            r.compared,
            r.members.len(),
            if r.unreachable > 0 {
                format!(" ({} unreachable)", r.unreachable)
            } else {
                String::new()
            }
        )
    };
    out.push_str(&verdict);
    out
}

/// Pause between listings while an async group settles (`--wait`).
const SETTLE_PAUSE: Duration = Duration::from_secs(1);

/// List every member of the group `map` shows (at once) and compare.
async fn list_and_compare(
    client: &Client,
    map: &ClusterMap,
    args: &VerifyArgs,
) -> CliResult<VerifyReport> {
    let to_list = members_to_list(map, &args.group, args.all)?;
    let mut set = tokio::task::JoinSet::new();
    for (i, (row, skipped)) in to_list.iter().enumerate() {
        if *skipped {
            continue;
        }
        let client = client.clone();
        let addr = row.address.clone();
        set.spawn(async move {
            let r = client
                .list_all_files(&addr)
                .await
                .map_err(|e| e.to_string());
            (i, r)
        });
    }
    let mut listings: Vec<Option<Listing>> = vec![None; to_list.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => listings[i] = Some(r),
            Err(e) => return Err(CliError::new("internal", e.to_string(), exit::OTHER)),
        }
    }
    let members = to_list
        .into_iter()
        .zip(listings)
        .map(|((row, skipped), l)| {
            // A listed member whose task vanished cannot happen (join
            // errors return above); report it unreachable if it did.
            let l = if skipped {
                None
            } else {
                Some(l.unwrap_or_else(|| Err("not listed".into())))
            };
            (row, l)
        })
        .collect();
    Ok(build_report(map, &args.group, members))
}

/// `chorus verify GROUP [--all] [--wait SECS]`.
pub async fn run(
    leaders: &[String],
    cfg: ClientConfig,
    timeout: Duration,
    args: VerifyArgs,
    out: Output,
) -> CliResult {
    let lc = leader_client(leaders, timeout);
    let client = Client::connect_with(leaders.to_vec(), cfg).await?;
    let settle_until = Instant::now() + Duration::from_secs_f64(args.wait.max(0.0));
    let mut rounds = 0u32;
    let report = loop {
        let map = lc.get_map(true).await?;
        let mut report = list_and_compare(&client, &map, &args).await?;
        rounds += 1;
        report.rounds = rounds;
        let settling = report.mode == ReplicationMode::Async.as_str()
            && !report.agree
            && Instant::now() + SETTLE_PAUSE <= settle_until;
        if !settling {
            break report;
        }
        tracing::info!(
            differences = report.difference_count,
            "async group {} differs; listing again",
            report.group
        );
        tokio::time::sleep(SETTLE_PAUSE).await;
    };
    if out.json {
        print_json(&report)?;
    } else {
        print_line(&render(&report))?;
    }
    match report.exit_status() {
        0 => Ok(()),
        EXIT_DIFFER => Err(CliError::new(
            "replicas_differ",
            format!(
                "{} differences between the members of {}",
                report.difference_count, report.group
            ),
            EXIT_DIFFER,
        )),
        code => Err(CliError::new(
            "unreachable",
            format!(
                "{} of {} members of {} could not be listed",
                report.unreachable,
                report.members.len() - report.skipped,
                report.group
            ),
            code,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::{GroupInfo, ReplicationMode, ServerInfo};

    fn f(id: &str, size: u64, crc32: u32, version: u64) -> FileSummary {
        FileSummary {
            file_id: id.into(),
            size,
            crc32,
            version,
        }
    }

    fn server(id: u64, status: ServerStatus) -> ServerInfo {
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

    fn map(master: Option<u64>) -> ClusterMap {
        ClusterMap {
            version: 9,
            updated_ms: 0,
            groups: vec![GroupInfo {
                name: "g1".into(),
                mode: ReplicationMode::Sync,
                members: vec![1, 2, 3, 4],
                master,
                epoch: 3,
                master_lease_ms: 3000,
                epoch_starts: Vec::new(),
            }],
            servers: vec![
                server(1, ServerStatus::Active),
                server(2, ServerStatus::Active),
                server(3, ServerStatus::Offline),
                server(4, ServerStatus::Deleted),
            ],
        }
    }

    #[test]
    fn diffs_name_missing_extra_and_mismatched_files() {
        let reference = vec![
            f("a", 1, 1, 1),
            f("b", 2, 2, 2),
            f("c", 3, 3, 3),
            f("e", 5, 5, 5),
        ];
        let found = vec![
            f("b", 2, 2, 2),
            f("c", 4, 3, 9),
            f("d", 1, 1, 1),
            f("e", 5, 6, 5),
        ];
        let d = diff_listings(&reference, &found, 2);
        let summary: Vec<(&str, DiffKind, Vec<&str>)> = d
            .iter()
            .map(|d| (d.file_id.as_str(), d.kind, d.fields.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", DiffKind::Missing, vec![]),
                ("c", DiffKind::Mismatch, vec!["size", "version"]),
                ("d", DiffKind::Extra, vec![]),
                ("e", DiffKind::Mismatch, vec!["crc32"]),
            ]
        );
        assert!(d.iter().all(|d| d.server == 2));
        assert_eq!(
            d[0].expected,
            Some(FileState {
                size: 1,
                crc32: 1,
                version: 1
            })
        );
        assert_eq!(d[0].found, None);
        assert_eq!(d[2].expected, None);
        assert!(diff_listings(&reference, &reference, 2).is_empty());
        assert_eq!(diff_listings(&[], &reference, 2).len(), 4);
    }

    #[test]
    fn members_skip_offline_and_deleted() {
        let m = map(Some(1));
        let rows = members_to_list(&m, "g1", false).unwrap();
        let ids: Vec<(u64, bool)> = rows.iter().map(|(r, s)| (r.id, *s)).collect();
        assert_eq!(ids, vec![(1, false), (2, false), (3, true)]);
        assert_eq!(rows[0].0.role, "master");
        assert_eq!(rows[2].0.status, "offline");
        let rows = members_to_list(&m, "g1", true).unwrap();
        assert!(rows.iter().all(|(_, s)| !s));
        let e = members_to_list(&m, "nope", false).unwrap_err();
        assert_eq!(e.exit, exit::NOT_FOUND);
        assert!(e.message.contains("g1"), "{}", e.message);
    }

    #[test]
    fn report_compares_with_the_master_and_sets_the_exit_status() {
        let m = map(Some(2));
        let rows = members_to_list(&m, "g1", false).unwrap();
        let files = vec![f("a", 1, 1, 1), f("b", 2, 2, 2)];
        let listed = |rows: &[(MemberReport, bool)], one: Option<Listing>, two: Option<Listing>| {
            let mut it = [one, two, None].into_iter();
            rows.iter()
                .map(|(r, _)| (r.clone(), it.next().flatten()))
                .collect::<Vec<_>>()
        };
        // Agreement; the OFFLINE member is skipped, not a difference.
        let r = build_report(
            &m,
            "g1",
            listed(
                &rows,
                Some(Ok((files.clone(), 7))),
                Some(Ok((files.clone(), 7))),
            ),
        );
        assert!(r.agree);
        assert_eq!((r.compared, r.skipped, r.unreachable), (2, 1, 0));
        assert_eq!(r.reference, Some(2));
        assert_eq!(r.exit_status(), 0);
        let text = render(&r);
        assert!(
            text.contains("2 of 3 members listed agree: 2 files"),
            "{text}"
        );
        assert!(text.contains("skipped (offline"), "{text}");

        // Server 1 lacks a file the master (2) has.
        let r = build_report(
            &m,
            "g1",
            listed(
                &rows,
                Some(Ok((files[..1].to_vec(), 6))),
                Some(Ok((files.clone(), 7))),
            ),
        );
        assert!(!r.agree);
        assert_eq!(r.exit_status(), EXIT_DIFFER);
        assert_eq!(r.differences.len(), 1);
        assert_eq!(
            (r.differences[0].server, r.differences[0].kind),
            (1, DiffKind::Missing)
        );
        assert_eq!(r.members[0].differences, 1);
        let text = render(&r);
        assert!(text.contains("server 1: missing b (size 2"), "{text}");
        assert!(text.contains("replicas differ: 1 differences"), "{text}");

        // A member that cannot be listed: unreachable, unless others differ.
        let r = build_report(
            &m,
            "g1",
            listed(
                &rows,
                Some(Err("refused".into())),
                Some(Ok((files.clone(), 7))),
            ),
        );
        assert_eq!((r.unreachable, r.exit_status()), (1, exit::UNREACHABLE));
        assert!(render(&r).contains("UNREACHABLE: refused"));

        // Without a master, the most advanced member is the reference.
        let m = map(None);
        let rows = members_to_list(&m, "g1", false).unwrap();
        let r = build_report(
            &m,
            "g1",
            listed(
                &rows,
                Some(Ok((files.clone(), 9))),
                Some(Ok((files[1..].to_vec(), 4))),
            ),
        );
        assert_eq!(r.reference, Some(1));
        assert_eq!(r.differences[0].server, 2);
    }

    #[test]
    fn long_reports_are_cut_at_fifty_lines() {
        let m = map(Some(1));
        let rows = members_to_list(&m, "g1", false).unwrap();
        let files: Vec<FileSummary> = (0..120).map(|i| f(&format!("f{i:03}"), i, 0, 1)).collect();
        let mut it = [Some(Ok((files, 1))), Some(Ok((Vec::new(), 0))), None].into_iter();
        let members = rows
            .iter()
            .map(|(r, _)| (r.clone(), it.next().flatten()))
            .collect();
        let r = build_report(&m, "g1", members);
        assert_eq!(r.difference_count, 120);
        let text = render(&r);
        assert_eq!(text.matches(": missing ").count(), MAX_PRINTED);
        assert!(text.contains("... and 70 more"), "{text}");
        // JSON carries every difference.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["differences"].as_array().unwrap().len(), 120);
        assert_eq!(v["members"][1]["differences"], 120);
    }

    /// g1 as an async group: members 1, 2 (ACTIVE), 3 (SYNCING), 4 (OFFLINE).
    fn async_map() -> ClusterMap {
        let mut m = map(None);
        m.groups[0].mode = ReplicationMode::Async;
        m.groups[0].epoch = 0;
        m.server_mut(3).unwrap().status = ServerStatus::Syncing;
        m.server_mut(4).unwrap().status = ServerStatus::Offline;
        m
    }

    fn id_from(source: u32) -> String {
        proto::FileId::generate("g1", 0, source, 1_700_000_000, 1, 0, "")
            .unwrap()
            .to_string()
    }

    fn sorted(mut v: Vec<FileSummary>) -> Vec<FileSummary> {
        v.sort_by(|a, b| a.file_id.cmp(&b.file_id));
        v
    }

    #[test]
    fn async_diffs_take_each_files_source_as_its_reference() {
        let (f1, f2, f3, f4) = (id_from(1), id_from(2), id_from(9), id_from(3));
        // f1 (source 1): 2 has an older version, 3 lacks it.
        // f2 (source 2): deleted at the source, still on 1 and 3.
        // f3 (source 9, not listed): 1 and 2 agree, 3 differs.
        // f4 (source 3): the same everywhere.
        let l1 = sorted(vec![
            f(&f1, 5, 50, 2),
            f(&f2, 1, 1, 1),
            f(&f3, 7, 7, 1),
            f(&f4, 4, 4, 1),
        ]);
        let l2 = sorted(vec![f(&f1, 4, 40, 1), f(&f3, 7, 7, 1), f(&f4, 4, 4, 1)]);
        let l3 = sorted(vec![f(&f2, 1, 1, 1), f(&f3, 7, 8, 1), f(&f4, 4, 4, 1)]);
        let d = diff_async(&[(1, &l1), (2, &l2), (3, &l3)]);
        let mut got: Vec<(String, ServerId, DiffKind, Vec<&str>)> = d
            .iter()
            .map(|d| (d.file_id.clone(), d.server, d.kind, d.fields.clone()))
            .collect();
        got.sort();
        let mut want = vec![
            (
                f1.clone(),
                2,
                DiffKind::Mismatch,
                vec!["size", "crc32", "version"],
            ),
            (f1.clone(), 3, DiffKind::Missing, vec![]),
            (f2.clone(), 1, DiffKind::Extra, vec![]),
            (f2.clone(), 3, DiffKind::Extra, vec![]),
            (f3.clone(), 3, DiffKind::Mismatch, vec!["crc32"]),
        ];
        want.sort();
        assert_eq!(got, want);
        // The expected copy of f1 is the source's.
        let stale = d.iter().find(|d| d.file_id == f1 && d.server == 2).unwrap();
        assert_eq!(stale.expected.as_ref().map(|e| e.version), Some(2));
        assert_eq!(stale.found.as_ref().map(|e| e.version), Some(1));
        // Identical listings agree; one member alone agrees with itself.
        assert!(diff_async(&[(1, &l1), (2, &l1), (3, &l1)]).is_empty());
        assert!(diff_async(&[(2, &l2)]).is_empty());
        assert!(diff_async(&[]).is_empty());
    }

    #[test]
    fn async_groups_list_active_members_and_compare_them_all() {
        let m = async_map();
        let rows = members_to_list(&m, "g1", false).unwrap();
        let ids: Vec<(u64, bool, &str)> = rows
            .iter()
            .map(|(r, s)| (r.id, *s, r.role.as_str()))
            .collect();
        // 3 (SYNCING) and 4 (OFFLINE) are skipped.
        assert_eq!(
            ids,
            vec![
                (1, false, "peer"),
                (2, false, "peer"),
                (3, true, "peer"),
                (4, true, "peer")
            ]
        );
        let rows_all = members_to_list(&m, "g1", true).unwrap();
        assert!(rows_all.iter().all(|(_, s)| !s));

        let (a, b) = (id_from(1), id_from(2));
        let files = sorted(vec![f(&a, 1, 1, 1), f(&b, 2, 2, 3)]);
        let listed = |one: Listing, two: Listing| {
            let mut it = [Some(one), Some(two), None, None].into_iter();
            rows.iter()
                .map(|(r, _)| (r.clone(), it.next().flatten()))
                .collect::<Vec<_>>()
        };
        // Data versions differ (each member numbers its own changes): still
        // agreement.
        let r = build_report(
            &m,
            "g1",
            listed(Ok((files.clone(), 10)), Ok((files.clone(), 3))),
        );
        assert!(r.agree, "{r:?}");
        assert_eq!(
            (r.mode.as_str(), r.reference, r.master),
            ("async", None, None)
        );
        assert_eq!((r.compared, r.skipped, r.exit_status()), (2, 2, 0));
        let text = render(&r);
        assert!(text.contains("(async)"), "{text}");
        assert!(
            text.contains("2 of 4 members listed agree: 2 files"),
            "{text}"
        );
        assert!(text.contains("not ACTIVE in an async group"), "{text}");
        assert!(text.contains("offline; --all"), "{text}");

        // Server 1 has an older version of server 2's file b.
        let stale = sorted(vec![f(&a, 1, 1, 1), f(&b, 2, 9, 2)]);
        let r = build_report(&m, "g1", listed(Ok((stale, 10)), Ok((files.clone(), 3))));
        assert!(!r.agree);
        assert_eq!(r.exit_status(), EXIT_DIFFER);
        assert_eq!(r.difference_count, 1);
        assert_eq!((r.members[0].differences, r.members[1].differences), (1, 0));
        let text = render(&r);
        assert!(text.contains("differs in crc32, version"), "{text}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mode"], "async");
        assert_eq!(v["differences"][0]["server"], 1);

        // Server 2 missing a's file while a's source (1) has it.
        let r = build_report(
            &m,
            "g1",
            listed(Ok((files.clone(), 1)), Ok((vec![f(&b, 2, 2, 3)], 1))),
        );
        assert_eq!(r.differences[0].kind, DiffKind::Missing);
        assert_eq!(r.differences[0].server, 2);
    }
}
