//! Where file commands and bench send their requests: one dataserver
//! (`--server`) or a cluster through its leaders (`--leaders`).

use client::{Client, ClientConfig};

use crate::output::{CliError, CliResult};

#[derive(Debug, Clone)]
pub enum Endpoint {
    Server(String),
    Leaders(Vec<String>),
}

impl Endpoint {
    /// `--leaders` when given (and not empty), else `--server`.
    pub fn from_args(server: &str, leaders: Option<&[String]>) -> Endpoint {
        let leaders: Vec<String> = leaders
            .unwrap_or_default()
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if leaders.is_empty() {
            Endpoint::Server(server.to_string())
        } else {
            Endpoint::Leaders(leaders)
        }
    }

    /// The leader addresses, or a usage error naming `what` needs them.
    pub fn leaders(&self, what: &str) -> CliResult<&[String]> {
        match self {
            Endpoint::Leaders(l) => Ok(l),
            Endpoint::Server(_) => Err(CliError::usage(format!(
                "{what} needs the leaders: pass --leaders ADDR,ADDR,... or set CHORUS_LEADERS"
            ))),
        }
    }

    pub async fn connect(&self, cfg: ClientConfig) -> CliResult<Client> {
        Ok(match self {
            Endpoint::Server(addr) => Client::connect_direct_with(addr.clone(), cfg).await?,
            Endpoint::Leaders(l) => Client::connect_with(l.clone(), cfg).await?,
        })
    }
}
