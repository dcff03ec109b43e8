//! CLI: help, usage errors (`seed`'s own too), and every refusal of a bad .torrent: exit code 2
//! and exactly one `error:` line on stderr naming the problem, no panic. Bad data is exit code 1.

use std::path::Path;
use std::process::{Command, Output};

use sha1::{Digest, Sha1};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_uring-bt"))
        .args(args)
        .output()
        .expect("run uring-bt")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn bs(s: &[u8]) -> Vec<u8> {
    let mut v = format!("{}:", s.len()).into_bytes();
    v.extend_from_slice(s);
    v
}

/// A well-formed multi-file torrent of files `(path elements, length)` in 16 KiB pieces.
fn multi(files: &[(&[&[u8]], u64)]) -> Vec<u8> {
    let total: u64 = files.iter().map(|f| f.1).sum();
    let mut info = b"d5:filesl".to_vec();
    for (path, len) in files {
        info.extend(format!("d6:lengthi{len}e4:pathl").bytes());
        for e in *path {
            info.extend(bs(e));
        }
        info.extend(b"ee");
    }
    info.extend(b"e4:name3:dir12:piece lengthi16384e6:pieces");
    info.extend(bs(&vec![1u8; total.div_ceil(16384) as usize * 20]));
    info.push(b'e');
    let mut t = b"d4:info".to_vec();
    t.extend(info);
    t.push(b'e');
    t
}

