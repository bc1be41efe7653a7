//! Files in a container through Docker's archive API (`GET`/`PUT`/`HEAD
//! /containers/{id}/archive`), so reading, writing and snapshotting need no tool in
//! the image — not even `sh`.
//!
//! Downloads are streamed: the HTTP body is fed through a small bounded channel into
//! a tar reader on a blocking thread, which keeps only what it returns. A snapshot of
//! a huge tree therefore costs the snapshot, not the tree (and a spilled snapshot
//! one file at a time: its contents go to disk as they arrive); when the reader stops
//! early (a limit hit, a directory where a file was expected) the transfer is dropped.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::{
    ContainerArchiveInfoOptionsBuilder, DownloadFromContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::meter::TarMeter;
use super::paths::{clean_abs, resolve_link, split};
use super::tarball::{Entry, Tree, build_tar, first_file, read_tree};
use super::{API_DEADLINE, DockerWorkspace, from_bollard, status_of, within};
use crate::workspace::spill::Builder;
use crate::workspace::{PathKind, WorkspaceError};

/// Deadline of one upload or download (a snapshot of a large tree takes a while).
pub(super) const TRANSFER_DEADLINE: Duration = Duration::from_secs(300);
/// Symlinks followed before giving up (a loop, or a silly chain).
const MAX_LINK_HOPS: usize = 8;
/// Go's `os.FileMode` bits, as Docker reports them in a path stat.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;
/// Chunks in flight between the HTTP body and the tar reader.
pub(super) const CHANNEL_CHUNKS: usize = 8;

/// What Docker says is at a path, symlinks not followed.
struct RawStat {
    mode: u32,
    size: u64,
    /// The link's target, already resolved to an absolute container path by Docker.
    link_target: String,
}

impl RawStat {
    fn is_dir(&self) -> bool {
        self.mode & GO_MODE_DIR != 0
    }
    fn is_symlink(&self) -> bool {
        self.mode & GO_MODE_SYMLINK != 0
    }
}

async fn raw_stat(ws: &DockerWorkspace, path: &str) -> Result<Option<RawStat>, WorkspaceError> {
    let options = ContainerArchiveInfoOptionsBuilder::new().path(path).build();
    match within(
        API_DEADLINE,
        ws.api().get_container_archive_info(&ws.name, Some(options)),
    )
    .await?
    {
        Ok(s) => Ok(Some(RawStat {
            mode: s.file_mode,
            size: s.size.max(0) as u64,
            link_target: s.link_target,
        })),
        Err(e) if status_of(&e) == Some(404) => Ok(None),
        Err(e) if status_of(&e) == Some(500) && below_a_non_dir(ws, path).await? => Ok(None),
        Err(e) => Err(from_bollard(e)),
    }
}

/// Whether `path` lies below something that is not a directory. Docker answers a
/// stat of `/file/child` with a bare 500 (ENOTDIR) rather than a 404, so a 500 is
/// checked against the parent before it counts as an engine failure.
async fn below_a_non_dir(ws: &DockerWorkspace, path: &str) -> Result<bool, WorkspaceError> {
    let Some((parent, _)) = split(path) else {
        return Ok(false);
    };
    // Boxed: the parent's stat may come back here for its own parent.
    match Box::pin(raw_stat(ws, parent)).await? {
        None => Ok(true),
        Some(s) => Ok(!s.is_dir() && !s.is_symlink()),
    }
}

/// The stat of what `path` leads to, and that path: symlinks are followed.
async fn resolved_stat(
    ws: &DockerWorkspace,
    path: &str,
) -> Result<(String, Option<RawStat>), WorkspaceError> {
    let mut path = clean_abs(path)?;
    for _ in 0..MAX_LINK_HOPS {
        match raw_stat(ws, &path).await? {
            Some(s) if s.is_symlink() && !s.link_target.is_empty() => {
                path = clean_abs(&s.link_target)?
            }
            other => return Ok((path, other)),
        }
    }
    Err(WorkspaceError::Path {
        path,
        message: "too many levels of symbolic links".into(),
    })
}

pub(super) async fn stat(
    ws: &DockerWorkspace,
    path: &str,
) -> Result<Option<PathKind>, WorkspaceError> {
    let (_, st) = resolved_stat(ws, path).await?;
    Ok(st.map(|s| {
        if s.is_dir() {
            PathKind::Dir
        } else {
            PathKind::File { size: s.size }
        }
    }))
}

