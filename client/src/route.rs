//! Picking the server for an operation.
//!
//! Every operation asks the router for a [`Route`] before it takes a
//! connection from the pool: [`Router::Direct`] sends everything to one
//! dataserver; [`Router::Cluster`] follows the leaders' map (see
//! [`crate::cluster`]): in a sync group each operation goes to the master
//! of its file's group (or of the group chosen for an upload) with the
//! group's epoch; in an async group uploads go to any ACTIVE member,
//! changes to the file's source server, reads by the [`ReadRule`].
//!
//! [`ReadRule`]: crate::ReadRule

use std::sync::Arc;

use proto::FileId;

use crate::cluster::ClusterRouter;
use crate::error::Result;

/// What an operation needs from the cluster.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// Any server will do (ping).
    Any,
    /// A server that accepts new files (upload).
    Create,
    /// A server that may serve reads of this file.
    Read(&'a FileId),
    /// The server that applies writes to this file (its group's master;
    /// in an async group, the file's source server).
    Write(&'a FileId),
}

impl Target<'_> {
    /// The group the operation concerns, when it names a file.
    pub(crate) fn group(&self) -> Option<&str> {
        match self {
            Target::Any | Target::Create => None,
            Target::Read(id) | Target::Write(id) => Some(id.group()),
        }
    }

    pub(crate) fn is_write(&self) -> bool {
        matches!(self, Target::Create | Target::Write(_))
    }
}

/// Where to send one attempt of an operation.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub addr: Arc<str>,
    /// The group epoch to put in the request (0: don't check).
    pub epoch: u64,
    /// The version of the cluster map the route was read from (0 in
    /// direct mode).
    pub map_version: u64,
    /// Async groups, reads from a peer: the file's source server, asked
    /// before a `not_found` (or `exists = false`) from `addr` is believed,
    /// since a peer may not have a new file yet.
    pub fallback: Option<Arc<str>>,
}

/// How the client finds servers.
#[derive(Debug)]
pub(crate) enum Router {
    /// Every operation goes to one dataserver.
    Direct(Arc<str>),
    /// Operations go to their group's master, from the leaders' map.
    Cluster(ClusterRouter),
}

impl Router {
    pub(crate) fn route(&self, target: Target<'_>) -> Result<Route> {
        match self {
            Router::Direct(addr) => {
                tracing::trace!(
                    %addr,
                    group = target.group().unwrap_or("-"),
                    write = target.is_write(),
                    "direct route"
                );
                Ok(Route {
                    addr: addr.clone(),
                    epoch: 0,
                    map_version: 0,
                    fallback: None,
                })
            }
            Router::Cluster(c) => c.route(target),
        }
    }

    /// The cluster router, in cluster mode.
    pub(crate) fn cluster(&self) -> Option<&ClusterRouter> {
        match self {
            Router::Direct(_) => None,
            Router::Cluster(c) => Some(c),
        }
    }

    /// A description for error messages.
    pub(crate) fn describe(&self) -> &str {
        match self {
            Router::Direct(addr) => addr,
            Router::Cluster(c) => c.describe(),
        }
    }
}
