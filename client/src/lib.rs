//! Chorus client SDK.
