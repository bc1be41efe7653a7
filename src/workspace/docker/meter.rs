//! Counting what a tar stream will take on a tmpfs, as it passes by, without
//! holding it: the seed of a workdir (`seed.rs`) is forwarded chunk by chunk from
//! one container to another, and must be stopped as soon as it cannot fit.
//!
//! A tmpfs charges whole pages for a regular file's data and nothing against its
//! `size=` for directories, links or names, so the count is the sum of each
//! regular file's size rounded up to a page. Only headers are parsed (ustar, GNU
//! long names, PAX `size` records); data is skipped.
//!
//! The same pass can hand every entry to a job's own user ([`TarMeter::owned`],
//! then [`TarMeter::pass`]): each header's uid and gid (and its checksum) is
//! rewritten, and a PAX `uid`/`gid` record, which would override them, is renamed
//! so readers ignore it. Docker's archive upload (without `copyUIDGID`) gives each
//! file the owner its header names, so the files are the user's without any
//! process in the container: a root exec there could not `chown` them (Docker
//! gives a container with a non-root user no capabilities, not even in a root
//! exec).

/// Bytes a tmpfs charges per page.
const PAGE: u64 = 4096;
const BLOCK: u64 = 512;
/// PAX records kept to find a `size` in (Docker writes a few short ones).
const MAX_PAX_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
pub(super) struct TarMeter {
    header: Vec<u8>,
    /// Bytes still to pass before the next header (data and padding).
    skip: u64,
    /// Of `skip`, the leading bytes that are a PAX header's records.
    pax_left: u64,
    pax: Vec<u8>,
    /// Whether the records being read are a global header's (no `size` for the
    /// next entry there).
    pax_global: bool,
    /// The size a PAX header gave the next entry.
    next_size: Option<u64>,
    ended: bool,
    /// Page-rounded bytes of regular files seen so far.
    pub charged: u64,
    /// Entries other than the archive's root directory (`./`).
    pub entries: u64,
    /// The uid and gid every entry is given ([`TarMeter::pass`]).
    owner: Option<(u64, u64)>,
    /// Set when an entry could not be given to the owner (a PAX header too large
    /// to hold); the stream must not be used.
    pub refused: Option<String>,
}

impl TarMeter {
    pub fn new() -> TarMeter {
        TarMeter::default()
    }

    /// A meter that also gives every entry to `uid`:`gid` as it passes.
    pub fn owned(uid: u64, gid: u64) -> TarMeter {
        TarMeter {
            owner: Some((uid, gid)),
            ..TarMeter::default()
        }
    }

    /// The uid and gid entries are given, if any.
    pub fn owned_by(&self) -> Option<(u64, u64)> {
        self.owner
    }

    /// Takes the next chunk of the stream (any size, any boundary).
    pub fn feed(&mut self, data: &[u8]) {
        self.run(data, None);
    }

    /// Takes the next chunk and returns what to send on: the same bytes, with the
    /// headers given to the owner. A header (or PAX records) split across chunks is
    /// held back until it is whole, so the output's chunks differ from the input's.
    pub fn pass(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + BLOCK as usize);
        self.run(data, Some(&mut out));
        out
    }

    fn run(&mut self, mut data: &[u8], mut out: Option<&mut Vec<u8>>) {
        // Held bytes (PAX records) are only needed when headers are rewritten.
        let rewrite = out.is_some() && self.owner.is_some();
        while !data.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                let mut sent = 0;
                if self.pax_left > 0 {
                    let p = (self.pax_left.min(n as u64)) as usize;
                    if self.pax.len() + p <= MAX_PAX_BYTES {
                        self.pax.extend_from_slice(&data[..p]);
                    } else if rewrite && self.refused.is_none() {
                        self.refused = Some(format!("a PAX header over {MAX_PAX_BYTES} bytes"));
                    }
                    self.pax_left -= p as u64;
                    if rewrite {
                        // Held until whole, then sent with its ids renamed.
                        sent = p;
                        if self.pax_left == 0 {
                            disown_pax(&mut self.pax);
                            if let Some(o) = out.as_deref_mut() {
                                o.extend_from_slice(&self.pax);
                            }
                        }
                    }
                    if self.pax_left == 0 {
                        if !self.pax_global {
                            self.next_size = pax_size(&self.pax);
                        }
                        self.pax.clear();
                    }
                }
                if let Some(o) = out.as_deref_mut() {
                    o.extend_from_slice(&data[sent..n]);
                }
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            let want = BLOCK as usize - self.header.len();
            let n = want.min(data.len());
            self.header.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.header.len() == BLOCK as usize {
                let mut block = std::mem::take(&mut self.header);
                self.header_block(&block);
                if let Some(o) = out.as_deref_mut() {
                    if let (Some((uid, gid)), false) = (self.owner, self.ended) {
                        set_owner(&mut block, uid, gid);
                    }
                    o.extend_from_slice(&block);
                }
            }
        }
        // After the end of the archive: padding, passed as it is.
        if let Some(o) = out {
            o.extend_from_slice(data);
        }
    }

    fn header_block(&mut self, h: &[u8]) {
        if h.iter().all(|b| *b == 0) {
            self.ended = true;
            return;
        }
        let size = octal_or_binary(&h[124..136]);
        match h[156] {
            // PAX extended header for the next entry: its records are read.
            // A global PAX header too when entries are given to an owner, only for
            // ids to rename.
            b'x' | b'g' if h[156] == b'x' || self.owner.is_some() => {
                self.pax_left = size;
                self.pax_global = h[156] == b'g';
                self.pax.clear();
                self.skip = padded(size);
            }
            // Global PAX header, GNU long name / long link: names only.
            b'g' | b'L' | b'K' => self.skip = padded(size),
            flag => {
                let size = self.next_size.take().unwrap_or(size);
                if matches!(flag, b'0' | b'\0' | b'7') {
                    self.charged += size.div_ceil(PAGE) * PAGE;
                    self.skip = padded(size);
                } else {
                    // Links, directories, devices: no data (a hard link's size is 0).
                    self.skip = if flag == b'1' { 0 } else { padded(size) };
                }
                let name = &h[..100];
                let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(100)];
                if name != b"./" && name != b"." {
                    self.entries += 1;
                }
            }
        }
    }
}

