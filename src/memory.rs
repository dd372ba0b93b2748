//! What the daemon gives back to the system once it is at rest: the free memory of its
//! allocator, and its hold on the pages of code it ran while busy.
//!
//! A busy spell runs code from all over the binary and its libraries (start-up, the config,
//! HTTP, TLS, signing, SQLite), and the kernel maps each page of it into the daemon together
//! with the pages around it (fault-around, 64 KiB). Those stay mapped, and counted in the
//! daemon's RSS, for as long as the daemon lives: after a drain about 7 MiB of its 10, most of
//! them the binary's own. At rest the daemon unmaps those (`MADV_DONTNEED` on its executable's
//! code mapping, `r-xp`). The pages stay in the page cache, so the next event maps what it runs
//! again without reading the flash (minor faults: about a millisecond more from `emit` to the
//! receiver for the first event after a rest, in the benchmark); and a page no process maps is
//! the first the kernel takes back when the device runs short of memory, where a mapped page of
//! code is kept the longest.
//! Only mappings that hold nothing of the daemon's own (no private copy of a page in memory or
//! in swap, `Anonymous: 0 kB` and `Swap: 0 kB` in `smaps`) are unmapped: dropping such a page
//! loses nothing, as the file has the same bytes. Shared libraries are left mapped: the loader
//! maps and unmaps files while another thread resolves a host or a group for the first time
//! (the NSS modules, `/etc/ld.so.cache`), so a range read from `smaps` could hold something
//! else by the time it is advised; the executable's mappings are made once, at exec.

use std::fs;

/// Gives back what a busy spell left: the free pages of every allocator arena, and the
/// daemon's mappings of the pages of its executable's code. Returns the
/// bytes of the mappings it released (their RSS before).
pub fn give_back() -> u64 {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer; it returns free pages of the allocator's arenas
    // to the system and is safe to call from any thread at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
    let Ok(smaps) = fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut released = 0;
    for m in clean_file_mappings(&smaps, give_back as fn() -> u64 as usize) {
        // SAFETY: the range is a whole mapping of this process's executable's code, not
        // writable and holding no private page (`clean_file_mappings`): the kernel drops its page-table
        // entries and maps the file's pages again, with the same bytes, on the next access.
        // Nothing is unmapped from the address space, no pointer into it becomes invalid, and
        // the range is still that mapping when it is advised: the kernel mapped the executable
        // at exec and the loader made its relocated data read-only before `main`; nothing maps
        // or unmaps it afterwards (a range unmapped in between could hold a new mapping, whose
        // memory this would drop).
        let r = unsafe {
            nix::libc::madvise(
                m.start as *mut nix::libc::c_void,
                m.end - m.start,
                nix::libc::MADV_DONTNEED,
            )
        };
        if r == 0 {
            released += m.rss_kib * 1024;
        }
    }
    released
}

/// A file as `smaps` names it: its device (`major:minor`) and inode fields.
type FileId = (String, u64);

/// A mapping of `/proc/self/smaps`: its range and its resident KiB.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// A mapping with what `clean_file_mappings` decides on.
struct Entry {
    mapping: Mapping,
    /// Private, readable and executable, not writable (`r-xp`): code.
    code: bool,
    file: Option<FileId>,
    path: String,
    anonymous_kib: Option<u64>,
    swap_kib: u64,
    locked_kib: u64,
}

/// The mappings of `smaps` that can be dropped without losing anything: the executable's code
/// (`r-xp`, of the file mapped where the code at `code_at` is), with no private copy of a page
/// in memory or in swap (`Anonymous: 0 kB`, `Swap: 0 kB`), not locked, and with pages mapped.
/// Read-only data is left: under qemu-user `smaps` shows no private copies, and dropping
/// relocated data there crashed the armv7 tests. The executable's mappings stay as they are
/// until the process exits (see the module's note on shared libraries); it is told by the
/// mapping rather than by `/proc/self/exe`, whose device and inode can differ from the
/// mapping's (overlayfs, btrfs).
fn clean_file_mappings(smaps: &str, code_at: usize) -> Vec<Mapping> {
    let entries = entries(smaps);
    let exe = entries
        .iter()
        .find(|e| (e.mapping.start..e.mapping.end).contains(&code_at))
        .and_then(|e| e.file.clone());
    entries
        .into_iter()
        .filter(|e| {
            e.code
                && e.path.starts_with('/')
                && e.file.is_some()
                && e.file == exe
                && e.anonymous_kib == Some(0)
                && e.swap_kib == 0
                && e.locked_kib == 0
                && e.mapping.rss_kib > 0
        })
        .map(|e| e.mapping)
        .collect()
}

