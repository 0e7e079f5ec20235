//! Cluster map and leader protocol (filled in by the leader work).