/// Runs `info` on `bytes` and asserts exit 2 with one `error:` line containing `want`.
fn refused(dir: &Path, name: &str, bytes: &[u8], want: &str) {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    for cmd in [
        &["info", p.to_str().unwrap()][..],
        &["verify", p.to_str().unwrap(), "."],
    ] {
        let o = run(cmd);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(o.stdout.is_empty(), "{name}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(err.starts_with("error: "), "{name}: {err}");
        assert!(
            err.contains(name),
            "{name}: the error names the file: {err}"
        );
        assert!(err.contains(want), "{name}: want `{want}` in: {err}");
        assert!(!err.contains("panic"), "{name}: {err}");
    }
}

#[test]
fn help_teaches_every_command() {
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in ["create", "info", "verify", "seed", "download", "bench"] {
        assert!(
            help.contains(&format!("  {cmd} ")),
            "--help lists {cmd}: {help}"
        );
    }
    assert!(help.contains("Exit codes"));
    for cmd in [
        &["create"][..],
        &["info"],
        &["verify"],
        &["seed"],
        &["download"],
        &["bench", "disk"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{cmd:?} --help");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: uring-bt"));
    }
    let o = run(&["create", "--help"]);
    let h = String::from_utf8_lossy(&o.stdout);
    for opt in [
        "--output",
        "--tracker",
        "--piece-length",
        "--private",
        "--comment",
        "--no-date",
        "--threads",
    ] {
        assert!(h.contains(opt), "create --help mentions {opt}");
    }
    let o = run(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["info"],
        &["create", "x"],
        &["verify", "a.torrent"],
        &["create", "x", "-o", "y", "--threads", "0"],
        &["create", "x", "-o", "y", "--piece-length", "lots"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("rror") || stderr(&o).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn input_errors_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let one_line = |o: &Output, want: &str| {
        let e = stderr(o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with("error: ") && e.contains(want),
            "want {want}: {e}"
        );
    };
    one_line(
        &run(&["info", &format!("{d}/missing.torrent")]),
        "missing.torrent: No such file",
    );
    one_line(&run(&["info", d]), "Is a directory");
    let src = dir.path().join("f");
    std::fs::write(&src, b"data").unwrap();
    let f = src.to_str().unwrap();
    one_line(
        &run(&[
            "create",
            &format!("{d}/nope"),
            "-o",
            &format!("{d}/x.torrent"),
        ]),
        "nope: No such file",
    );
    one_line(
        &run(&["create", f, "-o", "/nonexistent-dir/x.torrent"]),
        "does not exist",
    );
    one_line(
        &run(&["create", f, "-o", &format!("{d}/x.torrent"), "-l", "20000"]),
        "power of two",
    );
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    one_line(
        &run(&[
            "create",
            &format!("{d}/empty"),
            "-o",
            &format!("{d}/x.torrent"),
        ]),
        "no data",
    );
    // verify: a good torrent but a save directory that does not exist.
    let t = format!("{d}/f.torrent");
    assert!(run(&["create", f, "-o", &t]).status.success());
    one_line(&run(&["verify", &t, &format!("{d}/nodir")]), "nodir");
    one_line(&run(&["verify", &t, f]), "not a directory");
}

#[test]
fn malformed_torrents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    refused(d, "garbage.torrent", b"hello world", "malformed bencode");
    refused(d, "empty.torrent", b"", "unexpected end of input");
    refused(d, "list.torrent", b"li1ee", "not a dictionary");
    refused(d, "noinfo.torrent", b"d8:announce1:xe", "missing `info`");
    // Deep nesting: refused by the iterative validator, never a stack overflow.
    let mut deep = b"d4:infod1:x".to_vec();
    deep.extend(vec![b'l'; 500_000]);
    deep.extend(vec![b'e'; 500_000]);
    deep.extend(b"ee");
    refused(d, "deep.torrent", &deep, "nesting deeper than 32");
    refused(
        d,
        "hugestr.torrent",
        b"d4:info18446744073709551615:x",
        "runs past the end",
    );
    refused(
        d,
        "hugestr2.torrent",
        b"d4:info999999999999999999999999:x",
        "bad string length",
    );
    // Bad integers.
    let good = multi(&[(&[b"a"], 10)]);
    let g = String::from_utf8_lossy(&good).into_owned();
    for (name, from, to, want) in [
        (
            "leadingzero.torrent",
            "6:lengthi10e",
            "6:lengthi010e",
            "leading zero",
        ),
        (
            "negzero.torrent",
            "6:lengthi10e",
            "6:lengthi-0e",
            "negative zero",
        ),
        (
            "emptyint.torrent",
            "6:lengthi10e",
            "6:lengthie",
            "no digits",
        ),
        (
            "overflow.torrent",
            "6:lengthi10e",
            "6:lengthi9223372036854775808e",
            "does not fit 64 bits",
        ),
        (
            "neglen.torrent",
            "6:lengthi10e",
            "6:lengthi-10e",
            "bad length -10",
        ),
        (
            "zeropl.torrent",
            "lengthi16384e",
            "lengthi0e",
            "piece length 0 is out of range",
        ),
        (
            "negpl.torrent",
            "lengthi16384e",
            "lengthi-16384e",
            "piece length -16384 is out of range",
        ),
        (
            "hugepl.torrent",
            "lengthi16384e",
            "lengthi134217728e",
            "piece length 134217728 is out of range",
        ),
    ] {
        assert!(g.contains(from), "{name}");
        refused(d, name, g.replacen(from, to, 1).as_bytes(), want);
    }
    // `pieces` not a multiple of 20 (the hashes are 0x01 bytes: drop one).
    let p = g
        .replacen("6:pieces20:", "6:pieces19:", 1)
        .replacen('\u{1}', "", 1);
    refused(d, "pieces19.torrent", p.as_bytes(), "not a multiple of 20");
    let p = g.replacen("6:pieces20:", "6:pieces40:", 1).replacen(
        '\u{1}',
        "\u{1}".repeat(21).as_str(),
        1,
    );
    refused(d, "pieces40.torrent", p.as_bytes(), "holds 2 hashes but");
    // Hostile and duplicate paths: the error names the file.
    for (name, path, want) in [
        (
            "dotdot.torrent",
            &[&b".."[..], b"etc"][..],
            "path element `..` is not allowed",
        ),
        ("dot.torrent", &[b"."], "path element `.` is not allowed"),
        ("emptyel.torrent", &[b"a", b""], "empty path element"),
        ("abs.torrent", &[b"/etc/passwd"], "contains `/`"),
        ("slash.torrent", &[b"a/../../b"], "contains `/`"),
        ("backslash.torrent", &[b"..\\x"], "contains `\\`"),
        ("nul.torrent", &[b"a\0"], "contains NUL"),
    ] {
        refused(d, name, &multi(&[(&[b"ok"], 5), (path, 5)]), want);
        assert!(stderr(&run(&["info", d.join(name).to_str().unwrap()])).contains("file #1 `dir/"));
    }
    refused(
        d,
        "dup.torrent",
        &multi(&[(&[b"a", b"b"], 5), (&[b"c"], 5), (&[b"a", b"b"], 5)]),
        "duplicate file path `dir/a/b`",
    );
    refused(
        d,
        "conflict.torrent",
        &multi(&[(&[b"a"], 5), (&[b"a", b"b"], 5)]),
        "also used as a directory",
    );
    let mut big = b"d4:info".to_vec();
    big.resize((64 << 20) + 10, b'x');
    refused(
        d,
        "toolarge.torrent",
        &big,
        "more than the limit of 67108864",
    );
}

#[test]
fn non_canonical_info_keeps_the_raw_hash() {
    let dir = tempfile::tempdir().unwrap();
    // `info` keys out of order, plus unknown keys (one nested), before the known ones.
    let mut info = b"d".to_vec();
    info.extend(b"4:zzzzd1:ali1ei2eee");
    info.extend(b"12:piece lengthi16384e4:name5:x.bin");
    info.extend(b"6:pieces");
    info.extend(bs(&[9u8; 20]));
    info.extend(b"6:lengthi100e");
    info.extend(b"7:unknown3:abc");
    info.push(b'e');
    let mut t = b"d7:comment2:hi4:info".to_vec();
    t.extend(&info);
    t.extend(b"8:announce14:http://t/a/anne");
    let p = dir.path().join("odd.torrent");
    std::fs::write(&p, &t).unwrap();
    let o = run(&["info", p.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want: [u8; 20] = Sha1::digest(&info).into();
    let want: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(j["info_hash"], want.as_str());
    assert_eq!(j["name"], "x.bin");
    assert_eq!(j["trackers"], serde_json::json!([["http://t/a/ann"]]));
}

/// Runs `uring-bt seed` (always on 127.0.0.1:0, never touching resume data) and returns its
/// output. A seeder that starts serving instead of refusing is killed (by PID) after 60 s and
/// the test fails, rather than hanging.
fn seed(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring-bt"));
    cmd.arg("seed")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--no-resume"]);
    bounded(dir, cmd, args)
}

/// Runs `cmd` with stdout and stderr in files under `dir` (not terminals) and returns its
/// output; one that has not exited after 60 s is killed (by PID) and the test fails.
fn bounded(dir: &Path, mut cmd: Command, args: &[&str]) -> Output {
    let out = dir.join("seed.out");
    let err = dir.join("seed.err");
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run uring-bt");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "seed {args:?} did not exit: {}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out).unwrap(),
        stderr: std::fs::read(&err).unwrap(),
    }
}

/// A directory holding `data/f.bin` (100 KB) and `f.torrent` of it, made by `uring-bt create`.
fn seed_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(data.join("f.bin"), content).unwrap();
    let o = run(&[
        "create",
        data.join("f.bin").to_str().unwrap(),
        "-o",
        dir.path().join("f.torrent").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "create: {}", stderr(&o));
    dir
}

#[test]
fn seed_usage_errors_exit_2_with_one_line() {
    let dir = seed_fixture();
    let d = dir.path();
    let t = d.join("f.torrent");
    let t = t.to_str().unwrap();
    let data = d.join("data");
    let data = data.to_str().unwrap();
    let file = d.join("data/f.bin");
    let file = file.to_str().unwrap();
    let missing_dir = d.join("nodir");
    let missing_dir = missing_dir.to_str().unwrap();
    std::fs::write(d.join("garbage.torrent"), b"hello world").unwrap();
    let garbage = d.join("garbage.torrent");
    let garbage = garbage.to_str().unwrap();
    let missing_torrent = d.join("missing.torrent");
    let missing_torrent = missing_torrent.to_str().unwrap();
    let missing_path = d.join("nope");
    let missing_path = missing_path.to_str().unwrap();
    for (args, want) in [
        (
            &[t, "--data", data, "--shards", "0"][..],
            "--shards must be between 1 and 256",
        ),
        (
            &[t, "--data", data, "--shards", "257"],
            "--shards must be between 1 and 256",
        ),
        (
            &[t, "--data", data, "--buffers", "0"],
            "--buffers must be between 1 and 16384",
        ),
        (
            &[t, "--data", data, "--reqq", "0"],
            "--reqq must be between 1 and 100000",
        ),
        (
            &[t, "--data", data, "--batch", "100"],
            "--batch must be between 1 and 64",
        ),
        (
            &[t, "--data", data, "--coalesce", "0"],
            "--coalesce must be between 1 and 64",
        ),
        (
            &[t, "--data", data, "--splice-pipes", "0"],
            "--splice-pipes must be between 1 and 1024",
        ),
        (
            &[t, "--data", data, "--control-queue", "10"],
            "--control-queue must be between 64 and 16777216 bytes",
        ),
        (
            &[t, "--data", data, "--write-timeout", "0"],
            "--write-timeout must be between 1 and 3600 seconds",
        ),
        (
            &[t, "--data", data, "--upload-slots", "0"],
            "--upload-slots must be at least 1",
        ),
        (
            &[t, "--data", data, "--max-open-files", "0"],
            "--max-open-files must be between 4 and 32768 (the storage ring registers at most \
             32768 files per shard)",
        ),
        (
            &[t, "--data", data, "--max-open-files", "3"],
            "--max-open-files must be between 4 and 32768",
        ),
        (
            &[t, "--data", data, "--max-open-files", "32769"],
            "--max-open-files must be between 4 and 32768",
        ),
        (
            &[t, "--data", data, "--max-open-files", "1000000000"],
            "--max-open-files must be between 4 and 32768",
        ),
        (&[t], "--data DIR is required with .torrent files"),
        (&[t, "--data", file], "f.bin: not a directory"),
        (&[t, "--data", missing_dir], "nodir: not a directory"),
        (
            &[file, d.to_str().unwrap()],
            "give either .torrent files, or one file or directory",
        ),
        (&[missing_path], "cannot seed"),
        (
            &[garbage, "--data", data],
            "garbage.torrent: malformed bencode",
        ),
        (
            &[missing_torrent, "--data", data],
            "missing.torrent: No such file",
        ),
    ] {
        let o = seed(d, args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: nothing on stdout");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want `{want}` in: {err}");
        assert!(!err.contains("panic"), "{args:?}: {err}");
    }
    let o = seed(d, &[missing_path]);
    assert!(stderr(&o).contains("nope: No such file"), "{}", stderr(&o));
}

/// Lowers the child's RLIMIT_NOFILE (soft and hard) to `n` before it runs.
fn with_nofile(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit is async-signal-safe and only reads `lim`, a copy owned by the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn seed_max_open_files_that_leave_no_peers_exit_2() {
    let dir = seed_fixture();
    let d = dir.path();
    let t = d.join("f.torrent");
    let data = d.join("data");
    let args = [
        t.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--shards",
        "2",
        "--max-open-files",
        "40",
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring-bt"));
    cmd.arg("seed")
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--no-resume"]);
    with_nofile(&mut cmd, 128);
    let o = bounded(d, cmd, &args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(o.stdout.is_empty(), "{err}");
    assert_eq!(
        err,
        "error: --max-open-files 40 x 2 shard(s) leaves no descriptors for peers under the \
         open-file limit 128\n"
    );
}

/// Installs a seccomp filter in the child (what systemd's `SystemCallFilter=` with
/// `SystemCallErrorNumber=`, or a container's profile, installs): `io_uring_setup` fails with
/// `errno`, unless its `entries` argument is `allow_entries`; every other call is allowed.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn deny_io_uring_setup(cmd: &mut Command, errno: i32, allow_entries: Option<u32>) {
    use std::os::unix::process::CommandExt;
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    // struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half on little-endian).
    let prog: Vec<libc::sock_filter> = vec![
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 0, 5, ARCH), // another ABI: allow
        op(LD_W_ABS, 0, 0, 0),
        op(JEQ_K, 0, 3, libc::SYS_io_uring_setup as u32), // another call: allow
        op(LD_W_ABS, 0, 0, 16),
        op(JEQ_K, 1, 0, allow_entries.unwrap_or(u32::MAX)), // that many entries: allow
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | errno as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: between fork and exec the closure only makes two prctl calls (async-signal-safe)
    // on `prog`, which the closure owns and which outlives them; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let fprog = libc::sock_fprog {
                len: prog.len() as u16,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// io_uring refused (kernel.io_uring_disabled, seccomp) or no locked memory for a ring: exit 1
/// at once with one line naming the errno and what to check, before the data check; not a
/// panic ("internal error (a bug)") followed by "did not start within 30 s".
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn io_uring_refused_is_one_clear_line_and_exit_1() {
    let dir = seed_fixture();
    let d = dir.path();
    let t = d.join("f.torrent");
    let t = t.to_str().unwrap();
    let data = d.join("data");
    let data = data.to_str().unwrap();
    let out = d.join("out");
    let out = out.to_str().unwrap();
    let no_panic = |err: &str| {
        assert!(
            !err.contains("internal error") && !err.contains("panic"),
            "{err}"
        );
        assert!(!err.contains("within 30 s"), "{err}");
    };
    let seed_args = [t, "--data", data, "--shards", "2"];
    for (errno, name, hint) in [
        (libc::EPERM, "EPERM", "kernel.io_uring_disabled"),
        (libc::ENOMEM, "ENOMEM", "memory"),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring-bt"));
        cmd.arg("seed")
            .args(seed_args)
            .args(["--listen", "127.0.0.1:0", "--no-resume"]);
        deny_io_uring_setup(&mut cmd, errno, None);
        let t0 = std::time::Instant::now();
        let o = bounded(d, cmd, &seed_args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {err}");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{name}: at once"
        );
        assert!(o.stdout.is_empty(), "{name}: never listened: {err}");
        // Before the data check: the only line.
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.starts_with("error: cannot make an io_uring (") && err.contains(name),
            "{name}: {err}"
        );
        assert!(err.contains(hint), "{name}: want `{hint}` in: {err}");
        no_panic(&err);
    }
    // The probe passes (its tiny ring is allowed) but the shards' rings are refused: the shard's
    // failure and its reason, at once.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring-bt"));
    cmd.arg("seed")
        .args(seed_args)
        .args(["--listen", "127.0.0.1:0", "--no-resume"]);
    deny_io_uring_setup(&mut cmd, libc::EPERM, Some(2));
    let o = bounded(d, cmd, &seed_args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(o.stdout.is_empty(), "never listened: {err}");
    assert!(
        err.lines().any(|l| l.starts_with("error: ")
            && l.contains("shard 0")
            && l.contains("cannot make an io_uring (")
            && l.contains("EPERM")),
        "{err}"
    );
    no_panic(&err);
    // `download` asks too, before its shards start.
    let dl_args = [
        "download",
        t,
        "-o",
        out,
        "--peer",
        "127.0.0.1:9",
        "--no-announce",
        "--listen",
        "127.0.0.1:0",
        "--no-resume",
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring-bt"));
    cmd.args(dl_args);
    deny_io_uring_setup(&mut cmd, libc::EPERM, None);
    let o = bounded(d, cmd, &dl_args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: cannot make an io_uring (") && l.contains("EPERM")),
        "{err}"
    );
    no_panic(&err);
}

/// Diagnostics (`tracing`) carry no ANSI colour codes when stderr is not a terminal (a file,
/// the journal), and an empty or blank `RUST_LOG` keeps the default (warnings).
#[test]
fn diagnostics_off_a_terminal_have_no_colour_and_empty_rust_log_keeps_warnings() {
    let dir = seed_fixture();
    let d = dir.path();
    let t = d.join("f.torrent");
    let data = d.join("data");
    // A tracker on a closed loopback port: the announce fails and logs a warning.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tracker = format!("http://127.0.0.1:{port}/announce");
    for rust_log in [None, Some(""), Some("  ")] {
        let err_path = d.join("log.err");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_uring-bt"));
        cmd.arg("seed")
            .arg(&t)
            .arg("--data")
            .arg(&data)
            .args(["--shards", "1", "--listen", "127.0.0.1:0", "--no-resume"])
            .args(["--tracker", &tracker, "--status-interval", "60"])
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap());
        match rust_log {
            Some(v) => cmd.env("RUST_LOG", v),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd.spawn().expect("run uring-bt seed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut err = String::new();
        while std::time::Instant::now() < deadline {
            err = std::fs::read_to_string(&err_path).unwrap_or_default();
            if err.contains("announce failed") || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let stop = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > stop {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.wait();
        let all = std::fs::read_to_string(&err_path).unwrap_or_default();
        assert!(
            err.contains("announce failed") && all.contains("WARN"),
            "RUST_LOG={rust_log:?}: the warning is logged: {all}"
        );
        assert!(
            !all.contains("\x1b["),
            "RUST_LOG={rust_log:?}: no ANSI codes off a terminal: {all:?}"
        );
    }
}

#[test]
fn seed_bad_data_exits_1() {
    let dir = seed_fixture();
    let d = dir.path();
    // Same size, other bytes: every piece fails its check.
    std::fs::write(d.join("data/f.bin"), vec![0u8; 100_000]).unwrap();
    let o = seed(
        d,
        &[
            d.join("f.torrent").to_str().unwrap(),
            "--data",
            d.join("data").to_str().unwrap(),
        ],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(o.stdout.is_empty(), "never listened: {err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: ") && l.contains("7 of 7 pieces are bad or missing")),
        "{err}"
    );
    // Missing data is bad data too, not an input error.
    std::fs::remove_file(d.join("data/f.bin")).unwrap();
    let o = seed(
        d,
        &[
            d.join("f.torrent").to_str().unwrap(),
            "--data",
            d.join("data").to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn download_usage_and_input_errors_exit_2_with_one_line() {
    let dir = seed_fixture();
    let d = dir.path();
    let t = d.join("f.torrent");
    let t = t.to_str().unwrap();
    let out = d.join("out");
    let out = out.to_str().unwrap();
    std::fs::write(d.join("garbage.torrent"), b"hello world").unwrap();
    let garbage = d.join("garbage.torrent");
    let garbage = garbage.to_str().unwrap();
    let l = ["--listen", "127.0.0.1:0", "--no-resume"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![t, "-o", out, "--shards", "0"],
            "--shards must be between 1 and 256",
        ),
        (
            vec![t, "-o", out, "--buffers", "2"],
            "--buffers must be between 8 and 16384",
        ),
        (
            vec![t, "-o", out, "--status-interval", "0"],
            "--status-interval must be between",
        ),
        (
            vec![t, "-o", out, "--snub-timeout", "0"],
            "--snub-timeout must be between",
        ),
        (
            vec![t, "-o", out, "--upload-slots", "0"],
            "--upload-slots must be at least 1",
        ),
        (
            vec![t, "-o", out, "--tracker", "ftp://x/announce"],
            "not an http://, https:// or udp:// URL",
        ),
        (
            vec![t, "-o", out, "--max-download-rate", "0"],
            "the rate must be at least 1",
        ),
        (
            vec![garbage, "-o", out],
            "garbage.torrent: malformed bencode",
        ),
        (
            vec!["magnet:?xt=urn:btih:zz", "-o", out],
            "neither 40 hex digits",
        ),
        (
            vec![
                "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567",
                "-o",
                out,
            ],
            "names no peer",
        ),
    ];
    for (mut args, want) in cases {
        let mut all = vec!["download"];
        all.append(&mut args);
        all.extend_from_slice(&l);
        let o = run(&all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{all:?}: {err}");
        assert!(o.stdout.is_empty(), "{all:?}: nothing on stdout");
        assert!(err.contains(want), "{all:?}: want `{want}` in: {err}");
        assert!(!err.contains("panic"), "{all:?}: {err}");
        let errors = err.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(errors, 1, "{all:?}: one error line: {err}");
    }
    // No -o: clap's own usage error.
    let o = run(&["download", t]);
    assert_eq!(o.status.code(), Some(2));
}

/// `seed` for 3 s under `prlimit --memlock=BYTES` and `setpriv PRIV...` (SIGTERM from
/// `timeout` stops it): stdout and stderr together.
fn seed_with_memlock(dir: &Path, memlock: u64, privs: &[&str]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "TERM", "3", "prlimit"])
        .arg(format!("--memlock={memlock}"))
        .arg("setpriv")
        .args(privs)
        .arg(env!("CARGO_BIN_EXE_uring-bt"))
        .arg("seed")
        .arg(dir.join("f.torrent"))
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--shards", "2", "--listen", "127.0.0.1:0", "--no-resume"]);
    let o = bounded(dir, cmd, &["(memlock)"]);
    format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o))
}

#[test]
fn buffer_pools_are_sized_by_cap_ipc_lock_not_by_the_user_id() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the seeder as another user with and without CAP_IPC_LOCK: run as root"
    );
    let dir = seed_fixture();
    for d in [dir.path(), &dir.path().join("data")] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // Root without CAP_IPC_LOCK (a container's default) is charged: a 2 MiB limit shrinks the
    // pools to (1 MiB - 512 KiB) / 20 KiB = 25 buffers per shard, and they register.
    let out = seed_with_memlock(
        dir.path(),
        2 << 20,
        &["--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock"],
    );
    assert!(
        out.contains("--buffers 256 lowered to 25 per shard by RLIMIT_MEMLOCK")
            && out.contains("(2 shard(s), 25 buffers")
            && !out.contains("registering the buffer pool with io_uring failed"),
        "{out}"
    );
    // Another user granted CAP_IPC_LOCK is not charged: the full pools, even with a limit of 0.
    let out = seed_with_memlock(
        dir.path(),
        0,
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=+ipc_lock",
            "--ambient-caps=+ipc_lock",
        ],
    );
    assert!(
        out.contains("(2 shard(s), 256 buffers")
            && !out.contains("lowered")
            && !out.contains("failed"),
        "{out}"
    );
    // The same user without it, limit 0: no ring can be made, said in one line.
    let out = seed_with_memlock(
        dir.path(),
        0,
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
    );
    assert!(
        out.contains("error: cannot make an io_uring")
            && out.contains("RLIMIT_MEMLOCK (0 bytes) is too low")
            && out.contains("CAP_IPC_LOCK"),
        "{out}"
    );
}

#[test]
fn a_signal_during_the_data_check_stops_with_one_line_and_128_plus_its_number() {
    // 8 GiB of holes under a torrent (4 MiB pieces, hashes that cannot match): the check takes
    // seconds, and the signal comes 300 ms in. Both commands, both signals.
    let dir = tempfile::tempdir().unwrap();
    let len: u64 = 8 << 30;
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::File::create(data.join("big.bin"))
        .unwrap()
        .set_len(len)
        .unwrap();
    let mut t = b"d4:infod6:lengthi".to_vec();
    t.extend(format!("{len}e4:name7:big.bin12:piece lengthi4194304e6:pieces").bytes());
    t.extend(bs(&vec![7u8; (len / 4194304) as usize * 20]));
    t.extend(b"ee");
    let torrent = dir.path().join("big.torrent");
    std::fs::write(&torrent, t).unwrap();
    for (cmd, sig, code) in [
        ("seed", libc::SIGTERM, 143),
        ("seed", libc::SIGINT, 130),
        ("download", libc::SIGTERM, 143),
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_uring-bt"));
        c.arg(cmd).arg(&torrent);
        if cmd == "seed" {
            c.arg("--data").arg(&data).arg("--no-resume");
        } else {
            c.arg("-o")
                .arg(&data)
                .args(["--no-announce", "--peer", "127.0.0.1:9"])
                .env("XDG_STATE_HOME", dir.path().join("state"));
        }
        let child = c
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: kill(2) on the child we spawned and have not waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let started = std::time::Instant::now();
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{cmd}: {err}"
        );
        assert_eq!(out.status.code(), Some(code), "{cmd} {sig}: {err}");
        assert!(
            err.contains("stopped by a signal during the data check"),
            "{cmd}: {err}"
        );
        assert!(
            !err.contains("pieces are bad"),
            "{cmd}: the check ran to its end: {err}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening"),
            "{cmd}"
        );
    }
}