/// Every mapping of `smaps`, with the fields `clean_file_mappings` looks at.
fn entries(smaps: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    for line in smaps.lines() {
        if let Some(((start, end), rest)) = header(line) {
            let mut fields = rest.split_ascii_whitespace();
            let p = fields.next().unwrap_or("").as_bytes();
            let _offset = fields.next();
            let dev = fields.next().unwrap_or("");
            let inode = fields.next().and_then(|i| i.parse::<u64>().ok());
            out.push(Entry {
                mapping: Mapping {
                    start,
                    end,
                    rss_kib: 0,
                },
                code: p == b"r-xp",
                file: inode.filter(|&i| i != 0).map(|i| (dev.to_string(), i)),
                path: fields.next().unwrap_or("").to_string(),
                anonymous_kib: None,
                swap_kib: 0,
                locked_kib: 0,
            });
        } else if let Some((key, kib)) = field(line) {
            if let Some(e) = out.last_mut() {
                match key {
                    "Rss" => e.mapping.rss_kib = kib,
                    "Anonymous" => e.anonymous_kib = Some(kib),
                    "Swap" => e.swap_kib = kib,
                    "Locked" => e.locked_kib = kib,
                    _ => {}
                }
            }
        } else if !line.split(' ').next().unwrap_or("").ends_with(':') {
            // Neither a field (`Key: …`) nor a header this reads: a mapping it cannot name. Its
            // fields must not be taken for the previous mapping's, so it stands in as one that
            // is never given back.
            out.push(Entry {
                mapping: Mapping {
                    start: 0,
                    end: 0,
                    rss_kib: 0,
                },
                code: false,
                file: None,
                path: String::new(),
                anonymous_kib: None,
                swap_kib: 0,
                locked_kib: 0,
            });
        }
    }
    out
}

/// A mapping's first line: `start-end perms offset dev inode path`, as the range and the rest.
fn header(line: &str) -> Option<((usize, usize), &str)> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    (end > start).then_some(((start, end), rest))
}

