//! Printing results (text or JSON) and errors, and exit statuses.

use std::io::Write;

use client::leader::LeaderClientError;
use client::{ClientError, ErrorCode, FileMeta, FileStat};
use serde::Serialize;
use serde_json::json;

/// Exit statuses (documented in `--help`, see [`crate::cli::EXIT_CODES`]).
pub mod exit {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const VERSION_MISMATCH: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
}

/// A failure to report: one line on stderr and an exit status.
#[derive(Debug)]
pub struct CliError {
    pub code: String,
    pub message: String,
    pub exit: u8,
}

impl CliError {
    pub fn new(code: &str, message: impl Into<String>, exit: u8) -> Self {
        CliError {
            code: code.to_string(),
            message: message.into(),
            exit,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new("usage", message, exit::USAGE)
    }

    /// An exit status without a message (e.g. `exists` of a missing file).
    pub fn silent(exit: u8) -> Self {
        CliError::new("", "", exit)
    }

    /// Print `error: <code>: <message>` as one line on stderr (nothing for
    /// a [`silent`](Self::silent) status).
    pub fn report(&self) {
        if self.code.is_empty() {
            return;
        }
        let message = self.message.replace(['\n', '\r'], " ");
        let _ = writeln!(std::io::stderr(), "error: {}: {}", self.code, message);
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        let exit = match e.code() {
            Some(ErrorCode::NotFound) => exit::NOT_FOUND,
            Some(ErrorCode::VersionMismatch) => exit::VERSION_MISMATCH,
            Some(ErrorCode::Timeout) => exit::UNREACHABLE,
            _ if e.is_network() => exit::UNREACHABLE,
            _ => exit::OTHER,
        };
        CliError::new(e.kind_str(), e.message(), exit)
    }
}

impl From<LeaderClientError> for CliError {
    fn from(e: LeaderClientError) -> Self {
        match &e {
            LeaderClientError::Refused(refusal) => {
                let code = refusal.code();
                let exit = if code == ErrorCode::NotFound {
                    exit::NOT_FOUND
                } else {
                    exit::OTHER
                };
                CliError::new(code.as_str(), refusal.error.message.clone(), exit)
            }
            LeaderClientError::Unavailable { .. } => {
                CliError::new("unreachable", e.to_string(), exit::UNREACHABLE)
            }
            LeaderClientError::NoAddresses => CliError::usage(e.to_string()),
            LeaderClientError::Unexpected(_) => {
                CliError::new("protocol", e.to_string(), exit::OTHER)
            }
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new("io", e.to_string(), exit::OTHER)
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Where results go: text or JSON on stdout.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

#[derive(Serialize)]
pub struct StatJson<'a> {
    pub file_id: &'a str,
    pub size: u64,
    pub crc32: u32,
    pub version: u64,
    pub appender: bool,
    pub create_time_us: u64,
    pub modify_time_us: u64,
}

impl<'a> From<&'a FileStat> for StatJson<'a> {
    fn from(s: &'a FileStat) -> Self {
        StatJson {
            file_id: &s.file_id,
            size: s.size,
            crc32: s.crc32,
            version: s.version,
            appender: s.appender,
            create_time_us: s.create_time_us,
            modify_time_us: s.modify_time_us,
        }
    }
}

pub fn print_line(s: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")?;
    out.flush()?;
    Ok(())
}

pub fn print_json(v: &impl Serialize) -> CliResult {
    let s = serde_json::to_string(v).map_err(|e| CliError::new("internal", e.to_string(), 1))?;
    print_line(&s)
}

impl Output {
    /// After an upload: the id alone, or `{file_id, version, size, crc32}`.
    pub fn uploaded(&self, s: &FileStat) -> CliResult {
        if self.json {
            print_json(&json!({
                "file_id": s.file_id,
                "version": s.version,
                "size": s.size,
                "crc32": s.crc32,
            }))
        } else {
            print_line(&s.file_id)
        }
    }

    /// A full stat.
    pub fn stat(&self, s: &FileStat) -> CliResult {
        if self.json {
            return print_json(&StatJson::from(s));
        }
        print_line(&format!(
            "file_id:   {}\nsize:      {}\ncrc32:     {:08x}\nversion:   {}\nappender:  {}\ncreated:   {}\nmodified:  {}",
            s.file_id,
            s.size,
            s.crc32,
            s.version,
            s.appender,
            format_time_us(s.create_time_us),
            format_time_us(s.modify_time_us),
        ))
    }

    /// After a change (append, modify, truncate, meta set): the new state.
    pub fn changed(&self, s: &FileStat) -> CliResult {
        if self.json {
            return print_json(&StatJson::from(s));
        }
        print_line(&format!("version={} size={}", s.version, s.size))
    }

    /// After a download to a file.
    pub fn downloaded(&self, s: &FileStat, path: &std::path::Path) -> CliResult {
        if self.json {
            return print_json(&json!({
                "file_id": s.file_id,
                "size": s.size,
                "crc32": s.crc32,
                "version": s.version,
                "path": path.display().to_string(),
            }));
        }
        Ok(())
    }

    pub fn deleted(&self, id: &str, version: u64) -> CliResult {
        if self.json {
            return print_json(&json!({"file_id": id, "deleted": true, "version": version}));
        }
        Ok(())
    }

    pub fn meta(&self, id: &str, m: &FileMeta) -> CliResult {
        if self.json {
            let map: serde_json::Map<String, serde_json::Value> = m
                .entries
                .iter()
                .map(|e| (e.key.clone(), serde_json::Value::String(e.value.clone())))
                .collect();
            return print_json(&json!({"file_id": id, "version": m.version, "meta": map}));
        }
        let mut out = std::io::stdout().lock();
        for e in &m.entries {
            writeln!(out, "{}={}", e.key, e.value)?;
        }
        out.flush()?;
        Ok(())
    }

    pub fn exists(&self, id: &str, exists: bool) -> CliResult {
        if self.json {
            return print_json(&json!({"file_id": id, "exists": exists}));
        }
        print_line(if exists { "true" } else { "false" })
    }

    pub fn json_value(&self, v: &serde_json::Value) -> CliResult {
        print_json(v)
    }

    pub fn text(&self, s: &str) -> CliResult {
        print_line(s)
    }
}

/// `2024-05-01T12:00:00.123456Z` from microseconds since the Unix epoch.
pub fn format_time_us(us: u64) -> String {
    let secs = us / 1_000_000;
    let micros = us % 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{micros:06}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(format_time_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_time_us(1_709_210_096_000_001),
            "2024-02-29T12:34:56.000001Z"
        );
    }

    #[test]
    fn maps_errors_to_exit_codes() {
        let nf: CliError = ClientError::Server {
            code: ErrorCode::NotFound,
            message: "no such file".into(),
        }
        .into();
        assert_eq!((nf.code.as_str(), nf.exit), ("not_found", exit::NOT_FOUND));
        assert_eq!(nf.message, "no such file");
        let vm: CliError = ClientError::Server {
            code: ErrorCode::VersionMismatch,
            message: "x".into(),
        }
        .into();
        assert_eq!(vm.exit, exit::VERSION_MISMATCH);
        let conn: CliError = ClientError::Connect {
            addr: "a".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        }
        .into();
        assert_eq!(
            (conn.code.as_str(), conn.exit),
            ("connect", exit::UNREACHABLE)
        );
        let other: CliError = ClientError::InvalidArgument("bad".into()).into();
        assert_eq!(other.exit, exit::OTHER);
    }
}
