//! Interop of `uring-bt seed` with real leechers: libtorrent (python3-libtorrent), rtorrent
//! and qbittorrent-nox download from it on loopback, and the bytes they write are compared
//! with the source, byte by byte.
//!
//! - each client downloads a 64 MiB single-file torrent and a tree of 1,000 small files;
//! - four libtorrent leechers at once (each on its own 127.x.y.z) complete from one seeder;
//! - the 1,000-file tree is served with the seeder under `ulimit -n 128`, and its open
//!   descriptors, sampled from /proc/<pid>/fd while it serves, stay under the cap;
//! - the drivers themselves are checked against a libtorrent seeder (lt_seed.py), so that a
//!   broken driver is told apart from a broken seeder.
//!
//! Torrents are made by libtorrent (v1), so these tests depend only on `uring-bt seed`.
//! Heavy tests take `heavy_lock()`: they run one at a time, whatever the test threads.
//! A missing client fails its test.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// Bound on one leecher's download (the driver gives up after it; we wait a little longer).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(240);

/// Our seeder for one case; checks the info hash it announces on stdout.
fn our_seeder(case: &Case, nofile: Option<u64>) -> Seeder {
    our_seeder_with(case, nofile, &[])
}

/// [`our_seeder`] with more arguments.
fn our_seeder_with(case: &Case, nofile: Option<u64>, extra: &[&str]) -> Seeder {
    let mut s = spawn_our_seeder_with(&[&case.torrent], &case.data, nofile, extra);
    let line = s.proc.wait_line("info_hash:", Duration::from_secs(30));
    let h = line.split_whitespace().next().unwrap_or("");
    assert_eq!(
        h.to_ascii_lowercase(),
        case.info_hash,
        "uring-bt seed announces another info hash"
    );
    s
}

/// The number right before `label` in `line` ("... 12 accept errors ...").
fn count_before(line: &str, label: &str) -> u64 {
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {line:?}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before `{label}` in {line:?}"))
}

