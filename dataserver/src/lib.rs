//! Chorus dataserver: the storage engine ([`engine`]), the network side
//! ([`server`]) and its configuration ([`config`]).

pub mod config;
pub mod engine;
pub mod server;