/// Gives a header block to `uid`:`gid` and recomputes its checksum.
fn set_owner(h: &mut [u8], uid: u64, gid: u64) {
    put_numeric(&mut h[108..116], uid);
    put_numeric(&mut h[116..124], gid);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// An 8-byte numeric field: octal when it fits, base-256 (GNU) otherwise.
fn put_numeric(field: &mut [u8], n: u64) {
    if n <= 0o7777777 {
        field.copy_from_slice(format!("{n:07o}\0").as_bytes());
    } else {
        field.fill(0);
        field[0] = 0x80;
        for (i, b) in n.to_be_bytes().iter().enumerate().skip(1) {
            field[i] = *b;
        }
    }
}

/// Renames `uid`, `gid`, `uname` and `gname` records (`"<len> uid=…"` becomes
/// `"<len> UID=…"`, same length) so a reader takes the ids from the header.
fn disown_pax(records: &mut [u8]) {
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let Some(space) = rest.iter().position(|b| *b == b' ') else {
            return;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            return;
        };
        if len <= space || len > rest.len() {
            return;
        }
        let key = at + space + 1;
        for name in [&b"uid="[..], b"gid=", b"uname=", b"gname="] {
            if records[key..at + len].starts_with(name) {
                records[key..key + name.len() - 1].make_ascii_uppercase();
            }
        }
        at += len;
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// A numeric header field: octal text, or base-256 when its top bit is set (GNU,
/// for sizes of 8 GiB and over).
fn octal_or_binary(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        return field[1..].iter().fold(u64::from(field[0] & 0x7f), |n, b| {
            n.saturating_mul(256).saturating_add(u64::from(*b))
        });
    }
    field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(*b))
        .fold(0u64, |n, b| {
            n.saturating_mul(8).saturating_add(u64::from(b - b'0'))
        })
}

