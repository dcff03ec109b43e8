//! CLI: create -> info -> verify round trips, corruption and missing files, determinism.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use sha1::{Digest, Sha1};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_uring-bt"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run uring-bt")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The value of the first `key: value` line.
fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A directory `root/content` with three files, two of them in a subdirectory.
fn make_content(root: &Path) {
    let c = root.join("content");
    std::fs::create_dir_all(c.join("sub/deeper")).unwrap();
    std::fs::write(c.join("big.bin"), pseudo_random(300_000, 1)).unwrap();
    std::fs::write(c.join("sub/small.txt"), b"hello, torrent\n").unwrap();
    std::fs::write(c.join("sub/deeper/mid.bin"), pseudo_random(70_000, 2)).unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn create_info_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    make_content(dir.path());
    let t = dir.path().join("c.torrent");
    let o = run(&[
        "create",
        s(&dir.path().join("content")),
        "-o",
        s(&t),
        "--tracker",
        "http://127.0.0.1:1/announce",
        "--tracker",
        "udp://127.0.0.1:2,udp://127.0.0.1:3",
        "--piece-length",
        "32K",
        "--private",
        "--comment",
        "a comment",
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let hash = field(&out, "info_hash")
        .expect("info_hash line")
        .to_string();
    assert_eq!(hash.len(), 40);
    assert!(hash
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    let magnet = field(&out, "magnet").expect("magnet line");
    assert!(magnet.starts_with(&format!("magnet:?xt=urn:btih:{hash}&dn=content&tr=")));

    // info --json: the contract keys and values.
    let o = run(&["info", s(&t), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["info_hash"], hash.as_str());
    assert_eq!(j["name"], "content");
    assert_eq!(j["piece_length"], 32768);
    let total = 300_000 + 15 + 70_000;
    assert_eq!(j["total_length"], total);
    assert_eq!(j["pieces"], (total as u64).div_ceil(32768));
    assert_eq!(j["private"], true);
    assert_eq!(j["magnet"], magnet);
    assert_eq!(
        j["trackers"],
        serde_json::json!([
            ["http://127.0.0.1:1/announce"],
            ["udp://127.0.0.1:2", "udp://127.0.0.1:3"]
        ])
    );
    // Byte-wise path order: "big.bin" < "sub/deeper/mid.bin" < "sub/small.txt".
    assert_eq!(
        j["files"],
        serde_json::json!([
            {"path": "big.bin", "length": 300_000},
            {"path": "sub/deeper/mid.bin", "length": 70_000},
            {"path": "sub/small.txt", "length": 15},
        ])
    );

    // info (text).
    let o = run(&["info", s(&t)]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert_eq!(field(&out, "name"), Some("content"));
    assert_eq!(field(&out, "info_hash"), Some(hash.as_str()));
    assert_eq!(field(&out, "private"), Some("true"));
    assert_eq!(field(&out, "comment"), Some("a comment"));
    assert!(out.contains("tracker: 2 udp://127.0.0.1:3\n"));
    assert!(out.contains("file: 70000 sub/deeper/mid.bin\n"));

    // verify: all good.
    let o = run(&["verify", s(&t), s(dir.path())]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(field(&out, "result"), Some("complete"));
    assert_eq!(field(&out, "bad"), Some("0"));
    let o = run(&["verify", s(&t), s(dir.path()), "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["complete"], true);
    assert_eq!(j["good"], j["pieces"]);
    assert_eq!(j["bad_pieces"], serde_json::json!([]));
}

#[test]
fn single_file_torrent_round_trip_and_raw_hash() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("one.bin");
    std::fs::write(&f, pseudo_random(100_000, 7)).unwrap();
    let t = dir.path().join("one.torrent");
    let o = run(&["create", s(&f), "-o", s(&t), "--no-date"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let hash = field(&stdout(&o), "info_hash").unwrap().to_string();
    // The info hash is SHA-1 of the `info` value's bytes in the file.
    let bytes = std::fs::read(&t).unwrap();
    let at = bytes.windows(6).position(|w| w == b"4:info").unwrap() + 6;
    let info = &bytes[at..bytes.len() - 1];
    let want: [u8; 20] = Sha1::digest(info).into();
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hash, want);
    assert!(!String::from_utf8_lossy(&bytes).contains("creation date"));
    let o = run(&["info", s(&t), "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        j["files"],
        serde_json::json!([{"path": "one.bin", "length": 100_000}])
    );
    assert_eq!(j["piece_length"], 16384);
    assert_eq!(j["trackers"], serde_json::json!([]));
    let o = run(&["verify", s(&t), s(dir.path())]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn create_is_deterministic_without_date() {
    let dir = tempfile::tempdir().unwrap();
    make_content(dir.path());
    let content = dir.path().join("content");
    let a = dir.path().join("a.torrent");
    let b = dir.path().join("b.torrent");
    for (t, threads) in [(&a, "1"), (&b, "2")] {
        let o = run(&[
            "create",
            s(&content),
            "-o",
            s(t),
            "--no-date",
            "--threads",
            threads,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn corrupt_byte_fails_verify_naming_piece_and_file() {
    let dir = tempfile::tempdir().unwrap();
    make_content(dir.path());
    let t = dir.path().join("c.torrent");
    let o = run(&[
        "create",
        s(&dir.path().join("content")),
        "-o",
        s(&t),
        "--piece-length",
        "16384",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Byte 200,000 of big.bin lies in piece 12 (200000 / 16384).
    let p = dir.path().join("content/big.bin");
    let mut data = std::fs::read(&p).unwrap();
    data[200_000] ^= 0x55;
    std::fs::write(&p, &data).unwrap();
    let o = run(&["verify", s(&t), s(dir.path())]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert_eq!(field(&out, "bad"), Some("1"));
    assert_eq!(field(&out, "bad_pieces"), Some("12"));
    assert_eq!(
        field(&out, "bad_file"),
        Some("big.bin (bad data; pieces 12)")
    );
    assert_eq!(field(&out, "result"), Some("incomplete"));
    let o = run(&["verify", s(&t), s(dir.path()), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["bad_pieces"], serde_json::json!([12]));
    assert_eq!(j["bad_files"], serde_json::json!(["big.bin"]));
    assert_eq!(j["complete"], false);
}

#[test]
fn missing_and_short_files_fail_verify() {
    let dir = tempfile::tempdir().unwrap();
    make_content(dir.path());
    let t = dir.path().join("c.torrent");
    let o = run(&["create", s(&dir.path().join("content")), "-o", s(&t)]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(dir.path().join("content/sub/small.txt")).unwrap();
    let mid = dir.path().join("content/sub/deeper/mid.bin");
    let data = std::fs::read(&mid).unwrap();
    std::fs::write(&mid, &data[..1000]).unwrap();
    let o = run(&["verify", s(&t), s(dir.path()), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // big.bin shares piece 18 (bytes 294,912..311,296) with the short mid.bin.
    assert_eq!(
        j["bad_files"],
        serde_json::json!(["big.bin", "sub/deeper/mid.bin", "sub/small.txt"])
    );
    let problems = j["problems"].as_array().unwrap();
    assert_eq!(problems[0]["problem"], "shares a piece with a bad file");
    assert_eq!(problems[0]["bad_pieces"], serde_json::json!([18]));
    assert_eq!(problems[1]["problem"], "short: 1000 of 70000 bytes");
    assert_eq!(problems[2]["problem"], "missing");
    assert_eq!(j["bad_pieces"], serde_json::json!([18, 19, 20, 21, 22]));
    // The whole content directory gone: every piece bad, still exit 1, no crash.
    std::fs::remove_dir_all(dir.path().join("content")).unwrap();
    let o = run(&["verify", s(&t), s(dir.path())]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(field(&out, "good"), Some("0"));
    assert!(out.contains("bad_file: big.bin (missing; pieces "), "{out}");
}

#[test]
fn create_piped_has_no_progress_bar_and_warns_about_skipped_entries() {
    let dir = tempfile::tempdir().unwrap();
    make_content(dir.path());
    let c = dir.path().join("content");
    std::os::unix::fs::symlink(c.join("sub"), c.join("dirlink")).unwrap();
    std::os::unix::fs::symlink("big.bin", c.join("filelink")).unwrap();
    // An absolute link is refused by a seeder's RESOLVE_BENEATH open: create leaves it out.
    std::os::unix::fs::symlink(c.join("big.bin"), c.join("abslink")).unwrap();
    let t = dir.path().join("c.torrent");
    let o = run(&["create", s(&c), "-o", s(&t), "--no-date"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // stdout: exactly the two contract lines.
    let out = stdout(&o);
    let keys: Vec<&str> = out.lines().map(|l| l.split(": ").next().unwrap()).collect();
    assert_eq!(keys, ["info_hash", "magnet"]);
    // stderr (not a terminal): the warning and the summary, no progress bar drawing.
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("warning: skipped ") && lines[0].ends_with("abslink: link that is absolute or leaves the save directory (a seeder would refuse it)"),
        "{err}"
    );
    assert!(
        lines[1].starts_with("warning: skipped ")
            && lines[1].ends_with("dirlink: link to a directory, not followed"),
        "{err}"
    );
    assert!(lines[2].starts_with("created "), "{err}");
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
    // The relative link to a regular file is followed: its content is in the torrent.
    let o = run(&["info", s(&t), "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(j["files"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"path": "filelink", "length": 300_000})));
}

#[test]
fn closed_stdout_pipe_is_a_quiet_exit() {
    // A torrent with enough files that `info` writes more than a pipe buffer holds.
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("many");
    std::fs::create_dir(&c).unwrap();
    for i in 0..3000 {
        std::fs::write(c.join(format!("file-with-a-longish-name-{i:05}.txt")), b"x").unwrap();
    }
    let t = dir.path().join("many.torrent");
    let o = run(&["create", s(&c), "-o", s(&t)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut child = bin()
        .args(["info", s(&t)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before reading anything.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stderr(&o), "");
}
