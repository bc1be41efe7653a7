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

/// Packs a directory as a tar.gz file at `dest`, compressed as it is written
/// (what `fleet submit` uploads; memory stays a buffer's worth).
pub fn tar_gz_dir_to_file(dir: &Path, dest: &Path) -> std::io::Result<()> {
    let out = std::io::BufWriter::new(std::fs::File::create(dest)?);
    let enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", dir)?;
    let mut out = b.into_inner()?.finish()?;
    std::io::Write::flush(&mut out)
}

/// Packs a directory as tar.gz (what `fleet submit` uploads).
pub fn tar_gz_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let tar = tar_dir(dir)?;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &tar)?;
    enc.finish()
}

/// Packs a directory as an uncompressed tar file at `dest` (written as it goes).
pub fn tar_dir_to_file(dir: &Path, dest: &Path) -> std::io::Result<()> {
    let out = std::io::BufWriter::new(std::fs::File::create(dest)?);
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir_all(".", dir)?;
    std::io::Write::flush(&mut b.into_inner()?)
}

/// Inflates the gzip file `src` to `dest` as a stream, refusing (and removing
/// `dest`) once it inflates past `limit` bytes. Memory stays a buffer's worth
/// whatever the archive holds.
pub fn gunzip_file(src: &Path, dest: &Path, limit: u64) -> std::io::Result<u64> {
    let input = std::io::BufReader::new(std::fs::File::open(src)?);
    let mut out = std::io::BufWriter::new(std::fs::File::create(dest)?);
    let n = std::io::copy(
        &mut flate2::read::GzDecoder::new(input).take(limit + 1),
        &mut out,
    )?;
    std::io::Write::flush(&mut out)?;
    if n > limit {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(std::io::Error::other(format!(
            "input archive inflates past {limit} bytes"
        )));
    }
    Ok(n)
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
        // The same through files.
        let gz_file = dir.path().join("packed.tar.gz");
        let sub = dir.path().join("sub");
        tar_gz_dir_to_file(&sub, &gz_file).unwrap();
        assert!(gz_file.metadata().unwrap().len() > 0);
        let (src, dst) = (dir.path().join("in.tar.gz"), dir.path().join("out.tar"));
        std::fs::write(&src, &gz).unwrap();
        assert_eq!(gunzip_file(&src, &dst, 1 << 20).unwrap(), tar.len() as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), tar);
        assert!(gunzip_file(&src, &dst, 3).is_err());
        assert!(!dst.exists(), "a refused inflation leaves no file");
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }
}
