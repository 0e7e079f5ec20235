//! File commands: upload, download, delete, append, modify, truncate,
//! stat, meta, exists.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use client::{Client, MetaEntry, MetaMode, UploadOptions};
use tokio::io::AsyncWriteExt;

use crate::cli::{Command, MetaCommand};
use crate::output::{exit, CliError, CliResult, Output};
use crate::progress::{self, ProgressReader, ProgressWriter};

/// Local content to send: a file streamed from disk, or bytes in memory
/// (stdin from a pipe).
enum Input {
    File(tokio::fs::File, u64),
    Memory(Vec<u8>),
}

impl Input {
    fn len(&self) -> u64 {
        match self {
            Input::File(_, n) => *n,
            Input::Memory(v) => v.len() as u64,
        }
    }
}

/// Open `path` (`-` for stdin). Stdin redirected from a regular file is
/// streamed like a file; a pipe is read into memory first, since the
/// protocol needs the size up front.
async fn open_input(path: &Path) -> CliResult<Input> {
    if path.as_os_str() == "-" {
        let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata()?;
        if meta.is_file() {
            return Ok(Input::File(tokio::fs::File::from_std(file), meta.len()));
        }
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            std::io::stdin().lock().read_to_end(&mut buf).map(|_| buf)
        })
        .await
        .map_err(|e| CliError::new("internal", e.to_string(), exit::OTHER))??;
        return Ok(Input::Memory(data));
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::new("io", format!("{}: {e}", path.display()), exit::OTHER))?;
    let meta = file.metadata().await?;
    if !meta.is_file() {
        return Err(CliError::new(
            "io",
            format!("{}: not a regular file", path.display()),
            exit::OTHER,
        ));
    }
    Ok(Input::File(file, meta.len()))
}

/// The extension to store: `--ext`, else the path's own when it is a valid
/// Chorus extension, else none.
fn pick_ext(path: &Path, ext: Option<&str>) -> CliResult<String> {
    if let Some(e) = ext {
        let e = e.strip_prefix('.').unwrap_or(e);
        proto::file_id::validate_ext(e).map_err(|err| CliError::usage(err.to_string()))?;
        return Ok(e.to_string());
    }
    if path.as_os_str() == "-" {
        return Ok(String::new());
    }
    let from_path = path
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| !e.is_empty() && proto::file_id::validate_ext(e).is_ok())
        .unwrap_or("");
    Ok(from_path.to_string())
}

fn entries(kv: Vec<(String, String)>) -> Vec<MetaEntry> {
    kv.into_iter().map(|(k, v)| MetaEntry::new(k, v)).collect()
}

