//! Chorus dataserver.
