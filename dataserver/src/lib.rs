//! Chorus dataserver: the storage engine ([`engine`]), the network side
//! ([`server`]), cluster membership ([`cluster`]) and its configuration
//! ([`config`]).

pub mod cluster;
pub mod config;
pub mod engine;
pub mod repl;
pub mod server;
