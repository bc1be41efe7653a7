//! What a workspace container may touch beyond its limits: an init process that
//! reaps orphans, an optional non-root user, an optional read-only root filesystem
//! (the workdir and `/tmp` stay writable), and the disk limit.
//!
//! Whatever the job says, a container gets no bind mount, no device, no Docker
//! socket and no log file on the host (logging driver `none`): the only mounts
//! are the ones made here (a volume at the workdir, a tmpfs at `/tmp`), and
//! [`harden`] clears every other way in.
//!
//! # The disk limit
//!
//! Docker's `storage-opt size` bounds the container's writable layer, but only on
//! some storage drivers (btrfs, zfs, devicemapper, windowsfilter, and overlay2 on
//! xfs mounted with `pquota`). Elsewhere (fuse-overlayfs, overlay2 on ext4, vfs) the
//! workdir becomes a size-limited tmpfs volume instead: a local-driver volume, so
//! the archive API that uploads the input and collects the results sees it (a plain
//! tmpfs mount lives in the container's mount namespace only), removed with the
//! container (anonymous, `remove -v`). Docker leaves that volume empty, so the
//! image's files at the workdir are copied in by `seed.rs`; a plain local volume
//! (a read-only root without a disk limit) gets them from Docker's own copy.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    MountVolumeOptionsDriverConfig,
};

use super::owner::Owner;
use crate::workspace::WorkspaceSpec;

/// How this engine bounds a workspace's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskLimit {
    /// `storage-opt size` on the container's writable layer.
    StorageOpt,
    /// A size-limited tmpfs volume at the workdir.
    TmpfsVolume,
}

impl DiskLimit {
    /// From the engine's storage driver and its status rows (`docker info`).
    pub fn for_driver(driver: &str, status: &[Vec<String>]) -> DiskLimit {
        let backing_xfs = status.iter().any(|row| {
            row.first().is_some_and(|k| k == "Backing Filesystem")
                && row.get(1).is_some_and(|v| v == "xfs")
        });
        match driver {
            "btrfs" | "zfs" | "devicemapper" | "windowsfilter" => DiskLimit::StorageOpt,
            "overlay2" if backing_xfs => DiskLimit::StorageOpt,
            _ => DiskLimit::TmpfsVolume,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            DiskLimit::StorageOpt => "storage-opt",
            DiskLimit::TmpfsVolume => "tmpfs-volume",
        }
    }
}

/// `/tmp` of a read-only container: writable, executable (builds run tools from
/// there), bounded.
const TMP_MAX_MB: u64 = 1024;

/// Applies the hardening to a container configuration built from `spec`. Returns
/// the size (MiB) of the tmpfs volume at the workdir when there is one: Docker
/// leaves that volume empty, so the image's files there are the caller's to copy
/// (`seed.rs`).
pub fn harden(
    body: &mut ContainerCreateBody,
    spec: &WorkspaceSpec,
    disk: DiskLimit,
) -> Option<u64> {
    body.user = spec.user.clone();
    body.volumes = None;
    let hc = body.host_config.get_or_insert_with(HostConfig::default);
    // An init (docker-init) as PID 1 reaps whatever the agent's commands orphan.
    hc.init = Some(true);
    hc.privileged = Some(false);
    hc.binds = None;
    hc.devices = None;
    hc.device_requests = None;
    hc.device_cgroup_rules = None;
    hc.volumes_from = None;
    hc.readonly_rootfs = Some(spec.read_only_root);
    // No logging driver: the worker reads the shell's output off the attach
    // stream, and whatever a job prints (the workspace's archive at the collect
    // included) would otherwise also be written to a log file on the host's
    // disk, bounded by no limit of the job's, at the daemon's CPU.
    hc.log_config = Some(HostConfigLogConfig {
        typ: Some("none".into()),
        config: None,
    });
    let mut mounts = Vec::new();
    let workdir_volume = match (spec.disk_mb, disk) {
        (Some(mb), DiskLimit::StorageOpt) if !spec.read_only_root => {
            hc.storage_opt = Some(HashMap::from([("size".to_string(), format!("{mb}M"))]));
            None
        }
        (Some(mb), _) => Some(Some(mb)),
        (None, _) if spec.read_only_root => Some(None),
        (None, _) => None,
    };
    if let Some(size) = workdir_volume {
        let owner = spec.user.as_deref().and_then(super::owner::numeric);
        mounts.push(workdir_mount(&spec.workdir, size, owner));
    }
    let tmpfs_workdir = workdir_volume.flatten();
    // A workdir at /tmp is already the writable volume there.
    if spec.read_only_root && spec.workdir.trim_end_matches('/') != "/tmp" {
        let mb = spec.disk_mb.unwrap_or(TMP_MAX_MB).min(TMP_MAX_MB);
        hc.tmpfs = Some(HashMap::from([(
            "/tmp".to_string(),
            format!("rw,exec,nosuid,nodev,size={mb}m,mode=1777"),
        )]));
    } else {
        hc.tmpfs = None;
    }
    hc.mounts = (!mounts.is_empty()).then_some(mounts);
    tmpfs_workdir
}

