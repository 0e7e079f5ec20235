//! Who a replicated change goes to (pure, unit-tested).

use std::collections::HashSet;

use proto::cluster::{ClusterMap, ServerId, ServerStatus};

/// One slave to send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: ServerId,
    pub addr: String,
    /// The write waits for it (ACTIVE, or ONLINE and being activated);
    /// else it is sent in the background (ONLINE).
    pub wait: bool,
}

/// The slaves of `group` that get a change from master `me`: ACTIVE ones
/// (waited for), ONLINE ones (waited for when in `activating`, else sent
/// in the background). Nobody else: servers copying or recovering pull.
pub fn targets(
    map: &ClusterMap,
    group: &str,
    me: ServerId,
    activating: &HashSet<ServerId>,
) -> Vec<Target> {
    let Some(g) = map.group(group) else {
        return Vec::new();
    };
    g.members
        .iter()
        .filter(|id| **id != me)
        .filter_map(|id| map.server(*id))
        .filter_map(|s| {
            let wait = match s.status {
                ServerStatus::Active => true,
                ServerStatus::Online => activating.contains(&s.id),
                _ => return None,
            };
            Some(Target {
                id: s.id,
                addr: s.addr.clone(),
                wait,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::cluster::{GroupInfo, ReplicationMode, ServerInfo};

    fn map(statuses: &[(ServerId, ServerStatus)]) -> ClusterMap {
        ClusterMap {
            version: 1,
            updated_ms: 0,
            groups: vec![GroupInfo {
                name: "g1".into(),
                mode: ReplicationMode::Sync,
                members: statuses.iter().map(|(id, _)| *id).collect(),
                master: Some(1),
                epoch: 1,
                master_lease_ms: 3000,
                epoch_starts: Vec::new(),
            }],
            servers: statuses
                .iter()
                .map(|(id, status)| ServerInfo {
                    id: *id,
                    addr: format!("h:{id}"),
                    group: "g1".into(),
                    status: *status,
                    data_version: 0,
                    disk_free: 0,
                    disk_total: 0,
                    status_changed_ms: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn active_slaves_are_waited_for_online_ones_only_when_activating() {
        use ServerStatus::*;
        let m = map(&[
            (1, Active),
            (2, Active),
            (3, Online),
            (4, Recovering),
            (5, Offline),
            (6, Online),
        ]);
        let activating: HashSet<ServerId> = [6].into_iter().collect();
        let t = targets(&m, "g1", 1, &activating);
        let got: Vec<(ServerId, bool)> = t.iter().map(|t| (t.id, t.wait)).collect();
        assert_eq!(got, vec![(2, true), (3, false), (6, true)]);
        assert!(targets(&m, "other", 1, &activating).is_empty());
    }
}
