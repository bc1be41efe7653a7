//! Getting a job's input into its workspace: a host directory (`fleet run`), the
//! uploaded `input.tar.gz` in the store (`fleet submit`), or a git clone made
//! inside the workspace.

use std::io::Read;
use std::path::Path;

/// Packs a directory as an uncompressed tar (relative paths, symlinks kept as links).
pub fn tar_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}

/// Packs a directory as tar.gz (what `fleet submit` uploads).
pub fn tar_gz_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let tar = tar_dir(dir)?;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &tar)?;
    enc.finish()
}

/// Unpacks gzip to plain tar, refusing archives that inflate past `limit` bytes.
pub fn gunzip(data: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "input archive inflates past {limit} bytes"
        )));
    }
    Ok(out)
}

/// Single-quotes a value for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.txt"), "hello").unwrap();
        let gz = tar_gz_dir(dir.path()).unwrap();
        let tar = gunzip(&gz, 1 << 20).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.iter().any(|n| n.ends_with("sub/a.txt")), "{names:?}");
        assert!(gunzip(&gz, 3).is_err());
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
