//! Self-describing file ids, FastDFS style.
//!
//! ```text
//! <group>/M<SS>/<D1>/<D2>/<name>[.<ext>]
//! ```
//!
//! * `group`: 1–16 of `[A-Za-z0-9_-]`, the group that owns the file;
//! * `SS`: the store path index on the source server, two upper-case hex digits;
//! * `D1/D2`: two directory levels, upper-case hex, derived from `unique`;
//! * `name`: base64url (no padding) of 28 bytes, big-endian: source server
//!   id (u32), create time in Unix seconds (u32), size at creation (u64),
//!   crc32 at creation (u32), and a random `unique` (u64);
//! * `ext`: optional, 1–16 of `[A-Za-z0-9]`.
//!
//! The parser accepts exactly the canonical form and nothing else, so a
//! parsed id can never name a path outside the store: every path component
//! is rebuilt from decoded numbers, never copied from the input.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::fmt;
use std::path::PathBuf;

const NAME_BYTES: usize = 28;
const NAME_CHARS: usize = 38;
/// Longest group name.
pub const MAX_GROUP_LEN: usize = 16;
/// Longest extension.
pub const MAX_EXT_LEN: usize = 16;

/// Why a string is not a file id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileIdError {
    #[error("file id must look like <group>/M<SS>/<HH>/<HH>/<name>[.<ext>]")]
    Shape,
    #[error("invalid group name {0:?}: 1-{MAX_GROUP_LEN} of [A-Za-z0-9_-]")]
    Group(String),
    #[error(
        "invalid store path component {0:?}: expected M followed by two upper-case hex digits"
    )]
    StorePath(String),
    #[error("invalid directory component {0:?}")]
    Dir(String),
    #[error("invalid file name {0:?}: expected {NAME_CHARS} base64url characters")]
    Name(String),
    #[error("invalid extension {0:?}: 1-{MAX_EXT_LEN} of [A-Za-z0-9]")]
    Ext(String),
}

/// A parsed, validated file id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileId {
    group: String,
    store_path: u8,
    source_server: u32,
    create_time: u32,
    size: u64,
    crc32: u32,
    unique: u64,
    ext: String,
}

/// Check a group name (also used for configuration).
pub fn validate_group(group: &str) -> Result<(), FileIdError> {
    let ok = !group.is_empty()
        && group.len() <= MAX_GROUP_LEN
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FileIdError::Group(group.to_string()))
    }
}

/// Check a file extension (without the dot); empty means none.
pub fn validate_ext(ext: &str) -> Result<(), FileIdError> {
    let ok = ext.len() <= MAX_EXT_LEN && ext.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(FileIdError::Ext(ext.to_string()))
    }
}