/// The number right after `label` in `line` ("... evicted 12 times").
fn count_after(line: &str, label: &str) -> u64 {
    let at = line
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {line:?}"));
    line[at + label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after `{label}` in {line:?}"))
}

fn download(client: Client, case: &Case, seeder: &Seeder, label: &str) {
    let save = case.save_dir(label);
    let mut l = spawn_leecher(
        client,
        &case.torrent,
        &save,
        seeder.addr,
        unique_ip(),
        DOWNLOAD_TIMEOUT,
    );
    wait_leecher(&mut l, DOWNLOAD_TIMEOUT);
    case.assert_downloaded(&save);
}

/// Starts every `(client, label)` leecher at once (each on its own address), waits for all of
/// them, then checks every download byte by byte.
fn download_together(case: &Case, seeder: &Seeder, leechers: &[(Client, String)]) {
    let mut running: Vec<(Proc, PathBuf)> = leechers
        .iter()
        .map(|(c, label)| {
            let save = case.save_dir(label);
            let l = spawn_leecher(
                *c,
                &case.torrent,
                &save,
                seeder.addr,
                unique_ip(),
                DOWNLOAD_TIMEOUT,
            );
            (l, save)
        })
        .collect();
    for (l, _) in &mut running {
        wait_leecher(l, DOWNLOAD_TIMEOUT);
    }
    for (_, save) in &running {
        case.assert_downloaded(save);
    }
}

fn client_downloads_single(client: Client, label: &'static str) {
    client.require();
    let _g = heavy_lock();
    let _t = Timed::new(label);
    let case = single_case(64, 0xC0FFEE ^ label.len() as u64);
    let seeder = our_seeder(&case, None);
    download(client, &case, &seeder, label);
    stop_our_seeder(seeder);
}

fn client_downloads_tree(client: Client, label: &'static str) {
    client.require();
    let _g = heavy_lock();
    let _t = Timed::new(label);
    let case = tree_case(1000, 0x7EE ^ label.len() as u64);
    let seeder = our_seeder(&case, None);
    download(client, &case, &seeder, label);
    stop_our_seeder(seeder);
}

#[test]
fn libtorrent_downloads_64mib_file_from_uring_bt() {
    client_downloads_single(Client::Libtorrent, "libtorrent_single_64mib");
}

#[test]
fn libtorrent_downloads_1000_file_tree_from_uring_bt() {
    client_downloads_tree(Client::Libtorrent, "libtorrent_tree_1000");
}

#[test]
fn rtorrent_downloads_64mib_file_from_uring_bt() {
    client_downloads_single(Client::Rtorrent, "rtorrent_single_64mib");
}

#[test]
fn rtorrent_downloads_1000_file_tree_from_uring_bt() {
    client_downloads_tree(Client::Rtorrent, "rtorrent_tree_1000");
}

#[test]
fn qbittorrent_downloads_64mib_file_from_uring_bt() {
    client_downloads_single(Client::Qbittorrent, "qbittorrent_single_64mib");
}

#[test]
fn qbittorrent_downloads_1000_file_tree_from_uring_bt() {
    client_downloads_tree(Client::Qbittorrent, "qbittorrent_tree_1000");
}

#[test]
fn four_libtorrent_leechers_at_once_from_one_uring_bt_seeder() {
    Client::Libtorrent.require();
    let _g = heavy_lock();
    let _t = Timed::new("four_libtorrent_leechers");
    let case = single_case(64, 0x4444);
    let seeder = our_seeder(&case, None);
    let lt: Vec<(Client, String)> = (0..4)
        .map(|i| (Client::Libtorrent, format!("lt{i}")))
        .collect();
    download_together(&case, &seeder, &lt);
    stop_our_seeder(seeder);
}

#[test]
fn tree_served_under_ulimit_128_keeps_descriptors_under_the_cap() {
    const CAP: u64 = 128;
    Client::Libtorrent.require();
    let _g = heavy_lock();
    let _t = Timed::new("tree_under_ulimit_128");
    let case = tree_case(1000, 0x128);
    let seeder = our_seeder(&case, Some(CAP));
    let pid = seeder.proc.pid();
    // the cap really applies to the seeder
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    assert!(
        line.split_whitespace().nth(3) == Some("128"),
        "seeder's RLIMIT_NOFILE is not 128: {line}"
    );
    let sampler = FdSampler::start(pid, Duration::from_millis(10));
    // two leechers at once: their requests walk the 1,000 files independently, so the
    // seeder's open-file table churns
    let lt: Vec<(Client, String)> = (0..2)
        .map(|i| (Client::Libtorrent, format!("lt-nofile-{i}")))
        .collect();
    download_together(&case, &seeder, &lt);
    let (max_fds, samples) = sampler.stop();
    eprintln!(
        "uring-bt seed under ulimit -n {CAP}: at most {max_fds} open fds in {samples} samples"
    );
    assert!(samples > 10, "too few fd samples ({samples})");
    assert!(
        (max_fds as u64) < CAP,
        "the seeder had {max_fds} descriptors open, cap {CAP}"
    );
    // What the engine did, not what the kernel enforced: its file table evicted (1,000 files
    // through a table the cap keeps far smaller), no accept failed, nothing hit EMFILE.
    let err = stop_our_seeder(seeder);
    let server = err
        .lines()
        .rev()
        .find(|l| l.starts_with("server: "))
        .unwrap_or_else(|| panic!("no `server:` line\n{err}"));
    eprintln!("{server}");
    assert!(count_after(server, "opened ") >= 1000, "{server}");
    assert!(count_after(server, "evicted ") > 0, "no eviction: {server}");
    assert_eq!(count_before(server, " accept errors"), 0, "{server}");
    assert!(
        !err.contains("Too many open files") && !err.contains("EMFILE"),
        "the seeder ran out of descriptors:\n{err}"
    );
}

/// The number of blocks the seeder's `server:` line says went by splice.
fn blocks_spliced(err: &str) -> u64 {
    let server = err
        .lines()
        .rev()
        .find(|l| l.starts_with("server: "))
        .unwrap_or_else(|| panic!("no `server:` line\n{err}"));
    count_before(server, " blocks spliced")
}

/// `--send-path splice` against real leechers: libtorrent and rtorrent fetch the 64 MiB file
/// at once, then libtorrent the 1,000-file tree with the seeder under `ulimit -n 128` and an
/// 8-slot file table (chains split where their pins would exceed a quarter of the table, and
/// blocks span files), each byte for byte, and the server counts every block as spliced.
#[test]
fn splice_send_path_serves_libtorrent_and_rtorrent_intact() {
    Client::Libtorrent.require();
    Client::Rtorrent.require();
    let _g = heavy_lock();
    let _t = Timed::new("splice_send_path");
    let case = single_case(64, 0x5911CE);
    let seeder = our_seeder_with(&case, None, &["--send-path", "splice"]);
    download_together(
        &case,
        &seeder,
        &[
            (Client::Libtorrent, "splice-lt".to_string()),
            (Client::Rtorrent, "splice-rt".to_string()),
        ],
    );
    let spliced = blocks_spliced(&stop_our_seeder(seeder));
    // Each of the two leechers needs all 4,097 blocks of 64 MiB + 777 bytes from us.
    assert!(spliced >= 2 * 4097, "only {spliced} blocks spliced");

    let case = tree_case(1000, 0x5911);
    let seeder = our_seeder_with(
        &case,
        Some(128),
        &[
            "--send-path",
            "splice",
            "--splice-pipes",
            "4",
            "--max-open-files",
            "8",
        ],
    );
    download(Client::Libtorrent, &case, &seeder, "splice-tree");
    let err = stop_our_seeder(seeder);
    let spliced = blocks_spliced(&err);
    assert!(spliced > 0, "nothing spliced:\n{err}");
    assert!(
        !err.contains("Too many open files") && !err.contains("EMFILE"),
        "the seeder ran out of descriptors:\n{err}"
    );
}

/// The drivers against the libtorrent reference seeder: if this fails, the harness (or a
/// client) is broken, not `uring-bt seed`.
#[test]
fn drivers_download_from_libtorrent_reference_seeder() {
    for c in [Client::Libtorrent, Client::Rtorrent, Client::Qbittorrent] {
        c.require();
    }
    let _g = heavy_lock();
    let _t = Timed::new("drivers_vs_lt_seed");
    let single = single_case(8, 0x5EED);
    let tree = tree_case(200, 0x5EED);
    // one reference seeder serving both torrents out of one data dir
    let data = tempfile::tempdir().unwrap();
    copy_tree(&single.content(), &data.path().join(&single.name));
    copy_tree(&tree.content(), &data.path().join(&tree.name));
    let seeder_ip = unique_ip();
    let mut seeder = spawn_lt_seeder(&[&single.torrent, &tree.torrent], data.path(), seeder_ip);
    for c in [Client::Libtorrent, Client::Rtorrent, Client::Qbittorrent] {
        for case in [&single, &tree] {
            let label = format!("{c:?}-ref");
            download(c, case, &seeder, &label);
        }
    }
    let st = seeder.proc.terminate(Duration::from_secs(20));
    assert!(st.is_some_and(|s| s.success()), "{}", seeder.proc.logs());
}

#[test]
fn libtorrent_rtorrent_and_qbittorrent_at_once_from_one_uring_bt_seeder() {
    let clients = [Client::Libtorrent, Client::Rtorrent, Client::Qbittorrent];
    for c in clients {
        c.require();
    }
    let _g = heavy_lock();
    let _t = Timed::new("three_clients_at_once");
    let case = tree_case(1000, 0x3C);
    let seeder = our_seeder(&case, None);
    let all: Vec<(Client, String)> = clients.iter().map(|c| (*c, format!("{c:?}"))).collect();
    download_together(&case, &seeder, &all);
    stop_our_seeder(seeder);
}
