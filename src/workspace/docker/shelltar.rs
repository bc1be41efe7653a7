//! The collect through the conversation's own shell: the workspace's archive
//! written by `tar` in the container to the session's side channel (fd 9, the
//! container's stderr), read from the attach stream the worker already holds.
//! No round trip to the engine, and none of the engine's work for an archive
//! read — which re-executes the daemon's binary in a chroot for every read and
//! costs more CPU than the whole rest of a short job's Docker work.
//!
//! Whatever comes this way was written by a program the job controls, so it is
//! read as hostile: every entry must be below the directory (`tarball.rs`
//! refuses the whole archive otherwise), it is bounded like the engine's
//! archive, and anything short of a clean run (no `tar` in the image, a shell
//! the model left unable to answer, an archive that does not parse, a non-zero
//! exit, no end record) gives way to the engine's archive read. The shell is
//! spent afterwards: a session that ran this is never the model's again.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::archive::{CHANNEL_CHUNKS, ChannelReader, TRANSFER_DEADLINE};
use super::paths::{clean_abs, split};
use super::tarball::{Tree, read_tree};
use crate::workspace::session::{Shell, sh_quote};
use crate::workspace::spill::Builder;
use crate::workspace::{Workspace, WorkspaceError};

/// How long the shell may stay silent (no archive bytes, no end record) before
/// the engine's archive read takes over.
const IDLE: Duration = Duration::from_secs(10);

/// The files below `dir`, as [`super::archive::snapshot`] reads them, spilled to
/// `path`; an error says why the engine's read is needed instead.
pub(crate) async fn snapshot(
    ws: &Workspace,
    shell: &mut Shell,
    dir: &str,
    max_file_bytes: u64,
    max_total_bytes: u64,
    path: &std::path::Path,
) -> Result<Builder, String> {
    let dir = clean_abs(dir).map_err(|e| e.to_string())?;
    let Some((parent, base)) = split(&dir) else {
        return Err(format!("{dir} has no parent to archive it from"));
    };
    let base = base.to_string();
    // `command -p`: the standard PATH, and no alias or function the model set.
    let script = format!(
        "\\command -p tar -cf - -C {} {} 2>/dev/null >&9",
        sh_quote(parent),
        sh_quote(&format!("./{base}"))
    );
    let b = Builder::new(Some(path), max_total_bytes).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_CHUNKS);
    let shown = dir.clone();
    let parser = tokio::task::spawn_blocking(move || {
        read_tree(
            &mut ChannelReader::new(rx),
            &shown,
            max_file_bytes,
            b,
            Some(&base),
        )
    });
    let until = Instant::now() + TRANSFER_DEADLINE;
    let ran = shell.run_side(ws, &script, tx, IDLE, until).await;
    // The sender is gone with `run_side`: the parser sees the end of its input.
    let parsed = parser
        .await
        .map_err(|e| format!("the archive reader failed: {e}"))?;
    match ran {
        Err(e) => Err(format!("the shell failed: {e}")),
        Ok(None) => Err("no end record from the shell".into()),
        Ok(Some(0)) => match parsed {
            Ok(Tree::Dir(b)) => Ok(b),
            Ok(Tree::Link(_)) => Err(format!("{dir} is a symlink")),
            Err(WorkspaceError::Path { message, .. }) => Err(message),
            Err(e) => Err(e.to_string()),
        },
        Ok(Some(code)) => Err(format!("tar exited with {code}")),
    }
}
