//! The image's files at the workdir, for a workdir that is a tmpfs volume (the
//! disk limit on drivers without `storage-opt size`, see `hardening.rs`).
//!
//! Docker copies an image's content into a new, empty volume when it mounts it,
//! but not into a tmpfs-backed one: it copies at create time, then unmounts the
//! tmpfs, and the copy is gone (moby/moby#27068, open since 2016; still so in
//! 20.10). A plain local volume (a read-only root's workdir without a disk limit)
//! is copied as usual. So once the workspace container runs (its tmpfs mounted),
//! the files are streamed into it from a created, never started container of the
//! same image: `GET /containers/{seed}/archive?path=<workdir>/.` piped into
//! `PUT /containers/{workspace}/archive?path=<workdir>`, nothing held in memory.
//! That costs four calls (create, get, put, remove); an image known to ship
//! nothing there (cached by image id, which names its content) costs none.
//!
//! A [`TarMeter`] counts what the files take on the tmpfs as they pass; past the
//! disk limit the transfer is stopped and the start fails with
//! [`WorkspaceError::DiskLimit`] (final: another attempt would not fit either).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::StreamExt;

use super::archive::TRANSFER_DEADLINE;
use super::meter::TarMeter;
use super::{API_DEADLINE, DockerWorkspace, from_bollard, remove_container, status_of, within};
use crate::workspace::WorkspaceError;

/// Images (by id) and workdirs known to hold nothing to seed. Bounded: cleared when
/// full, which only costs the next job of each image one seed.
#[derive(Clone, Default)]
pub(super) struct EmptySeeds(Arc<Mutex<HashSet<(String, String)>>>);

const MAX_EMPTY_SEEDS: usize = 4096;

const LABEL_JOB_ID: &str = "fleet.job_id";
/// The job a seed container belongs to.
const LABEL_SEED_OF: &str = "fleet.seed_of";

impl EmptySeeds {
    pub(super) fn contains(&self, key: &(String, String)) -> bool {
        self.0.lock().is_ok_and(|s| s.contains(key))
    }
    pub(super) fn insert(&self, key: (String, String)) {
        if let Ok(mut s) = self.0.lock() {
            if s.len() >= MAX_EMPTY_SEEDS {
                s.clear();
            }
            s.insert(key);
        }
    }
}

/// What [`seed_workdir`] needs beyond the workspace.
pub(super) struct Seed {
    /// The image id (`sha256:…`), the cache key.
    pub image_id: String,
    /// The seed container's configuration: the workspace's image and labels (so a
    /// seed left by a dead worker is removed by `cleanup_stale`), nothing else.
    /// Its job is named by `fleet.seed_of`, not `fleet.job_id`: whoever looks for
    /// a job's container (`docker ps --filter label=fleet.job_id=…`) finds one.
    pub body: ContainerCreateBody,
    /// The tmpfs size, MiB.
    pub limit_mb: u64,
    pub empty: EmptySeeds,
}

/// Makes `seed.body` a container that is only ever read from.
pub(super) fn seed_body(mut body: ContainerCreateBody) -> ContainerCreateBody {
    body.env = None;
    if let Some(labels) = body.labels.as_mut() {
        if let Some(job) = labels.remove(LABEL_JOB_ID) {
            labels.insert(LABEL_SEED_OF.to_string(), job);
        }
    }
    body.host_config = Some(HostConfig {
        network_mode: Some("none".into()),
        ..Default::default()
    });
    body
}

/// Copies the image's files at the workdir into the running workspace's workdir.
pub(super) async fn seed_workdir(ws: &DockerWorkspace, seed: Seed) -> Result<(), WorkspaceError> {
    let key = (seed.image_id.clone(), ws.workdir.clone());
    if seed.empty.contains(&key) {
        return Ok(());
    }
    let name = format!("{}-seed", ws.name);
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = within(
        API_DEADLINE,
        ws.api().create_container(Some(options), seed.body),
    )
    .await
    .and_then(|r| r.map_err(from_bollard));
    let copied = match created {
        Ok(_) => copy(ws, &name, seed.limit_mb).await,
        Err(e) => Err(e),
    };
    // Removed on every path, a create that timed out included.
    let removed = remove_container(ws.api(), &name).await;
    let entries = copied?;
    removed?;
    // The archive of `<workdir>/.` starts with the directory itself: that one
    // entry alone is an empty workdir.
    if entries <= 1 {
        seed.empty.insert(key);
    }
    Ok(())
}