/// An anonymous volume at the workdir: a tmpfs of `size_mb` when given (the disk
/// limit), a plain local volume otherwise (a read-only root's writable workdir).
/// A tmpfs is mounted as the job user's (`limits.user` as `uid:gid`), since on
/// a read-only root nothing else could give it to them (Docker refuses an
/// upload of its directory entry to `/`).
fn workdir_mount(workdir: &str, size_mb: Option<u64>, owner: Option<Owner>) -> Mount {
    let driver_config = size_mb.map(|mb| MountVolumeOptionsDriverConfig {
        name: Some("local".into()),
        options: Some(HashMap::from([
            ("type".to_string(), "tmpfs".to_string()),
            ("device".to_string(), "tmpfs".to_string()),
            (
                "o".to_string(),
                match owner {
                    Some(o) => format!("size={mb}m,mode=0755,uid={},gid={}", o.uid, o.gid),
                    None => format!("size={mb}m,mode=1777"),
                },
            ),
        ])),
    });
    Mount {
        target: Some(workdir.to_string()),
        typ: Some(MountType::VOLUME),
        read_only: Some(false),
        volume_options: Some(MountVolumeOptions {
            // Docker copies the image's files into a tmpfs volume at create and
            // then unmounts it, losing them (`seed.rs` copies them for real); the
            // copy would only cost time, and fail the create when over the size.
            no_copy: Some(size_mb.is_some()),
            driver_config,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec() -> WorkspaceSpec {
        WorkspaceSpec {
            job_id: "j".into(),
            attempt: 1,
            worker_id: "w".into(),
            image: "img".into(),
            workdir: "/workspace".into(),
            env: BTreeMap::new(),
            memory_mb: 256,
            cpus: 1.0,
            pids: 64,
            network: "none".into(),
            user: None,
            read_only_root: false,
            disk_mb: None,
        }
    }

    fn hardened(s: &WorkspaceSpec, disk: DiskLimit) -> ContainerCreateBody {
        let mut body = ContainerCreateBody {
            host_config: Some(HostConfig {
                binds: Some(vec!["/var/run/docker.sock:/var/run/docker.sock".into()]),
                privileged: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        harden(&mut body, s, disk);
        body
    }

    #[test]
    fn never_a_bind_a_device_or_privileges() {
        for disk in [DiskLimit::StorageOpt, DiskLimit::TmpfsVolume] {
            let hc = hardened(&spec(), disk).host_config.unwrap();
            assert_eq!(hc.binds, None);
            assert_eq!(hc.devices, None);
            assert_eq!(hc.privileged, Some(false));
            assert_eq!(hc.init, Some(true));
            assert_eq!(hc.mounts, None);
        }
    }

    #[test]
    fn disk_limit_by_driver() {
        assert_eq!(
            DiskLimit::for_driver("fuse-overlayfs", &[]),
            DiskLimit::TmpfsVolume
        );
        let xfs = vec![vec!["Backing Filesystem".to_string(), "xfs".to_string()]];
        assert_eq!(
            DiskLimit::for_driver("overlay2", &xfs),
            DiskLimit::StorageOpt
        );
        assert_eq!(
            DiskLimit::for_driver("overlay2", &[]),
            DiskLimit::TmpfsVolume
        );
        let mut s = spec();
        s.disk_mb = Some(100);
        let hc = hardened(&s, DiskLimit::StorageOpt).host_config.unwrap();
        assert_eq!(hc.storage_opt.unwrap()["size"], "100M");
        assert_eq!(hc.mounts, None);
        let hc = hardened(&s, DiskLimit::TmpfsVolume).host_config.unwrap();
        assert_eq!(hc.storage_opt, None);
        let m = &hc.mounts.unwrap()[0];
        assert_eq!(m.target.as_deref(), Some("/workspace"));
        assert_eq!(m.typ, Some(MountType::VOLUME));
        assert_eq!(m.source, None);
        assert_eq!(driver_options(m)["o"], "size=100m,mode=1777");
        // Docker's copy into a tmpfs volume is lost; the caller is told to seed it.
        assert_eq!(m.volume_options.as_ref().unwrap().no_copy, Some(true));
        let mut body = ContainerCreateBody::default();
        assert_eq!(harden(&mut body, &s, DiskLimit::TmpfsVolume), Some(100));
        assert_eq!(harden(&mut body, &s, DiskLimit::StorageOpt), None);
        // A read-only root without a disk limit: a plain volume, which Docker fills.
        s.disk_mb = None;
        s.read_only_root = true;
        assert_eq!(harden(&mut body, &s, DiskLimit::TmpfsVolume), None);
        let m = &body.host_config.unwrap().mounts.unwrap()[0];
        assert_eq!(m.volume_options.as_ref().unwrap().no_copy, Some(false));
    }

    /// The local driver's options of a volume mount.
    fn driver_options(m: &Mount) -> HashMap<String, String> {
        m.volume_options
            .clone()
            .unwrap()
            .driver_config
            .unwrap()
            .options
            .unwrap()
    }

    #[test]
    fn read_only_root_keeps_workdir_and_tmp_writable() {
        let mut s = spec();
        s.read_only_root = true;
        s.user = Some("1000:1000".into());
        let body = hardened(&s, DiskLimit::StorageOpt);
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        let hc = body.host_config.unwrap();
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert!(hc.tmpfs.unwrap()["/tmp"].contains("exec"));
        assert_eq!(hc.mounts.unwrap()[0].target.as_deref(), Some("/workspace"));
        // A tmpfs workdir is mounted as the job user's.
        s.disk_mb = Some(64);
        let hc = hardened(&s, DiskLimit::StorageOpt).host_config.unwrap();
        let m = &hc.mounts.unwrap()[0];
        assert_eq!(
            driver_options(m)["o"],
            "size=64m,mode=0755,uid=1000,gid=1000"
        );
        s.disk_mb = None;
        // A workdir at /tmp: one mount there, the volume.
        s.workdir = "/tmp".into();
        let hc = hardened(&s, DiskLimit::StorageOpt).host_config.unwrap();
        assert_eq!(hc.tmpfs, None);
        assert_eq!(hc.mounts.unwrap()[0].target.as_deref(), Some("/tmp"));
    }
}