/// A `Key:   123 kB` line of a mapping.
fn field(line: &str) -> Option<(&str, u64)> {
    let (key, value) = line.split_once(':')?;
    let kib = value.trim().strip_suffix(" kB")?.trim().parse().ok()?;
    Some((key, kib))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
40000000-40100000 r--p 00000000 fe:01 123 /usr/bin/edgehook
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd mr mw me sd
40100000-40600000 r-xp 00100000 fe:01 123 /usr/bin/edgehook
Size:               5120 kB
Rss:                4096 kB
Anonymous:             0 kB
Locked:                0 kB
40600000-40640000 r--p 00600000 fe:01 123 /usr/bin/edgehook
Rss:                 256 kB
Anonymous:           256 kB
Locked:                0 kB
4063x000-40640000 r--p 00630000 fe:01 123 /usr/bin/edgehook
Rss:                  64 kB
Anonymous:             0 kB
40640000-40648000 r--p 00640000 fe:01 123 /usr/bin/edgehook
Rss:                  16 kB
Anonymous:             0 kB
Swap:                 16 kB
Locked:                0 kB
40648000-40650000 rw-p 00648000 fe:01 123 /usr/bin/edgehook
Rss:                  64 kB
Anonymous:            64 kB
40650000-40660000 rw-p 00000000 00:00 0
Rss:                  64 kB
Anonymous:            64 kB
b7000000-b7100000 r-xp 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                1600 kB
Anonymous:             0 kB
Locked:                0 kB
b7100000-b7110000 r-xp 00100000 fe:01 123 /usr/bin/edgehook
Rss:                  64 kB
Anonymous:             0 kB
Locked:                4 kB
b7110000-b7130000 r--p 00000000 fe:01 460 /etc/ld.so.cache
Rss:                 128 kB
Anonymous:             0 kB
b7200000-b7300000 r-xp 00000000 fe:01 457 /usr/lib/x86_64-linux-gnu/libm.so.6
Rss:                   0 kB
Anonymous:             0 kB
b7280000-b7300000 r--p 00000000 fe:01 458 /usr/lib/locale/locale-archive
Rss:                  64 kB
Anonymous:             0 kB
Locked:                0 kB
b7290000-b72a0000 r--p 00000000 08:02 123 /data/another-disk-same-inode
Rss:                  64 kB
Anonymous:             0 kB
b7300000-b7400000 rw-s 00000000 fe:01 999 /var/lib/edgehook/outbox.db-shm
Rss:                  32 kB
Anonymous:             0 kB
bf000000-bf002000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_the_executables_clean_code_with_pages_is_released() {
        let got = clean_file_mappings(SMAPS, 0x40100400);
        assert_eq!(
            got,
            vec![Mapping {
                start: 0x40100000,
                end: 0x40600000,
                rss_kib: 4096
            }],
            "read-only data (its copies are not seen under qemu-user), relocated read-only data \
             (a private copy, in memory or swapped out, and not hidden behind a header that does \
             not parse), writable, shared, locked, empty and pseudo mappings, shared libraries \
             and data files are left alone"
        );
    }

    #[test]
    fn a_mapping_without_its_anonymous_line_is_left_alone() {
        let smaps = "b7000000-b7100000 r-xp 00000000 fe:01 456 /usr/lib/libc.so.6\nRss: 8 kB\n";
        assert!(clean_file_mappings(smaps, 0xb7000400).is_empty());
    }

    /// Set in the child process `giving_back_…` runs itself in.
    const CHILD: &str = "EDGEHOOK_MEMORY_TEST_CHILD";

    /// The real thing: a process's code's pages are unmapped, and it runs on (the assertions
    /// after `give_back` run code and read data from the released mappings). It runs in a
    /// child process of this test binary with no other test beside it, which would map what it
    /// runs again in between.
    #[test]
    fn giving_back_unmaps_this_processs_code_and_it_runs_on() {
        let code = give_back as fn() -> u64 as usize;
        let smaps = || fs::read_to_string("/proc/self/smaps").expect("smaps");
        let resident = || -> u64 {
            clean_file_mappings(&smaps(), code)
                .iter()
                .map(|m| m.rss_kib)
                .sum()
        };
        if std::env::var("EDGEHOOK_TEST_RUNNER").is_ok_and(|r| !r.trim().is_empty()) {
            // scripts/cross-test runs this binary under qemu-user (and sets the variable for the
            // daemons tests start): the smaps it reads and the advice it gives are the
            // emulator's translations, not a kernel's view of a process, and running this binary
            // again would need the runner. What holds there: giving back runs, and so does the
            // process after it. The unmapping itself is checked on the native run.
            let released = give_back();
            let text = format!("{:?}", (released, "still running", vec![1.5f64; 3]));
            assert!(text.contains("still running"));
            eprintln!("under EDGEHOOK_TEST_RUNNER: gave back {released} bytes; not measured");
            return;
        }
        if std::env::var_os(CHILD).is_none() {
            let name = "memory::tests::giving_back_unmaps_this_processs_code_and_it_runs_on";
            let out = std::process::Command::new(std::env::current_exe().expect("this test"))
                .args([name, "--exact", "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .output()
                .expect("the test binary runs again");
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "the child failed:\n{text}");
            assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
            return;
        }
        assert!(
            clean_file_mappings(&smaps(), code)
                .iter()
                .any(|m| (m.start..m.end).contains(&code)),
            "the executable's code is among the mappings to give back"
        );
        let before = resident();
        let released = give_back();
        let after = resident();
        assert!(
            before >= 1024,
            "a test binary runs more than 1 MiB of code: {before} KiB"
        );
        assert!(
            released >= 1024 * 1024,
            "released {released} bytes of {before} KiB"
        );
        assert!(
            after < before / 2,
            "the code mapped again by the time smaps is read ({after} KiB) is a fraction of what \
             was mapped before ({before} KiB)"
        );
        let text = format!("{:?}", (after, "still running", vec![1.5f64; 3]));
        assert!(text.contains("still running"));
        eprintln!(
            "before {before} KiB, released {} KiB, after {after} KiB",
            released / 1024
        );
    }
}