/// Why the stream into the workspace stopped early.
enum Stopped {
    OverLimit,
    /// An entry could not be given to the job's user (`TarMeter::refused`).
    Unowned(String),
    Source(bollard::errors::Error),
}

/// Streams the seed's workdir into the workspace's; returns the entries copied.
async fn copy(ws: &DockerWorkspace, seed: &str, limit_mb: u64) -> Result<u64, WorkspaceError> {
    let path = format!("{}/.", ws.workdir.trim_end_matches('/'));
    let options = DownloadFromContainerOptionsBuilder::new()
        .path(&path)
        .build();
    let mut source = Box::pin(ws.api().download_from_container(seed, Some(options)));
    let transfer = async {
        // Nothing at the workdir in the image (a 404 before any byte): nothing to do.
        let first = match source.next().await {
            None => return Ok(0),
            Some(Err(e)) if status_of(&e) == Some(404) => return Ok(0),
            Some(Err(e)) => return Err(from_bollard(e)),
            Some(Ok(chunk)) => chunk,
        };
        let limit = limit_mb.saturating_mul(1024 * 1024);
        // With `limits.user` the files are given to the job's user as they pass.
        let meter = match ws.owner {
            Some(o) => TarMeter::owned(o.uid, o.gid),
            None => TarMeter::new(),
        };
        let meter = Arc::new(Mutex::new((meter, None::<Stopped>)));
        let tap = meter.clone();
        let body = futures_util::stream::once(async { Ok(first) })
            .chain(source)
            .map(move |chunk| {
                let mut m = tap.lock().expect("meter lock");
                match chunk {
                    Ok(chunk) => {
                        let chunk = if m.0.owned_by().is_some() {
                            Bytes::from(m.0.pass(&chunk))
                        } else {
                            m.0.feed(&chunk);
                            chunk
                        };
                        if m.0.charged > limit {
                            m.1 = Some(Stopped::OverLimit);
                            return Err(std::io::Error::other("over the disk limit"));
                        }
                        if let Some(why) = m.0.refused.clone() {
                            m.1 = Some(Stopped::Unowned(why));
                            return Err(std::io::Error::other("not given to limits.user"));
                        }
                        Ok::<Bytes, std::io::Error>(chunk)
                    }
                    Err(e) => {
                        m.1 = Some(Stopped::Source(e));
                        Err(std::io::Error::other("the image's files could not be read"))
                    }
                }
            });
        let options = UploadToContainerOptionsBuilder::new()
            .path(&ws.workdir)
            .no_overwrite_dir_non_dir("true")
            .build();
        // Not `copy_uidgid`: the files keep the owners the image gave them (or
        // the job user's, set in their headers above).
        let put = ws
            .api()
            .upload_to_container(&ws.name, Some(options), bollard::body_try_stream(body))
            .await;
        let mut m = meter.lock().expect("meter lock");
        match (m.1.take(), put) {
            (Some(Stopped::OverLimit), _) => Err(WorkspaceError::DiskLimit {
                path: ws.workdir.clone(),
                limit_mb,
            }),
            (Some(Stopped::Source(e)), _) => Err(from_bollard(e)),
            (Some(Stopped::Unowned(why)), _) => Err(WorkspaceError::Path {
                path: ws.workdir.clone(),
                message: format!("the image's files cannot be given to limits.user: {why}"),
            }),
            (None, Err(e)) => Err(WorkspaceError::Docker(format!(
                "seeding {} with the image's files ({} MiB so far, the disk limit is {limit_mb} MiB): {}",
                ws.workdir,
                m.0.charged / (1024 * 1024),
                from_bollard(e)
            ))),
            (None, Ok(())) => Ok(m.0.entries),
        }
    };
    tokio::time::timeout(TRANSFER_DEADLINE, transfer)
        .await
        .map_err(|_| WorkspaceError::Deadline(TRANSFER_DEADLINE))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_seed_is_labelled_as_one_not_as_the_job_container() {
        let body = ContainerCreateBody {
            env: Some(vec!["SECRET=x".into()]),
            labels: Some(HashMap::from([
                ("agent-fleet".to_string(), "1".to_string()),
                (LABEL_JOB_ID.to_string(), "j1".to_string()),
            ])),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let seed = seed_body(body);
        let labels = seed.labels.unwrap();
        assert_eq!(labels.get(LABEL_JOB_ID), None);
        assert_eq!(labels[LABEL_SEED_OF], "j1");
        assert_eq!(labels["agent-fleet"], "1");
        assert_eq!(seed.env, None);
        assert_eq!(
            seed.host_config.unwrap().network_mode.as_deref(),
            Some("none")
        );
    }
}
