//! Cheap checks of an outbox file's SQLite header, made before SQLite opens it: a file that
//! is not a database at all, or that was cut short, is found without reading its pages.
//! (Format: <https://www.sqlite.org/fileformat2.html#the_database_header>.)

use std::io::Read;
use std::path::Path;

const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What is wrong with the file at `path`, when its header shows it; `None` when it looks
/// sound, is empty or does not exist (SQLite then starts a fresh database).
pub(super) fn damage(path: &Path) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    if len == 0 {
        return None;
    }
    let mut header = [0u8; 100];
    if file.read_exact(&mut header).is_err() {
        return Some(format!("{len} bytes, shorter than a SQLite header"));
    }
    judge(&header, len, wal_in_use(path))
}

/// Judges a header against the file's length. With a -wal in use the file may legitimately
/// lag its header (pages not yet checkpointed), so only the page alignment is checked then.
fn judge(header: &[u8; 100], len: u64, wal_in_use: bool) -> Option<String> {
    if &header[..16] != MAGIC {
        return Some("not a SQLite database (no SQLite header)".into());
    }
    let page = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        p if p >= 512 && p.is_power_of_two() => u64::from(p),
        p => return Some(format!("invalid page size {p} in the header")),
    };
    if len % page != 0 {
        return Some(format!(
            "truncated: {len} bytes is not a whole number of {page}-byte pages"
        ));
    }
    let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    // The page count in the header is valid only when its change counter matches.
    let pages = u64::from(be32(28));
    if !wal_in_use && be32(24) == be32(92) && pages * page > len {
        return Some(format!(
            "truncated: {len} bytes where the header says {pages} pages of {page} bytes"
        ));
    }
    None
}

fn wal_in_use(path: &Path) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).is_ok_and(|m| m.len() > 0)
}

#[cfg(test)]
mod tests {
    use super::judge;

    fn header(page: u16, pages: u32) -> [u8; 100] {
        let mut h = [0u8; 100];
        h[..16].copy_from_slice(super::MAGIC);
        h[16..18].copy_from_slice(&page.to_be_bytes());
        h[24..28].copy_from_slice(&7u32.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[92..96].copy_from_slice(&7u32.to_be_bytes());
        h
    }

    #[test]
    fn a_whole_file_passes_and_a_cut_one_does_not() {
        assert_eq!(judge(&header(4096, 10), 40960, false), None);
        assert!(
            judge(&header(4096, 10), 20480, false)
                .unwrap()
                .contains("truncated")
        );
        assert!(
            judge(&header(4096, 10), 20481, true)
                .unwrap()
                .contains("whole number")
        );
        assert_eq!(
            judge(&header(4096, 10), 20480, true),
            None,
            "the WAL holds the rest"
        );
        assert!(
            judge(&header(1000, 1), 1000, false)
                .unwrap()
                .contains("page size")
        );
        assert!(
            judge(&[1u8; 100], 4096, false)
                .unwrap()
                .contains("not a SQLite")
        );
    }
}
