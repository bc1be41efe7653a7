//! Local workspaces: a temporary directory on the host per job (for machines without Docker; chosen explicitly, never a fallback).

use std::time::Duration;

use super::{ExecOutput, PathKind, Snapshot, WorkspaceError, WorkspaceSpec};

#[derive(Clone)]
pub struct LocalBackend {
    /// Where job directories are made (the system temp dir by default).
    root: std::path::PathBuf,
}

impl LocalBackend {
    pub fn new(root: std::path::PathBuf) -> LocalBackend {
        LocalBackend { root }
    }

    pub async fn start(&self, spec: &WorkspaceSpec) -> Result<LocalWorkspace, WorkspaceError> {
        let _ = (spec, &self.root);
        todo!()
    }

}

pub struct LocalWorkspace {}

impl LocalWorkspace {
    pub fn workdir(&self) -> &str {
        todo!()
    }
    pub async fn exec(&self, script: &str, cwd: &str, timeout: Duration, max_chars: usize) -> Result<ExecOutput, WorkspaceError> {
        let _ = (script, cwd, timeout, max_chars);
        todo!()
    }
    pub async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>, WorkspaceError> {
        let _ = path;
        todo!()
    }
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), WorkspaceError> {
        let _ = (path, data);
        todo!()
    }
    pub async fn stat(&self, path: &str) -> Result<Option<PathKind>, WorkspaceError> {
        let _ = path;
        todo!()
    }
    pub async fn put_tar(&self, dest: &str, tar: Vec<u8>) -> Result<(), WorkspaceError> {
        let _ = (dest, tar);
        todo!()
    }
    pub async fn snapshot(&self, dir: &str, max_file_bytes: u64, max_total_bytes: u64) -> Result<Snapshot, WorkspaceError> {
        let _ = (dir, max_file_bytes, max_total_bytes);
        todo!()
    }
    pub async fn destroy(self) -> Result<(), WorkspaceError> {
        todo!()
    }
}