/// Run one file command.
pub async fn run(client: &Client, out: Output, cmd: Command) -> CliResult {
    match cmd {
        Command::Upload(a) => {
            let ext = pick_ext(&a.path, a.ext.as_deref())?;
            let opts = UploadOptions {
                ext,
                meta: entries(a.meta),
                appender: a.appender,
            };
            let stat = match open_input(&a.path).await? {
                Input::Memory(data) => client.upload(&data, opts).await?,
                Input::File(f, size) => {
                    let mut r = ProgressReader::new(f, progress::bar(size, "upload"));
                    let res = client.upload_reader(&mut r, size, opts).await;
                    r.finish();
                    res?
                }
            };
            out.uploaded(&stat)
        }
        Command::Download(a) => download(client, out, &a.id, a.output).await,
        Command::Delete(a) => {
            let version = client.delete(&a.id, a.if_version.if_version).await?;
            out.deleted(&a.id, version)
        }
        Command::Append(a) => {
            let input = open_input(&a.path).await?;
            let iv = a.if_version.if_version;
            let stat = match input {
                Input::Memory(data) => client.append(&a.id, &data, iv).await?,
                Input::File(f, size) => {
                    let mut r = ProgressReader::new(f, progress::bar(size, "append"));
                    let res = client.append_reader(&a.id, &mut r, size, iv).await;
                    r.finish();
                    res?
                }
            };
            out.changed(&stat)
        }
        Command::Modify(a) => {
            let input = open_input(&a.path).await?;
            let iv = a.if_version.if_version;
            let size = input.len();
            let stat = match input {
                Input::Memory(data) => client.modify(&a.id, a.offset, &data, iv).await?,
                Input::File(f, _) => {
                    let mut r = ProgressReader::new(f, progress::bar(size, "modify"));
                    let res = client
                        .modify_reader(&a.id, a.offset, &mut r, size, iv)
                        .await;
                    r.finish();
                    res?
                }
            };
            out.changed(&stat)
        }
        Command::Truncate(a) => {
            let stat = client
                .truncate(&a.id, a.size, a.if_version.if_version)
                .await?;
            out.changed(&stat)
        }
        Command::Stat(a) => {
            let stat = client.stat(&a.id).await?;
            out.stat(&stat)
        }
        Command::Meta(MetaCommand::Get(a)) => {
            let meta = client.get_meta(&a.id).await?;
            out.meta(&a.id, &meta)
        }
        Command::Meta(MetaCommand::Set(a)) => {
            let mode = if a.merge {
                MetaMode::Merge
            } else {
                MetaMode::Overwrite
            };
            let stat = client
                .set_meta(&a.id, entries(a.entries), mode, a.if_version.if_version)
                .await?;
            out.changed(&stat)
        }
        Command::Exists(a) => {
            let exists = client.exists(&a.id).await?;
            out.exists(&a.id, exists)?;
            if exists {
                Ok(())
            } else {
                // Not an error: no message, just the status.
                Err(CliError::silent(exit::NOT_FOUND))
            }
        }
        Command::Bench(_)
        | Command::Status(_)
        | Command::Failover(_)
        | Command::Server(_)
        | Command::Verify(_)
        | Command::Dev(_) => Err(CliError::new("internal", "not a file command", exit::OTHER)),
    }
}

/// Download to stdout, or to `output` (removed again if the download
/// fails).
async fn download(client: &Client, out: Output, id: &str, output: Option<PathBuf>) -> CliResult {
    // The size is needed for a progress bar; only ask when a bar could show.
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let size = client.stat(id).await?.size;
        progress::bar(size, "download")
    } else {
        None
    };
    match output {
        None => {
            let mut w = ProgressWriter::new(tokio::io::stdout(), bar);
            client.download_to(id, &mut w, ..).await?;
            w.flush().await?;
            w.finish();
            Ok(())
        }
        Some(path) => {
            let file = tokio::fs::File::create(&path).await.map_err(|e| {
                CliError::new("io", format!("{}: {e}", path.display()), exit::OTHER)
            })?;
            let mut w = ProgressWriter::new(file, bar);
            let res = client.download_to(id, &mut w, ..).await;
            w.finish();
            let res = match res {
                Ok(stat) => w
                    .into_inner()
                    .sync_all()
                    .await
                    .map(|()| stat)
                    .map_err(CliError::from),
                Err(e) => Err(CliError::from(e)),
            };
            match res {
                Ok(stat) => out.downloaded(&stat, &path),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&path).await;
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_rules() {
        assert_eq!(pick_ext(Path::new("a/b.jpg"), None).unwrap(), "jpg");
        assert_eq!(pick_ext(Path::new("noext"), None).unwrap(), "");
        assert_eq!(pick_ext(Path::new("x.tar.gz"), None).unwrap(), "gz");
        // Not storable as an extension: dropped.
        assert_eq!(pick_ext(Path::new("x.some-thing"), None).unwrap(), "");
        assert_eq!(pick_ext(Path::new("-"), None).unwrap(), "");
        assert_eq!(pick_ext(Path::new("a.jpg"), Some(".png")).unwrap(), "png");
        assert_eq!(pick_ext(Path::new("a.jpg"), Some("")).unwrap(), "");
        assert!(pick_ext(Path::new("a"), Some("b/c")).is_err());
    }
}
