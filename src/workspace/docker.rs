//! Docker workspaces through bollard: one container per job.

use std::time::Duration;

use super::{ExecOutput, PathKind, Snapshot, WorkspaceError, WorkspaceSpec};

#[derive(Clone)]
pub struct DockerBackend {
    docker: bollard::Docker,
    /// Prefix of this host's worker ids; containers labelled with it and not owned
    /// by a live run are stale.
    host_prefix: String,
}

impl DockerBackend {
    /// Connects to the local Docker engine (DOCKER_HOST or the default socket),
    /// negotiating the API version.
    pub async fn connect(host_prefix: &str) -> Result<DockerBackend, WorkspaceError> {
        let _ = host_prefix;
        todo!()
    }

    pub async fn start(&self, spec: &WorkspaceSpec) -> Result<DockerWorkspace, WorkspaceError> {
        let _ = (spec, &self.docker, &self.host_prefix);
        todo!()
    }

    pub async fn cleanup_stale(&self) -> Result<usize, WorkspaceError> {
        todo!()
    }

    pub async fn ping(&self) -> bool {
        todo!()
    }
}

pub struct DockerWorkspace {}

impl DockerWorkspace {
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