fn parse_hex2(s: &str) -> Option<u8> {
    let b = s.as_bytes();
    if b.len() != 2
        || !b
            .iter()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
    {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

impl FileId {
    /// Build an id from its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        group: &str,
        store_path: u8,
        source_server: u32,
        create_time: u32,
        size: u64,
        crc32: u32,
        unique: u64,
        ext: &str,
    ) -> Result<Self, FileIdError> {
        validate_group(group)?;
        validate_ext(ext)?;
        Ok(FileId {
            group: group.to_string(),
            store_path,
            source_server,
            create_time,
            size,
            crc32,
            unique,
            ext: ext.to_string(),
        })
    }

    /// A new id with a random `unique` part.
    pub fn generate(
        group: &str,
        store_path: u8,
        source_server: u32,
        create_time: u32,
        size: u64,
        crc32: u32,
        ext: &str,
    ) -> Result<Self, FileIdError> {
        let unique = rand::random::<u64>();
        Self::new(
            group,
            store_path,
            source_server,
            create_time,
            size,
            crc32,
            unique,
            ext,
        )
    }

    /// Parse the canonical text form; anything else is an error.
    pub fn parse(s: &str) -> Result<Self, FileIdError> {
        let mut parts = s.split('/');
        let (Some(group), Some(sp), Some(d1), Some(d2), Some(file), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(FileIdError::Shape);
        };
        validate_group(group)?;
        let store_path = sp
            .strip_prefix('M')
            .and_then(parse_hex2)
            .ok_or_else(|| FileIdError::StorePath(sp.to_string()))?;
        let d1v = parse_hex2(d1).ok_or_else(|| FileIdError::Dir(d1.to_string()))?;
        let d2v = parse_hex2(d2).ok_or_else(|| FileIdError::Dir(d2.to_string()))?;
        let (name, ext) = match file.split_once('.') {
            Some((n, e)) => {
                if e.is_empty() {
                    return Err(FileIdError::Ext(e.to_string()));
                }
                (n, e)
            }
            None => (file, ""),
        };
        validate_ext(ext)?;
        if name.len() != NAME_CHARS {
            return Err(FileIdError::Name(name.to_string()));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(name)
            .map_err(|_| FileIdError::Name(name.to_string()))?;
        let raw: [u8; NAME_BYTES] = raw
            .try_into()
            .map_err(|_| FileIdError::Name(name.to_string()))?;
        let be32 = |o: usize| u32::from_be_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        let be64 = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[o..o + 8]);
            u64::from_be_bytes(b)
        };
        let id = FileId {
            group: group.to_string(),
            store_path,
            source_server: be32(0),
            create_time: be32(4),
            size: be64(8),
            crc32: be32(16),
            unique: be64(20),
            ext: ext.to_string(),
        };
        let (e1, e2) = id.dirs();
        if e1 != d1v || e2 != d2v {
            return Err(FileIdError::Dir(format!("{d1}/{d2}")));
        }
        // Canonical form only: re-encoding must give back the input.
        if id.name() != name {
            return Err(FileIdError::Name(name.to_string()));
        }
        Ok(id)
    }

    fn dirs(&self) -> (u8, u8) {
        let h = self.unique.to_be_bytes();
        (h[6], h[7])
    }

    /// The base64url name (without extension).
    pub fn name(&self) -> String {
        let mut raw = [0u8; NAME_BYTES];
        raw[0..4].copy_from_slice(&self.source_server.to_be_bytes());
        raw[4..8].copy_from_slice(&self.create_time.to_be_bytes());
        raw[8..16].copy_from_slice(&self.size.to_be_bytes());
        raw[16..20].copy_from_slice(&self.crc32.to_be_bytes());
        raw[20..28].copy_from_slice(&self.unique.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The file's path below a store path's data directory:
    /// `<D1>/<D2>/<name>[.<ext>]`, built from validated parts only.
    pub fn relative_path(&self) -> PathBuf {
        let (d1, d2) = self.dirs();
        let mut p = PathBuf::from(format!("{d1:02X}"));
        p.push(format!("{d2:02X}"));
        p.push(self.file_name());
        p
    }

    /// `<name>[.<ext>]`
    pub fn file_name(&self) -> String {
        if self.ext.is_empty() {
            self.name()
        } else {
            format!("{}.{}", self.name(), self.ext)
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }
    pub fn store_path(&self) -> u8 {
        self.store_path
    }
    pub fn source_server(&self) -> u32 {
        self.source_server
    }
    pub fn create_time(&self) -> u32 {
        self.create_time
    }
    pub fn size_at_create(&self) -> u64 {
        self.size
    }
    pub fn crc32_at_create(&self) -> u32 {
        self.crc32
    }
    pub fn unique(&self) -> u64 {
        self.unique
    }
    pub fn ext(&self) -> &str {
        &self.ext
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (d1, d2) = self.dirs();
        write!(
            f,
            "{}/M{:02X}/{d1:02X}/{d2:02X}/{}",
            self.group,
            self.store_path,
            self.file_name()
        )
    }
}

impl std::str::FromStr for FileId {
    type Err = FileIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FileId {
        FileId::new(
            "group1",
            3,
            17,
            1_700_000_000,
            4096,
            0xdeadbeef,
            0x0123_4567_89ab_cdef,
            "jpg",
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let id = sample();
        let s = id.to_string();
        assert!(s.starts_with("group1/M03/CD/EF/"), "{s}");
        assert!(s.ends_with(".jpg"));
        let back = FileId::parse(&s).unwrap();
        assert_eq!(back, id);
        assert_eq!(back.source_server(), 17);
        assert_eq!(back.size_at_create(), 4096);
        assert_eq!(
            back.relative_path(),
            PathBuf::from(format!("CD/EF/{}.jpg", id.name()))
        );
    }

    #[test]
    fn no_ext() {
        let id = FileId::new("g", 0, 1, 2, 3, 4, 5, "").unwrap();
        assert_eq!(FileId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn generated_ids_differ() {
        let a = FileId::generate("g", 0, 1, 2, 3, 4, "").unwrap();
        let b = FileId::generate("g", 0, 1, 2, 3, 4, "").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn rejects_crafted_ids() {
        let good = sample().to_string();
        let name = sample().name();
        let bad = [
            String::new(),
            "group1".to_string(),
            format!("../M03/CD/EF/{name}.jpg"),
            format!("group1/M03/../EF/{name}.jpg"),
            format!("group1/M03/CD/EF/../../{name}"),
            format!("group1/M03/CD/EF/{name}.jpg/"),
            format!("/group1/M03/CD/EF/{name}.jpg"),
            format!("group1/M3/CD/EF/{name}.jpg"),
            format!("group1/M03/cd/ef/{name}.jpg"),
            format!("group1/M03/00/00/{name}.jpg"),
            format!("group1/X03/CD/EF/{name}.jpg"),
            format!("group1/M03/CD/EF/{name}."),
            format!("group1/M03/CD/EF/{name}.j/g"),
            format!("group1/M03/CD/EF/{name}.a.b"),
            format!("group1/M03/CD/EF/{}.jpg", &name[..37]),
            format!("group1/M03/CD/EF/{}!.jpg", &name[..37]),
            format!("group1/M03/CD/EF/{}+.jpg", &name[..37]),
            format!("grou p/M03/CD/EF/{name}.jpg"),
            format!("{}/M03/CD/EF/{name}.jpg", "g".repeat(17)),
            good.replace("group1", "group1\0"),
        ];
        for b in bad {
            assert!(FileId::parse(&b).is_err(), "accepted {b:?}");
        }
    }

    #[test]
    fn rejects_non_canonical_base64() {
        let id = sample();
        let s = id.to_string();
        // Flip the trailing bits of the last character: decodes to the same
        // bytes with a lenient decoder, but is not canonical.
        let name = id.name();
        let last = name.chars().last().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.find(last).unwrap();
        let alt = alphabet.as_bytes()[pos ^ 1] as char;
        let mut bad_name = name.clone();
        bad_name.pop();
        bad_name.push(alt);
        let bad = s.replace(&name, &bad_name);
        assert!(FileId::parse(&bad).is_err());
    }
}