/// The `size` record of PAX extended header records (`"<len> <key>=<value>\n"`).
fn pax_size(records: &[u8]) -> Option<u64> {
    let mut rest = records;
    let mut found = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return found;
        }
        let record = &rest[space + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = v.strip_suffix(b"\n").unwrap_or(v);
            found = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        }
        rest = &rest[len..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(long_name: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let dir = |name: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            (h, name.to_string())
        };
        let (mut h, n) = dir("./");
        b.append_data(&mut h, n, std::io::empty()).unwrap();
        let (mut h, n) = dir("./sub/");
        b.append_data(&mut h, n, std::io::empty()).unwrap();
        for (name, len) in [("./a", 1usize), ("./sub/b", 4096), ("./sub/c", 5000)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(len as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, vec![7u8; len].as_slice())
                .unwrap();
        }
        if long_name {
            // Over 100 bytes: the tar crate writes a GNU long-name entry first.
            let name = format!("./sub/{}", "n".repeat(150));
            let mut h = tar::Header::new_gnu();
            h.set_size(10);
            h.set_mode(0o644);
            b.append_data(&mut h, name, [1u8; 10].as_slice()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "./link", "a").unwrap();
        b.into_inner().unwrap()
    }

    fn meter(data: &[u8], chunk: usize) -> TarMeter {
        let mut m = TarMeter::new();
        for c in data.chunks(chunk) {
            m.feed(c);
        }
        m
    }

    #[test]
    fn charges_pages_of_regular_files_whatever_the_chunks() {
        let tar = archive(false);
        for chunk in [1, 7, 512, 513, 100_000] {
            let m = meter(&tar, chunk);
            // 1 B and 4096 B take a page each, 5000 B two.
            assert_eq!(m.charged, 4 * PAGE, "chunk {chunk}");
            // sub/, a, sub/b, sub/c, link; not the root.
            assert_eq!(m.entries, 5, "chunk {chunk}");
        }
        let m = meter(&archive(true), 300);
        assert_eq!(m.charged, 5 * PAGE);
        assert_eq!(m.entries, 6);
    }

    #[test]
    fn only_the_root_is_an_empty_seed() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, "./", std::io::empty()).unwrap();
        let m = meter(&b.into_inner().unwrap(), 512);
        assert_eq!((m.entries, m.charged), (0, 0));
    }

    #[test]
    fn pax_size_overrides_the_header() {
        // A PAX header saying 9000 bytes, then a file header whose own field says 0.
        let rec = "13 size=9000\n";
        let mut tar = Vec::new();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(rec.len() as u64);
        h.set_path("PaxHeaders/big").unwrap();
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        let mut data = rec.as_bytes().to_vec();
        data.resize(512, 0);
        tar.extend_from_slice(&data);
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_path("big").unwrap();
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(&vec![0u8; 9216]);
        tar.extend_from_slice(&[0u8; 1024]);
        let m = meter(&tar, 100);
        assert_eq!(m.charged, 3 * PAGE);
        assert_eq!(m.entries, 1);
        assert!(m.ended);
    }

    /// What a reader sees of an entry: path, uid, gid, PAX uid if any.
    type Seen = (String, Option<u64>, Option<u64>, Option<String>);

    fn owners(tar: &[u8]) -> Vec<Seen> {
        let mut ar = tar::Archive::new(tar);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let pax_uid = e.pax_extensions().unwrap().and_then(|exts| {
                    exts.filter_map(Result::ok)
                        .find(|x| x.key() == Ok("uid"))
                        .map(|x| x.value().unwrap().to_string())
                });
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.uid().ok(),
                    h.gid().ok(),
                    pax_uid,
                )
            })
            .collect()
    }

    #[test]
    fn gives_every_entry_to_the_owner_whatever_the_chunks() {
        let mut tar = archive(true);
        // Drop the end-of-archive blocks, then add an entry whose uid is in a PAX
        // record (as for ids over 2^21), and end the archive again.
        let end = tar.len() - 1024;
        tar.truncate(end);
        // A global PAX header naming a uid as well.
        let rec = "12 uid=4242\n";
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XGlobalHeader);
        h.set_size(rec.len() as u64);
        h.set_path("GlobalHead").unwrap();
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        let mut data = rec.as_bytes().to_vec();
        data.resize(512, 0);
        tar.extend_from_slice(&data);
        let mut b = tar::Builder::new(tar);
        b.append_pax_extensions([("uid", &b"3000000"[..]), ("gid", b"3000001")])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_uid(0);
        h.set_mode(0o644);
        b.append_data(&mut h, "./pax", &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let before = owners(&tar);
        assert_eq!(before.last().unwrap().3.as_deref(), Some("3000000"));
        for chunk in [1, 7, 511, 512, 513, 100_000] {
            for (uid, gid) in [(1000, 1000), (0o7777777 + 5, 42)] {
                let mut m = TarMeter::owned(uid, gid);
                let out: Vec<u8> = tar.chunks(chunk).flat_map(|c| m.pass(c)).collect();
                assert_eq!(out.len(), tar.len(), "chunk {chunk}");
                let text = String::from_utf8_lossy(&out);
                assert!(!text.contains("uid=") && text.contains("UID=4242"));
                assert!(m.refused.is_none());
                assert_eq!(m.charged, 6 * PAGE, "the meter still counts");
                let after = owners(&out);
                assert_eq!(after.len(), before.len());
                for ((path, u, g, pax), was) in after.iter().zip(&before) {
                    assert_eq!(path, &was.0, "chunk {chunk}");
                    assert_eq!(
                        (*u, *g, pax),
                        (Some(uid), Some(gid), &None),
                        "{path}, chunk {chunk}"
                    );
                }
                // Data is untouched.
                let mut ar = tar::Archive::new(&out[..]);
                let mut pax = ar
                    .entries()
                    .unwrap()
                    .map(Result::unwrap)
                    .find(|e| e.path().unwrap().ends_with("pax"))
                    .unwrap();
                let mut data = String::new();
                std::io::Read::read_to_string(&mut pax, &mut data).unwrap();
                assert_eq!(data, "abc");
            }
        }
        // Only metering: the stream is not touched.
        let mut m = TarMeter::new();
        assert_eq!(m.pass(&tar), tar);
    }

    #[test]
    fn numeric_fields() {
        assert_eq!(octal_or_binary(b"00000001750\0"), 0o1750);
        assert_eq!(octal_or_binary(b"     17 \0\0\0\0"), 0o17);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 2;
        big[10] = 1;
        assert_eq!(octal_or_binary(&big), 258);
        assert_eq!(pax_size(b"19 path=some/thing\n13 size=4097\n"), Some(4097));
        assert_eq!(pax_size(b"garbage"), None);
    }
}