/// Makes `dir` (and missing parents) exist as a directory.
pub(super) async fn ensure_dir(ws: &DockerWorkspace, dir: &str) -> Result<(), WorkspaceError> {
    let dir = clean_abs(dir)?;
    // Walk up to the deepest ancestor that exists; everything below it is made by
    // one upload of directory entries.
    let mut missing: Vec<&str> = Vec::new();
    let mut at = dir.as_str();
    loop {
        let (_, st) = resolved_stat(ws, at).await?;
        match st {
            Some(s) if s.is_dir() => break,
            Some(_) => {
                return Err(WorkspaceError::Path {
                    path: at.to_string(),
                    message: "exists and is not a directory".into(),
                });
            }
            None => match split(at) {
                Some((parent, name)) => {
                    missing.push(name);
                    at = parent;
                }
                // `/` always exists; not finding it means the container is gone.
                None => {
                    return Err(WorkspaceError::Docker(format!(
                        "{}: the container has no root directory",
                        ws.name
                    )));
                }
            },
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    missing.reverse();
    let rel: Vec<String> = (1..=missing.len())
        .map(|n| missing[..n].join("/"))
        .collect();
    let tar = build_tar(&rel, None, owner(ws))?;
    upload(ws, at, tar).await
}

/// Gives the directory `dir` itself to the job's user: a directory entry for it,
/// uploaded to its parent (Docker applies an existing directory's header, owner
/// and mode, and skips the `./` of an archive uploaded into it).
pub(super) async fn own_dir(ws: &DockerWorkspace, dir: &str) -> Result<(), WorkspaceError> {
    let dir = clean_abs(dir)?;
    let Some((parent, name)) = split(&dir) else {
        return Err(WorkspaceError::Path {
            path: dir,
            message: "a job with limits.user cannot have / as its workdir".into(),
        });
    };
    let tar = build_tar(&[name.to_string()], None, owner(ws))?;
    upload(ws, parent, tar).await
}

/// The job user's uid and gid, when it has one.
fn owner(ws: &DockerWorkspace) -> Option<(u64, u64)> {
    ws.owner.map(|o| (o.uid, o.gid))
}

pub(super) async fn write_file(
    ws: &DockerWorkspace,
    path: &str,
    data: &[u8],
) -> Result<(), WorkspaceError> {
    // Writing through a symlink updates its target, as an editor would.
    let (path, st) = resolved_stat(ws, path).await?;
    let Some((parent, name)) = split(&path) else {
        return Err(WorkspaceError::Path {
            path,
            message: "is a directory".into(),
        });
    };
    let mode = match &st {
        Some(s) if s.is_dir() => {
            return Err(WorkspaceError::Path {
                path,
                message: "is a directory".into(),
            });
        }
        // Keep the permission bits: an edited script must stay executable.
        Some(s) => s.mode & 0o777,
        None => {
            ensure_dir(ws, parent).await?;
            0o644
        }
    };
    let tar = build_tar(&[], Some((name, data, mode)), owner(ws))?;
    upload(ws, parent, tar).await
}

pub(super) async fn put_tar(
    ws: &DockerWorkspace,
    dest: &str,
    tar: Vec<u8>,
) -> Result<(), WorkspaceError> {
    let dest = clean_abs(dest)?;
    ensure_dir(ws, &dest).await?;
    // Whatever owners the archive names, its files are the job user's.
    let tar = match owner(ws) {
        Some((uid, gid)) => {
            let mut m = TarMeter::owned(uid, gid);
            let tar = m.pass(&tar);
            if let Some(why) = m.refused {
                return Err(WorkspaceError::Path {
                    path: dest,
                    message: format!("the archive cannot be given to limits.user: {why}"),
                });
            }
            tar
        }
        None => tar,
    };
    upload(ws, &dest, tar).await
}

/// [`put_tar`] of a tar file on the host, streamed from disk in chunks (an input
/// of any size costs the worker a chunk of memory, not its size).
pub(super) async fn put_tar_file(
    ws: &DockerWorkspace,
    dest: &str,
    tar: &std::path::Path,
) -> Result<(), WorkspaceError> {
    let dest = clean_abs(dest)?;
    // The workdir exists from the start (Docker makes it): no round trip.
    if dest != clean_abs(&ws.workdir)? {
        ensure_dir(ws, &dest).await?;
    }
    let file = tokio::fs::File::open(tar).await?;
    // Whatever owners the archive names, its files are the job user's.
    let meter = owner(ws).map(|(uid, gid)| TarMeter::owned(uid, gid));
    upload_body(ws, &dest, Body::File(file, meter)).await
}

/// What an upload sends: bytes in memory, or a file read as it goes (its headers
/// given to the job user on the way when a meter is set).
enum Body {
    Full(Vec<u8>),
    File(tokio::fs::File, Option<TarMeter>),
}

pub(super) async fn read_file(
    ws: &DockerWorkspace,
    path: &str,
) -> Result<Option<Vec<u8>>, WorkspaceError> {
    let mut path = clean_abs(path)?;
    for _ in 0..MAX_LINK_HOPS {
        let shown = path.clone();
        match download(ws, &path, move |r| first_file(r, &shown)).await? {
            None => return Ok(None),
            Some(Entry::File(data)) => return Ok(Some(data)),
            Some(Entry::Link(target)) => {
                let dir = split(&path).map_or("/", |(d, _)| d);
                path = resolve_link(dir, &target)?;
            }
        }
    }
    Err(WorkspaceError::Path {
        path,
        message: "too many levels of symbolic links".into(),
    })
}

/// The files below `dir`, their contents kept in memory or, with `spill`, written
/// to that file as they are read. A missing `dir` gives an empty snapshot (the
/// agent may have deleted its workdir; the patch then shows every file removed).
pub(super) async fn snapshot(
    ws: &DockerWorkspace,
    dir: &str,
    max_file_bytes: u64,
    max_total_bytes: u64,
    spill: Option<&Path>,
) -> Result<Builder, WorkspaceError> {
    let mut dir = clean_abs(dir)?;
    for _ in 0..MAX_LINK_HOPS {
        let shown = dir.clone();
        let b = Builder::new(spill, max_total_bytes)?;
        match download(ws, &dir, move |r| {
            read_tree(r, &shown, max_file_bytes, b, None)
        })
        .await?
        {
            None => return Ok(Builder::new(spill, max_total_bytes)?),
            Some(Tree::Dir(b)) => return Ok(b),
            Some(Tree::Link(target)) => {
                let parent = split(&dir).map_or("/", |(d, _)| d);
                dir = resolve_link(parent, &target)?;
            }
        }
    }
    Err(WorkspaceError::Path {
        path: dir,
        message: "too many levels of symbolic links".into(),
    })
}

async fn upload(ws: &DockerWorkspace, dir: &str, tar: Vec<u8>) -> Result<(), WorkspaceError> {
    upload_body(ws, dir, Body::Full(tar)).await
}

async fn upload_body(ws: &DockerWorkspace, dir: &str, body: Body) -> Result<(), WorkspaceError> {
    let body = match body {
        Body::Full(tar) => bollard::body_full(Bytes::from(tar)),
        Body::File(file, meter) => bollard::body_try_stream(futures_util::stream::try_unfold(
            (file, meter),
            |(mut f, mut meter)| async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 256 * 1024];
                let n = f.read(&mut buf).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                if let Some(m) = meter.as_mut() {
                    buf = m.pass(&buf);
                    if let Some(why) = &m.refused {
                        return Err(std::io::Error::other(format!(
                            "the archive cannot be given to limits.user: {why}"
                        )));
                    }
                }
                Ok(Some((Bytes::from(buf), (f, meter))))
            },
        )),
    };
    let options = UploadToContainerOptionsBuilder::new()
        .path(dir)
        // Never let an archive entry replace a directory by a file (Docker would
        // delete the directory) or the other way round.
        .no_overwrite_dir_non_dir("true")
        // Files belong to the image's user, so a non-root image can edit them. Not
        // for a job's own `limits.user`: Docker fails the upload when it cannot
        // look that user up (a numeric `1000:1000`). Its archives name its uid
        // and gid in every header instead, which Docker applies as they are.
        .copy_uidgid(if ws.user.is_some() { "false" } else { "true" })
        .build();
    match within(
        TRANSFER_DEADLINE,
        ws.api().upload_to_container(&ws.name, Some(options), body),
    )
    .await?
    {
        Ok(()) => Ok(()),
        Err(e) => match (status_of(&e), e) {
            (
                Some(400 | 403 | 404),
                bollard::errors::Error::DockerResponseServerError { message, .. },
            ) => Err(WorkspaceError::Path {
                path: dir.to_string(),
                message,
            }),
            (_, e) => Err(from_bollard(e)),
        },
    }
}

