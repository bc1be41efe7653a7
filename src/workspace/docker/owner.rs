//! The numeric owner (uid, gid) of a job's files when it names `limits.user`.
//!
//! The worker gives the job's files to its user through the archive API (the
//! uid and gid in each tar header, see `meter.rs`), never through a process in
//! the container, so it needs the numbers. `uid:gid` is taken as it is; a name,
//! or a uid without a group, is looked up in the image's `/etc/passwd` and
//! `/etc/group` the way Docker resolves the container's user (a numeric uid
//! missing from passwd gets group 0).

use super::{DockerWorkspace, archive};
use crate::workspace::WorkspaceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub uid: u64,
    pub gid: u64,
}

/// `uid:gid` when `user` is numeric both sides: known before the container
/// exists (a tmpfs workdir is then mounted as the user's).
pub(super) fn numeric(user: &str) -> Option<Owner> {
    let (u, g) = user.split_once(':')?;
    Some(Owner {
        uid: u.parse().ok()?,
        gid: g.parse().ok()?,
    })
}

/// Resolves `user` (`USER` or `USER:GROUP`, names or numbers) in the container.
/// Reads the image's files only when a name (or the primary group) must be found.
pub(super) async fn resolve(ws: &DockerWorkspace, user: &str) -> Result<Owner, WorkspaceError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if let Some(o) = numeric(user) {
        return Ok(o);
    }
    let passwd = read_text(ws, "/etc/passwd").await?;
    let group = match g {
        Some(g) if g.parse::<u64>().is_err() => read_text(ws, "/etc/group").await?,
        _ => String::new(),
    };
    from_files(u, g, &passwd, &group).map_err(|message| WorkspaceError::Path {
        path: "limits.user".into(),
        message,
    })
}

async fn read_text(ws: &DockerWorkspace, path: &str) -> Result<String, WorkspaceError> {
    Ok(archive::read_file(ws, path)
        .await?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default())
}

/// The lookup itself, on the files' contents.
fn from_files(u: &str, g: Option<&str>, passwd: &str, group: &str) -> Result<Owner, String> {
    let entry = |text: &str, name: &str| -> Option<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == name)
    };
    let pw = match u.parse::<u64>() {
        Ok(uid) => passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && f[2].parse() == Ok(uid))
            .map(|f| (uid, f[3].parse::<u64>().ok())),
        Err(_) => entry(passwd, u).and_then(|f| Some((f[2].parse().ok()?, f.get(3)?.parse().ok()))),
    };
    let (uid, primary) = match (u.parse::<u64>(), pw) {
        (_, Some(found)) => found,
        (Ok(uid), None) => (uid, Some(0)),
        (Err(_), None) => {
            return Err(format!(
                "user {u:?} is not in the image's /etc/passwd; name a numeric uid:gid"
            ));
        }
    };
    let gid = match g {
        None => primary.unwrap_or(0),
        Some(g) => match g.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => entry(group, g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("group {g:?} is not in the image's /etc/group; name a numeric uid:gid")
                })?,
        },
    };
    // The policy refuses `root` and `0` by name; a name the image maps to uid 0
    // is root all the same (the container is destroyed before anything runs).
    if uid == 0 && u != "root" && u != "0" {
        return Err(format!(
            "user {u:?} is uid 0 (root) in the image's /etc/passwd; name a non-root user"
        ));
    }
    Ok(Owner { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:app\n";

    #[test]
    fn only_uid_colon_gid_is_numeric() {
        assert_eq!(numeric("1000:50"), Some(Owner { uid: 1000, gid: 50 }));
        assert_eq!(numeric("1000"), None);
        assert_eq!(numeric("app:50"), None);
    }

    #[test]
    fn names_and_numbers_resolve_as_docker_does() {
        let o = |uid, gid| Ok(Owner { uid, gid });
        assert_eq!(from_files("app", None, PASSWD, GROUP), o(1000, 1001));
        assert_eq!(from_files("1000", None, PASSWD, GROUP), o(1000, 1001));
        assert_eq!(from_files("app", Some("staff"), PASSWD, GROUP), o(1000, 50));
        assert_eq!(from_files("app", Some("7"), PASSWD, GROUP), o(1000, 7));
        // A uid the image does not know: group 0, as Docker gives it.
        assert_eq!(from_files("4242", None, PASSWD, GROUP), o(4242, 0));
        let e = from_files("nobody", None, PASSWD, GROUP).unwrap_err();
        assert!(e.contains("nobody") && e.contains("numeric uid:gid"), "{e}");
        let e = from_files("app", Some("wheel"), PASSWD, GROUP).unwrap_err();
        assert!(e.contains("wheel") && e.contains("/etc/group"), "{e}");
        assert!(from_files("app", None, "", "").is_err());
        let e = from_files("toor", None, "toor:x:0:0::/:/bin/sh\n", "").unwrap_err();
        assert!(e.contains("uid 0"), "{e}");
    }
}
