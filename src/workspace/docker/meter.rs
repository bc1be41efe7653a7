//! Counting what a tar stream will take on a tmpfs, as it passes by, without
//! holding it: the seed of a workdir (`seed.rs`) is forwarded chunk by chunk from
//! one container to another, and must be stopped as soon as it cannot fit.
//!
//! A tmpfs charges whole pages for a regular file's data and nothing against its
//! `size=` for directories, links or names, so the count is the sum of each
//! regular file's size rounded up to a page. Only headers are parsed (ustar, GNU
//! long names, PAX `size` records); data is skipped.

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
    /// The size a PAX header gave the next entry.
    next_size: Option<u64>,
    ended: bool,
    /// Page-rounded bytes of regular files seen so far.
    pub charged: u64,
    /// Entries other than the archive's root directory (`./`).
    pub entries: u64,
}

impl TarMeter {
    pub fn new() -> TarMeter {
        TarMeter::default()
    }

    /// Takes the next chunk of the stream (any size, any boundary).
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                if self.pax_left > 0 {
                    let p = (self.pax_left.min(n as u64)) as usize;
                    if self.pax.len() + p <= MAX_PAX_BYTES {
                        self.pax.extend_from_slice(&data[..p]);
                    }
                    self.pax_left -= p as u64;
                    if self.pax_left == 0 {
                        self.next_size = pax_size(&self.pax);
                        self.pax.clear();
                    }
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
                let block = std::mem::take(&mut self.header);
                self.header_block(&block);
            }
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
            b'x' => {
                self.pax_left = size;
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
