//! Chorus leader.