/// Streams the tar of `path` into `parse` (run on a blocking thread). `Ok(None)`
/// when nothing is at `path`.
async fn download<T: Send + 'static>(
    ws: &DockerWorkspace,
    path: &str,
    parse: impl FnOnce(&mut dyn Read) -> Result<T, WorkspaceError> + Send + 'static,
) -> Result<Option<T>, WorkspaceError> {
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let parser = tokio::task::spawn_blocking(move || {
        parse(&mut ChannelReader {
            rx,
            chunk: Bytes::new(),
        })
    });
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(path)
        .build();
    let stream = ws.api().download_from_container(&ws.name, Some(options));
    let pump = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            // A closed channel means the parser has all it wants: stop the transfer.
            if tx.send(chunk?).await.is_err() {
                break;
            }
        }
        Ok::<(), bollard::errors::Error>(())
    };
    // The pump (and with it the sender) is gone before the parser is awaited, so
    // the parser always sees the end of its input.
    let pumped = tokio::time::timeout(TRANSFER_DEADLINE, pump).await;
    let parsed = parser
        .await
        .map_err(|e| WorkspaceError::Docker(format!("archive reader failed: {e}")))?;
    match pumped {
        Err(_) => Err(WorkspaceError::Deadline(TRANSFER_DEADLINE)),
        Ok(Err(e)) if status_of(&e) == Some(404) => Ok(None),
        Ok(Err(e)) if status_of(&e) == Some(500) && below_a_non_dir(ws, path).await? => Ok(None),
        Ok(Err(e)) => Err(from_bollard(e)),
        Ok(Ok(())) => parsed.map(Some),
    }
}

/// A blocking `Read` over the chunks of an async stream.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl ChannelReader {
    pub(super) fn new(rx: mpsc::Receiver<Bytes>) -> ChannelReader {
        ChannelReader {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
