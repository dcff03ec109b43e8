//! `uring-bt seed` against scripted peers over real loopback sockets: protocol behaviour that
//! real clients never exercise (bad requests, limits, choking), asserted message by message.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use uring_bt_proto::wire::{self, BlockRef, Handshake, Message, OwnedMessage};

const BIN: &str = env!("CARGO_BIN_EXE_uring-bt");

/// A child process killed (by PID) when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
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

struct Fixture {
    _dir: tempfile::TempDir,
    torrent: PathBuf,
    data_dir: PathBuf,
    content: Vec<u8>,
    piece_length: u32,
    info_hash: [u8; 20],
}

/// A single-file torrent of `len` bytes with 32 KiB pieces, made by `uring-bt create`.
fn fixture(len: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let content = data(len, 7);
    std::fs::write(data_dir.join("payload.bin"), &content).unwrap();
    let torrent = dir.path().join("payload.torrent");
    let out = Command::new(BIN)
        .args(["create", "--piece-length", "32768", "-o"])
        .arg(&torrent)
        .arg(data_dir.join("payload.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "create failed: {out:?}");
    let meta = uring_bt::torrent::load::metainfo_from_file(&torrent).unwrap();
    Fixture {
        _dir: dir,
        torrent,
        data_dir,
        content,
        piece_length: 32768,
        info_hash: meta.info_hash,
    }
}

/// Starts the seeder on 127.0.0.1:0 and returns it with its address.
fn start_seeder(f: &Fixture, extra: &[&str]) -> (Proc, SocketAddr) {
    let stderr = std::fs::File::create(f._dir.path().join("seed.err")).unwrap();
    let mut child = Command::new(BIN)
        .arg("seed")
        .arg(&f.torrent)
        .arg("--data")
        .arg(&f.data_dir)
        .arg("--state-dir")
        .arg(f._dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1", "--no-pin"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    let mut byte = [0u8; 1];
    while Instant::now() < deadline {
        match stdout.read(&mut byte) {
            Ok(1) => {
                text.push(byte[0] as char);
                if byte[0] == b'\n' {
                    if let Some(rest) = text
                        .lines()
                        .last()
                        .and_then(|l| l.strip_prefix("listening: "))
                    {
                        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        // Keep draining stdout so the seeder never blocks on a full pipe.
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
                        });
                        return (proc, addr);
                    }
                }
            }
            _ => break,
        }
    }
    panic!("seeder did not print its address; stdout so far: {text:?}");
}

/// A scripted peer speaking the wire protocol with blocking sockets.
struct Scripted {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Scripted {
    fn connect(addr: SocketAddr, info_hash: [u8; 20], fast: bool) -> (Scripted, Handshake) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut h = Handshake::new(info_hash, *b"-XX0001-scriptedpeer");
        if !fast {
            h.reserved = [0; 8];
        }
        let mut out = Vec::new();
        wire::encode_handshake(&h, &mut out);
        let mut sp = Scripted { s, buf: Vec::new() };
        sp.s.write_all(&out).unwrap();
        while sp.buf.len() < wire::HANDSHAKE_LEN {
            sp.fill().expect("seeder closed during handshake");
        }
        let theirs = wire::decode_handshake(&sp.buf).unwrap().unwrap();
        sp.buf.drain(..wire::HANDSHAKE_LEN);
        (sp, theirs)
    }

    fn fill(&mut self) -> Option<()> {
        let mut tmp = [0u8; 65536];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Some(())
            }
        }
    }

    fn send(&mut self, m: &Message<'_>) {
        let mut out = Vec::new();
        wire::encode(m, &mut out);
        self.s.write_all(&out).unwrap();
    }

    /// Next message, or None when the seeder closed the connection.
    fn recv(&mut self) -> Option<OwnedMessage> {
        loop {
            if let Some((m, n)) = wire::decode(&self.buf, wire::MAX_MESSAGE_LEN).unwrap() {
                let owned = m.to_owned_message();
                self.buf.drain(..n);
                return Some(owned);
            }
            self.fill()?;
        }
    }

    /// Reads until a message matching `pred`, skipping others; None if the peer closed.
    fn recv_until(&mut self, mut pred: impl FnMut(&OwnedMessage) -> bool) -> Option<OwnedMessage> {
        for _ in 0..100_000 {
            let m = self.recv()?;
            if pred(&m) {
                return Some(m);
            }
        }
        None
    }

    fn unchoked(&mut self) {
        self.send(&Message::Interested);
        self.recv_until(|m| matches!(m, OwnedMessage::Unchoke))
            .expect("never unchoked");
    }
}

fn piece_hash(f: &Fixture, piece: u32) -> [u8; 20] {
    let start = piece as usize * f.piece_length as usize;
    let end = (start + f.piece_length as usize).min(f.content.len());
    Sha1::digest(&f.content[start..end]).into()
}

#[test]
fn serves_blocks_and_rejects_bad_requests() {
    let f = fixture(300_000); // 10 pieces, the last one short (5,088 bytes)
    let (_seeder, addr) = start_seeder(&f, &["--reqq", "50"]);
    let (mut p, theirs) = Scripted::connect(addr, f.info_hash, true);
    assert_eq!(theirs.info_hash, f.info_hash);
    assert!(theirs.supports_fast());
    // A seed announces itself with HAVE ALL when both sides speak FAST.
    let first = p.recv().unwrap();
    assert!(matches!(first, OwnedMessage::HaveAll), "got {first:?}");

    // While choked: a request is rejected.
    let choked_req = BlockRef {
        piece: 0,
        begin: 0,
        len: 16384,
    };
    p.send(&Message::Request(choked_req));
    let m = p
        .recv_until(|m| matches!(m, OwnedMessage::Reject(_)))
        .unwrap();
    assert!(matches!(m, OwnedMessage::Reject(b) if b == choked_req));

    p.unchoked();
    // A good block: bytes match the source.
    let good = BlockRef {
        piece: 3,
        begin: 16384,
        len: 16384,
    };
    p.send(&Message::Request(good));
    let m = p
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
        .unwrap();
    match m {
        OwnedMessage::Piece { piece, begin, data } => {
            assert_eq!((piece, begin), (3, 16384));
            let off = 3 * 32768 + 16384;
            assert_eq!(&data[..], &f.content[off..off + 16384]);
        }
        _ => unreachable!(),
    }
    // Each bad request gets a REJECT naming it, and the connection lives on.
    let bad = [
        BlockRef {
            piece: 10,
            begin: 0,
            len: 16384,
        }, // piece out of range
        BlockRef {
            piece: 0,
            begin: 0,
            len: 0,
        }, // length 0
        BlockRef {
            piece: 0,
            begin: 0,
            len: 16385,
        }, // above 16 KiB
        BlockRef {
            piece: 0,
            begin: 16384,
            len: 16385,
        }, // past the piece end
        BlockRef {
            piece: 9,
            begin: 4096,
            len: 4096,
        }, // past the short last piece's end
    ];
    for b in bad {
        p.send(&Message::Request(b));
        let m = p
            .recv_until(|m| matches!(m, OwnedMessage::Reject(_)))
            .unwrap_or_else(|| panic!("closed instead of rejecting {b:?}"));
        assert!(
            matches!(m, OwnedMessage::Reject(r) if r == b),
            "{m:?} for {b:?}"
        );
    }
    // The last piece, short, whole: its hash matches.
    let last = BlockRef {
        piece: 9,
        begin: 0,
        len: 300_000 - 9 * 32768,
    };
    p.send(&Message::Request(last));
    let m = p
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
        .unwrap();
    if let OwnedMessage::Piece { data, .. } = m {
        let h: [u8; 20] = Sha1::digest(&data).into();
        assert_eq!(h, piece_hash(&f, 9));
    }
}

#[test]
fn request_flood_beyond_reqq_is_refused_and_others_are_served() {
    let f = fixture(1 << 20); // 32 pieces
    let (_seeder, addr) = start_seeder(&f, &["--reqq", "16"]);
    let (mut flooder, _) = Scripted::connect(addr, f.info_hash, true);
    flooder.recv().unwrap();
    flooder.unchoked();
    // 200 requests at once, far beyond reqq = 16: the excess is rejected (or the peer dropped).
    let mut out = Vec::new();
    for i in 0..200u32 {
        let b = BlockRef {
            piece: i % 32,
            begin: (i / 32 % 2) * 16384,
            len: 16384,
        };
        wire::encode(&Message::Request(b), &mut out);
    }
    flooder.s.write_all(&out).unwrap();
    let mut pieces = 0;
    let mut rejects = 0;
    while pieces + rejects < 200 {
        match flooder.recv() {
            Some(OwnedMessage::Piece { .. }) => pieces += 1,
            Some(OwnedMessage::Reject(_)) => rejects += 1,
            Some(_) => {}
            None => break, // disconnected for abuse: also a valid answer
        }
    }
    assert!(
        rejects > 0 || pieces + rejects < 200,
        "no request was refused: {pieces} pieces"
    );
    assert!(pieces <= 200 - rejects);

    // Another peer is served normally meanwhile.
    let (mut good, _) = Scripted::connect(addr, f.info_hash, true);
    good.recv().unwrap();
    good.unchoked();
    for piece in [0u32, 31] {
        for begin in [0u32, 16384] {
            good.send(&Message::Request(BlockRef {
                piece,
                begin,
                len: 16384,
            }));
            let m = good
                .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
                .unwrap();
            if let OwnedMessage::Piece { data, .. } = m {
                let off = piece as usize * 32768 + begin as usize;
                assert_eq!(&data[..], &f.content[off..off + 16384]);
            }
        }
    }
}

#[test]
fn without_fast_a_seed_sends_a_full_bitfield() {
    let f = fixture(300_000);
    let (_seeder, addr) = start_seeder(&f, &[]);
    let (mut p, theirs) = Scripted::connect(addr, f.info_hash, false);
    assert_eq!(theirs.info_hash, f.info_hash);
    match p.recv().unwrap() {
        OwnedMessage::Bitfield(bits) => {
            assert_eq!(bits.len(), 2); // 10 pieces
            assert_eq!(bits[0], 0xff);
            assert_eq!(bits[1], 0b1100_0000); // spare bits clear
        }
        m => panic!("expected a bitfield, got {m:?}"),
    }
}

#[test]
fn unknown_info_hash_and_garbage_are_dropped_and_seeder_keeps_serving() {
    let f = fixture(100_000);
    let (_seeder, addr) = start_seeder(&f, &[]);
    // Unknown info hash: closed without a handshake back.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut out = Vec::new();
    wire::encode_handshake(&Handshake::new([9; 20], [1; 20]), &mut out);
    s.write_all(&out).unwrap();
    let mut tmp = [0u8; 128];
    assert_eq!(s.read(&mut tmp).unwrap_or(0), 0);
    // Garbage instead of a handshake: closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[0xffu8; 68]).unwrap();
    assert_eq!(s.read(&mut tmp).unwrap_or(0), 0);
    // An oversized length prefix after a good handshake: disconnected.
    let (mut p, _) = Scripted::connect(addr, f.info_hash, true);
    p.s.write_all(&[0x7f, 0xff, 0xff, 0xff, 7]).unwrap();
    assert!(p.recv_until(|_| false).is_none());
    // And a well-behaved peer still gets served.
    let (mut q, _) = Scripted::connect(addr, f.info_hash, true);
    q.recv().unwrap();
    q.unchoked();
    q.send(&Message::Request(BlockRef {
        piece: 0,
        begin: 0,
        len: 16384,
    }));
    assert!(q
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
        .is_some());
}

#[test]
fn handshake_timeout_closes_silent_connections() {
    let f = fixture(100_000);
    let (_seeder, addr) = start_seeder(&f, &["--handshake-timeout", "1"]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let mut tmp = [0u8; 16];
    // Say nothing: the seeder closes us (EOF) well before our 30 s read timeout.
    let n = s.read(&mut tmp).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[test]
fn choker_unchokes_up_to_slots_and_rotates() {
    let f = fixture(100_000);
    // One regular slot: the first interested peer is unchoked at once, the second waits for the
    // optimistic unchoke or a rotation.
    let (_seeder, addr) = start_seeder(&f, &["--upload-slots", "1"]);
    let (mut a, _) = Scripted::connect(addr, f.info_hash, true);
    a.recv().unwrap();
    a.unchoked();
    let (mut b, _) = Scripted::connect(addr, f.info_hash, true);
    b.recv().unwrap();
    b.send(&Message::Interested);
    // b is unchoked by the optimistic slot (filled at once when free) or within a rechoke period.
    let m = b.recv_until(|m| matches!(m, OwnedMessage::Unchoke));
    assert!(m.is_some(), "second peer never unchoked");
    // A third interested peer must wait: both slots (regular + optimistic) are taken, so within
    // a couple of seconds it gets no UNCHOKE.
    let (mut c, _) = Scripted::connect(addr, f.info_hash, true);
    c.recv().unwrap();
    c.send(&Message::Interested);
    c.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let early = c.recv_until(|m| matches!(m, OwnedMessage::Unchoke));
    assert!(
        early.is_none(),
        "third peer unchoked although every slot was taken"
    );
    // Rotation: within a rechoke period or two (10 s each), c is unchoked and someone is choked.
    c.s.set_read_timeout(Some(Duration::from_secs(35))).unwrap();
    let later = c.recv_until(|m| matches!(m, OwnedMessage::Unchoke));
    assert!(later.is_some(), "third peer never got a turn");
}

/// What the seeder printed on stderr so far.
fn seeder_stderr(f: &Fixture) -> String {
    std::fs::read_to_string(f._dir.path().join("seed.err")).unwrap()
}

#[test]
fn resume_data_skips_the_check_until_a_file_changes() {
    let f = fixture(300_000);
    // First start: full check, resume data written.
    let (s1, _) = start_seeder(&f, &[]);
    drop(s1);
    let err = seeder_stderr(&f);
    assert!(err.contains("checked payload.bin: 10 pieces good"), "{err}");
    let state = f._dir.path().join("state");
    let resume = std::fs::read_dir(&state).unwrap().count();
    assert_eq!(resume, 1, "one resume file expected in {state:?}");
    // Second start: the resume data matches, no check.
    let (s2, addr) = start_seeder(&f, &[]);
    let err = seeder_stderr(&f);
    assert!(err.contains("resume data matches"), "{err}");
    // ...and it serves correct bytes.
    let (mut p, _) = Scripted::connect(addr, f.info_hash, true);
    p.recv().unwrap();
    p.unchoked();
    p.send(&Message::Request(BlockRef {
        piece: 1,
        begin: 0,
        len: 16384,
    }));
    match p
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
        .unwrap()
    {
        OwnedMessage::Piece { data, .. } => assert_eq!(&data[..], &f.content[32768..49152]),
        _ => unreachable!(),
    }
    drop(s2);
    // A file rewritten (new mtime): checked again.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(f.data_dir.join("payload.bin"), &f.content).unwrap();
    let (s3, _) = start_seeder(&f, &[]);
    let err = seeder_stderr(&f);
    assert!(
        err.contains("changed since the resume data was written"),
        "{err}"
    );
    assert!(err.contains("checked payload.bin: 10 pieces good"), "{err}");
    drop(s3);
    // Corrupt data with a stale resume file: the check finds it and the seeder refuses to start.
    let mut bad = f.content.clone();
    bad[40_000] ^= 0xff;
    std::fs::write(f.data_dir.join("payload.bin"), &bad).unwrap();
    let out = Command::new(BIN)
        .arg("seed")
        .arg(&f.torrent)
        .arg("--data")
        .arg(&f.data_dir)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 of 10 pieces are bad"), "{err}");
}

#[test]
fn skip_check_verifies_lazily_and_never_sends_a_bad_piece() {
    lazy_check_never_sends_a_bad_piece(&[]);
}

#[test]
fn splice_path_verifies_lazily_and_never_sends_a_bad_piece() {
    lazy_check_never_sends_a_bad_piece(&["--send-path", "splice"]);
}

fn lazy_check_never_sends_a_bad_piece(extra: &[&str]) {
    let f = fixture(300_000);
    let mut bad = f.content.clone();
    bad[2 * 32768 + 100] ^= 0xff; // piece 2 is corrupt on disk
    std::fs::write(f.data_dir.join("payload.bin"), &bad).unwrap();
    let mut args = vec!["--skip-check"];
    args.extend_from_slice(extra);
    let (_s, addr) = start_seeder(&f, &args);
    let (mut p, _) = Scripted::connect(addr, f.info_hash, true);
    p.recv().unwrap();
    p.unchoked();
    let good = BlockRef {
        piece: 1,
        begin: 0,
        len: 16384,
    };
    p.send(&Message::Request(good));
    match p
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. } | OwnedMessage::Reject(_)))
        .unwrap()
    {
        OwnedMessage::Piece { data, .. } => assert_eq!(&data[..], &f.content[32768..49152]),
        m => panic!("good piece refused: {m:?}"),
    }
    let corrupt = BlockRef {
        piece: 2,
        begin: 0,
        len: 16384,
    };
    p.send(&Message::Request(corrupt));
    match p
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. } | OwnedMessage::Reject(_)))
        .unwrap()
    {
        OwnedMessage::Reject(b) => assert_eq!(b, corrupt),
        m => panic!("a piece that fails its hash was sent: {m:?}"),
    }
}

#[test]
fn seed_path_makes_the_torrent_then_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let a = data(70_000, 1);
    let b = data(5, 2);
    std::fs::write(tree.join("a.bin"), &a).unwrap();
    std::fs::write(tree.join("sub/deeper/b.bin"), &b).unwrap();
    let out_torrent = dir.path().join("made.torrent");
    let mut child = Command::new(BIN)
        .arg("seed")
        .arg(&tree)
        .arg("-o")
        .arg(&out_torrent)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1", "--no-pin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let _guard = Proc(child);
    let mut text = String::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !text.contains("magnet:") {
        match stdout.read(&mut byte) {
            Ok(1) => text.push(byte[0] as char),
            _ => break,
        }
    }
    while Instant::now() < deadline && !text.ends_with('\n') {
        match stdout.read(&mut byte) {
            Ok(1) => text.push(byte[0] as char),
            _ => break,
        }
    }
    let addr: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listening: "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listening line in {text:?}"));
    // The torrent was written where -o said, and names the tree.
    let meta = uring_bt::torrent::load::metainfo_from_file(&out_torrent).unwrap();
    assert_eq!(meta.name, "tree");
    assert_eq!(meta.total_length, 70_005);
    let magnet = text.lines().find(|l| l.starts_with("magnet:")).unwrap();
    assert!(magnet.contains(&uring_bt_proto::metainfo::hex(&meta.info_hash)));
    assert!(magnet.contains("x.pe=127.0.0.1:"), "{magnet}");
    // It serves the last block, which spans both files (a.bin's tail and b.bin).
    let (mut p, _) = Scripted::connect(addr, meta.info_hash, true);
    p.recv().unwrap();
    p.unchoked();
    let pl = meta.piece_length;
    let last = meta.num_pieces() - 1;
    let last_len = (70_005 - u64::from(last) * u64::from(pl)) as u32;
    p.send(&Message::Request(BlockRef {
        piece: last,
        begin: 0,
        len: last_len.min(16384),
    }));
    match p
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
        .unwrap()
    {
        OwnedMessage::Piece { data: got, .. } => {
            let mut all = a.clone();
            all.extend_from_slice(&b);
            let off = last as usize * pl as usize;
            assert_eq!(&got[..], &all[off..off + got.len()]);
        }
        _ => unreachable!(),
    }
}

#[test]
fn several_torrents_in_one_process() {
    let f = fixture(200_000);
    // A second torrent in the same data directory.
    let other = data(150_000, 99);
    std::fs::write(f.data_dir.join("other.bin"), &other).unwrap();
    let t2 = f._dir.path().join("other.torrent");
    let out = Command::new(BIN)
        .args(["create", "--piece-length", "16384", "-o"])
        .arg(&t2)
        .arg(f.data_dir.join("other.bin"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let m2 = uring_bt::torrent::load::metainfo_from_file(&t2).unwrap();
    let t2s = t2.to_str().unwrap().to_string();
    let (_s, addr) = start_seeder(&f, &[t2s.as_str()]);
    for (hash, content, pl) in [
        (f.info_hash, &f.content, 32768usize),
        (m2.info_hash, &other, 16384usize),
    ] {
        let (mut p, theirs) = Scripted::connect(addr, hash, true);
        assert_eq!(theirs.info_hash, hash);
        p.recv().unwrap();
        p.unchoked();
        p.send(&Message::Request(BlockRef {
            piece: 2,
            begin: 0,
            len: 16384,
        }));
        match p
            .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
            .unwrap()
        {
            OwnedMessage::Piece { data, .. } => {
                assert_eq!(&data[..], &content[2 * pl..2 * pl + 16384])
            }
            _ => unreachable!(),
        }
    }
    let err = seeder_stderr(&f);
    assert!(
        err.contains("checked payload.bin") && err.contains("checked other.bin"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile peers: memory and descriptors stay within what the configuration implies.

/// A number from /proc/<pid>/status (kB), e.g. "VmHWM".
fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// The inode of the seeder's socket of the loopback connection from our port `remote` to its
/// port `local`.
fn socket_inode(local: u16, remote: u16) -> Option<String> {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    tcp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
        (f.len() > 9 && port(f[1]) == Some(local) && port(f[2]) == Some(remote))
            .then(|| f[9].to_string())
    })
}

/// Whether process `pid` holds a descriptor of socket `inode`.
fn holds_socket(pid: u32, inode: &str) -> bool {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| l.to_string_lossy() == want)
}

/// The seeder's descriptors once it is idle: its control plane's runtime starts after the
/// `listening:` line, so wait until the count has been steady for half a second.
fn idle_fds(pid: u32) -> usize {
    let mut last = open_fds(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = open_fds(pid);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[derive(Clone, Copy, Debug)]
enum Abuse {
    /// Valid REQUEST + CANCEL pairs: with FAST each is answered by a REJECT. Never reads.
    RequestCancel,
    /// Valid REQUESTs for every block, again and again. Never reads a PIECE.
    RequestNeverRead,
    /// INTERESTED / NOT INTERESTED as fast as it can. Never reads.
    InterestFlip,
}

/// A hostile peer: handshake, then `abuse` until `until` or until the seeder closes the
/// connection (a write fails). Its receive buffer is small and it never reads. Returns whether
/// the seeder closed it.
fn hostile(addr: SocketAddr, info_hash: [u8; 20], abuse: Abuse, until: Instant) -> bool {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    let mut out = Vec::new();
    wire::encode_handshake(
        &Handshake::new(info_hash, *b"-XX0001-hostilepeer!"),
        &mut out,
    );
    wire::encode(&Message::Interested, &mut out);
    s.write_all(&out).unwrap();
    // Read until our UNCHOKE (so the abuse is valid, not requests while choked), then never
    // read again.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Vec::new();
    let unchoke = [0u8, 0, 0, 1, 1];
    while !seen.windows(5).any(|w| w == unchoke) {
        let mut b = [0u8; 4096];
        match s.read(&mut b) {
            Ok(0) | Err(_) => panic!("hostile peer closed before its UNCHOKE"),
            Ok(n) => seen.extend_from_slice(&b[..n]),
        }
    }
    s.set_nonblocking(true).unwrap();
    let mut chunk = Vec::new();
    // 1,500 blocks (24 MiB): more than socket buffers hold, fewer than the default reqq (2000).
    let n = if let Abuse::RequestNeverRead = abuse {
        1500
    } else {
        512
    };
    for i in 0..n {
        let b = BlockRef {
            piece: i % 64,
            begin: 0,
            len: 16384,
        };
        match abuse {
            Abuse::RequestCancel => {
                wire::encode(&Message::Request(b), &mut chunk);
                wire::encode(&Message::Cancel(b), &mut chunk);
            }
            Abuse::RequestNeverRead => {
                // Within reqq (no strike): the abuse is only that it never reads the PIECEs.
                wire::encode(&Message::Request(b), &mut chunk);
            }
            Abuse::InterestFlip => {
                wire::encode(&Message::NotInterested, &mut chunk);
                wire::encode(&Message::Interested, &mut chunk);
            }
        }
    }
    if let Abuse::RequestNeverRead = abuse {
        // One burst of requests, then keep-alives (no reply) until the seeder drops us.
        s.set_nonblocking(false).unwrap();
        s.write_all(&chunk).unwrap();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
            if s.write_all(&[0, 0, 0, 0]).is_err() {
                return true;
            }
        }
        return false;
    }
    let mut at = 0;
    while Instant::now() < until {
        match s.write(&chunk[at..]) {
            Ok(n) => at = (at + n) % chunk.len(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return true, // reset or broken pipe: the seeder dropped us
        }
    }
    false
}

/// An honest peer downloads every piece (16 requests in flight) and checks each hash.
fn download_all(addr: SocketAddr, f: &Fixture) -> Duration {
    let started = Instant::now();
    let (mut p, _) = Scripted::connect(addr, f.info_hash, true);
    p.recv().unwrap();
    p.unchoked();
    let n = f.content.len().div_ceil(f.piece_length as usize) as u32;
    let blocks: Vec<BlockRef> = (0..n)
        .flat_map(|piece| {
            let size = (f.content.len() - piece as usize * f.piece_length as usize)
                .min(f.piece_length as usize) as u32;
            (0..size.div_ceil(16384)).map(move |k| BlockRef {
                piece,
                begin: k * 16384,
                len: (size - k * 16384).min(16384),
            })
        })
        .collect();
    let mut got = vec![0u8; f.content.len()];
    let mut next = 0;
    let mut done = 0;
    while done < blocks.len() {
        while next < blocks.len() && next - done < 16 {
            p.send(&Message::Request(blocks[next]));
            next += 1;
        }
        match p.recv().expect("honest peer disconnected") {
            OwnedMessage::Piece { piece, begin, data } => {
                let off = piece as usize * f.piece_length as usize + begin as usize;
                got[off..off + data.len()].copy_from_slice(&data);
                done += 1;
            }
            OwnedMessage::Reject(b) => panic!("honest request refused: {b:?}"),
            _ => {}
        }
    }
    for piece in 0..n {
        let start = piece as usize * f.piece_length as usize;
        let end = (start + f.piece_length as usize).min(f.content.len());
        assert_eq!(
            <[u8; 20]>::from(Sha1::digest(&got[start..end])),
            piece_hash(f, piece),
            "piece {piece} corrupt"
        );
    }
    started.elapsed()
}

/// The per-process memory bound of `docs/architecture.md` ("Memory and descriptor bounds"), in
/// KiB, for one shard of `buffers` pool buffers and `peers` connections of a torrent with
/// `num_pieces` pieces, over the seeder's resident size before any peer connected (`base`):
/// every pool buffer (20 KiB), and per peer its receive buffer (2 x (max message + 4 + 4 KiB)),
/// two control buffers of at most 2 x max_control each (capacity doubling; max_control as
/// `SessionConfig::max_control_bytes` with `max_in_flight` = 2 x batch and the write timeout in
/// seconds), its request queue (2 x (2 x reqq + 1) x 12 bytes) and maps (2 x reqq x 48 bytes),
/// and 16 KiB for its slot, session and tasks; plus the allocator's slack (4 MiB: arenas and
/// fragmentation).
fn memory_bound_kib(
    base: u64,
    buffers: u64,
    peers: u64,
    num_pieces: u64,
    reqq: u64,
    batch: u64,
    write_timeout: u64,
) -> u64 {
    let max_msg = (16384 + 9).max(1 + num_pieces.div_ceil(8));
    let opening = 68 + 5 + num_pieces.div_ceil(8) + 128 + 14;
    let while_paused = 17 * (reqq + 2 * batch) + 5 * (2 * write_timeout.div_ceil(10) + 2);
    let max_control = 16384 + 16 + opening.max(while_paused);
    let per_peer = 2 * (max_msg + 4 + 4096)
        + 2 * 2 * max_control
        + 2 * (2 * reqq + 1) * 12
        + 2 * reqq * 48
        + 16384;
    base + buffers * 20 + peers * per_peer.div_ceil(1024) + 4096
}

#[test]
fn peers_that_never_read_cannot_grow_the_seeder_and_an_honest_peer_is_served() {
    never_read_peers_are_bounded(&[]);
}

/// The same through the splice send path with two pipes per shard: the peers that never read
/// hold pipes (their splices wait in io-wq on a full socket) until the write timeout, and the
/// honest peer is still served in full.
#[test]
fn splice_path_peers_that_never_read_cannot_grow_the_seeder_and_an_honest_peer_is_served() {
    never_read_peers_are_bounded(&["--send-path", "splice", "--splice-pipes", "2"]);
}

fn never_read_peers_are_bounded(extra: &[&str]) {
    let f = fixture(8 << 20); // 256 pieces of 32 KiB
    let mut args = vec!["--buffers", "64", "--write-timeout", "4", "--reqq", "2000"];
    args.extend_from_slice(extra);
    let (seeder, addr) = start_seeder(&f, &args);
    let pid = seeder.0.id();
    // Alone, the honest download takes this long.
    let alone = download_all(addr, &f);
    let base = proc_status_kib(pid, "VmRSS");
    let until = Instant::now() + Duration::from_secs(12);
    let abuses = [
        Abuse::RequestCancel,
        Abuse::RequestCancel,
        Abuse::RequestNeverRead,
        Abuse::RequestNeverRead,
        Abuse::InterestFlip,
        Abuse::InterestFlip,
    ];
    let hostiles: Vec<_> = abuses
        .iter()
        .map(|&a| {
            let ih = f.info_hash;
            std::thread::spawn(move || hostile(addr, ih, a, until))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // An honest peer beside them is served in full, with correct bytes.
    let beside = download_all(addr, &f);
    let dropped: Vec<bool> = hostiles.into_iter().map(|h| h.join().unwrap()).collect();
    let hwm = proc_status_kib(pid, "VmHWM");
    let bound = memory_bound_kib(base, 64, abuses.len() as u64 + 1, 256, 2000, 32, 4);
    eprintln!(
        "honest download alone {alone:?}, beside {} hostile peers {beside:?}; seeder RSS before \
         {base} KiB, peak {hwm} KiB (bound {bound} KiB); hostile peers dropped: {dropped:?}",
        abuses.len()
    );
    assert!(
        hwm <= bound,
        "peak RSS {hwm} KiB above the documented bound {bound} KiB"
    );
    // The peers that stopped reading stalled our writes and were dropped by the write timeout
    // (4 s), well before the 12 s they kept going.
    for (abuse, d) in abuses.iter().zip(&dropped) {
        if !matches!(abuse, Abuse::InterestFlip) {
            assert!(*d, "{abuse:?} peer was never dropped");
        }
    }
    assert!(
        beside < alone * 10 + Duration::from_secs(5),
        "honest peer slowed from {alone:?} to {beside:?}"
    );
}

#[test]
fn connection_flood_and_slowloris_are_bounded_by_max_peers_and_the_handshake_timeout() {
    let f = fixture(1 << 20);
    let (seeder, addr) = start_seeder(&f, &["--max-peers", "40", "--handshake-timeout", "2"]);
    let pid = seeder.0.id();
    let fds_idle = idle_fds(pid);
    // 300 connections as fast as we can; each sends half a handshake and then nothing.
    let mut conns = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                let _ = s.write_all(&[19u8; 30]);
                conns.push(s);
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let fds_flood = open_fds(pid);
    assert!(
        fds_flood <= fds_idle + 40,
        "seeder holds {fds_flood} descriptors (idle {fds_idle}, --max-peers 40)"
    );
    // Every half-handshake connection is closed by the handshake timeout.
    let deadline = Instant::now() + Duration::from_secs(15);
    for s in &mut conns {
        s.set_read_timeout(Some(
            deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(10),
        ))
        .unwrap();
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {} // reset
            other => panic!("slowloris connection still open: {other:?}"),
        }
    }
    drop(conns);
    // The seeder notices the closes on its next reads; give it a few seconds on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds(pid) > fds_idle + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        open_fds(pid) <= fds_idle + 1,
        "seeder still holds {} descriptors (idle {fds_idle})",
        open_fds(pid)
    );
    // And an honest peer is served afterwards.
    download_all(addr, &f);
}

#[test]
fn a_file_truncated_under_the_seeder_stops_its_pieces_without_a_log_storm_until_restored() {
    // Two files: a.bin (pieces 0..4) and b.bin (pieces 4..8), 32 KiB pieces.
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("data").join("two");
    std::fs::create_dir_all(&content).unwrap();
    let a = data(4 * 32768, 1);
    let b = data(4 * 32768, 2);
    std::fs::write(content.join("a.bin"), &a).unwrap();
    std::fs::write(content.join("b.bin"), &b).unwrap();
    let torrent = dir.path().join("two.torrent");
    let out = Command::new(BIN)
        .args(["create", "--piece-length", "32768", "-o"])
        .arg(&torrent)
        .arg(&content)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let meta = uring_bt::torrent::load::metainfo_from_file(&torrent).unwrap();
    let f = Fixture {
        torrent,
        data_dir: dir.path().join("data"),
        content: [a.clone(), b].concat(),
        piece_length: 32768,
        info_hash: meta.info_hash,
        _dir: dir,
    };
    let (_seeder, addr) = start_seeder(&f, &["--status-interval", "1"]);
    let (mut p, _) = Scripted::connect(addr, f.info_hash, true);
    p.recv().unwrap();
    p.unchoked();
    let req = |piece: u32, begin: u32| BlockRef {
        piece,
        begin,
        len: 16384,
    };
    p.send(&Message::Request(req(5, 0)));
    assert!(matches!(
        p.recv_until(|m| matches!(m, OwnedMessage::Piece { .. })),
        Some(OwnedMessage::Piece { piece: 5, .. })
    ));
    // b.bin shrinks to 1 KiB while we seed.
    std::fs::OpenOptions::new()
        .write(true)
        .open(f.data_dir.join("two/b.bin"))
        .unwrap()
        .set_len(1024)
        .unwrap();
    // Fifty requests for b.bin's pieces: each REJECTed, none answered with data, no disconnect.
    for i in 0..50u32 {
        p.send(&Message::Request(req(4 + i % 4, (i / 4 % 2) * 16384)));
    }
    let mut rejects = 0;
    while rejects < 50 {
        match p.recv().expect("disconnected") {
            OwnedMessage::Reject(_) => rejects += 1,
            OwnedMessage::Piece { piece, .. } => panic!("served piece {piece} of a short file"),
            _ => {}
        }
    }
    // a.bin is still served, with the right bytes.
    p.send(&Message::Request(req(1, 16384)));
    match p.recv_until(|m| matches!(m, OwnedMessage::Piece { .. })) {
        Some(OwnedMessage::Piece { piece: 1, data, .. }) => {
            assert_eq!(&data[..], &a[32768 + 16384..65536])
        }
        other => panic!("{other:?}"),
    }
    // The status line names the error; the log has it once, not once per request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seeder_stderr(&f).contains("ERROR") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let err = seeder_stderr(&f);
    assert!(
        err.lines().any(|l| l.starts_with("status: ")
            && l.contains("ERROR")
            && l.contains("b.bin")
            && l.contains("4 of 8 pieces unavailable")),
        "{err}"
    );
    let logged = err.lines().filter(|l| l.contains("storage:")).count();
    assert_eq!(logged, 1, "{err}");
    // A new peer is offered only what can be served: a BITFIELD without b.bin's pieces.
    let (mut q, _) = Scripted::connect(addr, f.info_hash, true);
    assert_eq!(q.recv().unwrap(), OwnedMessage::Bitfield(vec![0xF0]));
    q.unchoked();

    // b.bin is restored: within the rescan (5 s) its pieces are offered again (HAVE to the
    // peer that was offered the bitfield without them), checked, and served; the ERROR clears.
    let b = &f.content[4 * 32768..];
    std::fs::write(f.data_dir.join("two/b.bin"), b).unwrap();
    let mut haves = Vec::new();
    while haves.len() < 4 {
        match q.recv().expect("disconnected before the HAVEs") {
            OwnedMessage::Have(p) => haves.push(p),
            OwnedMessage::KeepAlive => {}
            other => panic!("{other:?}"),
        }
    }
    haves.sort_unstable();
    assert_eq!(haves, vec![4, 5, 6, 7]);
    q.send(&Message::Request(req(6, 16384)));
    match q.recv_until(|m| matches!(m, OwnedMessage::Piece { .. } | OwnedMessage::Reject(_))) {
        Some(OwnedMessage::Piece { piece: 6, data, .. }) => {
            assert_eq!(&data[..], &b[2 * 32768 + 16384..3 * 32768])
        }
        other => panic!("{other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let cleared = loop {
        let err = seeder_stderr(&f);
        let last = err.lines().rev().find(|l| l.starts_with("status: "));
        if last.is_some_and(|l| !l.contains("ERROR")) && err.contains("b.bin changed") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(cleared, "{}", seeder_stderr(&f));
    // And a new peer is offered every piece again.
    let (mut r, _) = Scripted::connect(addr, f.info_hash, true);
    assert!(matches!(
        r.recv().unwrap(),
        OwnedMessage::HaveAll | OwnedMessage::Bitfield(_)
    ));
}

#[test]
fn a_peer_closing_while_the_pool_is_exhausted_is_released_at_once() {
    let f = fixture(4 << 20);
    // One buffer in all (a stalled send holds at least the frame it is stuck in); a stalled
    // write is cut after 6 s.
    let (seeder, addr) = start_seeder(
        &f,
        &["--buffers", "1", "--batch", "1", "--write-timeout", "6"],
    );
    let pid = seeder.0.id();
    let fds_idle = idle_fds(pid);
    // A: requests a lot and never reads: its stalled sends hold the pool.
    let until = Instant::now() + Duration::from_secs(15);
    let ih = f.info_hash;
    let a = std::thread::spawn(move || hostile(addr, ih, Abuse::RequestNeverRead, until));
    std::thread::sleep(Duration::from_millis(1500));
    // B: asks for a block, which waits for a buffer, then hangs up.
    let (mut b, _) = Scripted::connect(addr, f.info_hash, true);
    b.recv().unwrap();
    b.unchoked();
    b.send(&Message::Request(BlockRef {
        piece: 3,
        begin: 0,
        len: 16384,
    }));
    // It is not served: A's stalled send holds the only buffer.
    b.s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(b
        .recv_until(|m| matches!(m, OwnedMessage::Piece { .. }))
        .is_none());
    let b_port = b.s.local_addr().unwrap().port();
    let inode = socket_inode(addr.port(), b_port).expect("the seeder's socket of B");
    assert!(holds_socket(pid, &inode));
    drop(b);
    // B's descriptor is released within a second, although the pool is still empty: A's write
    // timeout has not fired yet.
    let t = Instant::now();
    while holds_socket(pid, &inode) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !holds_socket(pid, &inode) && t.elapsed() < Duration::from_secs(1),
        "the seeder kept the closed peer's descriptor for {:?} ({} fds, {fds_idle} idle)",
        t.elapsed(),
        open_fds(pid)
    );
    // A is dropped by the write timeout, and a new peer is served.
    assert!(
        a.join().unwrap(),
        "the peer that never reads was not dropped"
    );
    download_all(addr, &f);
}

#[test]
fn data_altered_under_the_seeder_is_checked_again_and_never_sent() {
    let f = fixture(300_000); // 10 pieces of 32 KiB
    let (_seeder, addr) = start_seeder(&f, &[]);
    let (mut p, _) = Scripted::connect(addr, f.info_hash, true);
    p.recv().unwrap();
    p.unchoked();
    let req = |piece: u32| BlockRef {
        piece,
        begin: 0,
        len: 16384,
    };
    p.send(&Message::Request(req(2)));
    assert!(matches!(
        p.recv_until(|m| matches!(m, OwnedMessage::Piece { .. })),
        Some(OwnedMessage::Piece { piece: 2, .. })
    ));
    // One byte of piece 2 changes on disk (same size, new mtime).
    std::thread::sleep(Duration::from_millis(20));
    let path = f.data_dir.join("payload.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * 32768 + 100] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    // The read that follows sees the new mtime: what it read is not sent, the file's pieces are
    // checked again, piece 2 no longer matches its hash and is refused; never is the changed
    // byte sent. An unchanged piece of the same file is checked again and still served.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        p.send(&Message::Request(req(2)));
        match p.recv_until(|m| matches!(m, OwnedMessage::Piece { .. } | OwnedMessage::Reject(_))) {
            Some(OwnedMessage::Reject(_)) => break,
            Some(OwnedMessage::Piece { data, .. }) => {
                assert_eq!(
                    &data[..],
                    &f.content[2 * 32768..2 * 32768 + 16384],
                    "a changed byte was sent"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the change was never noticed");
        std::thread::sleep(Duration::from_millis(200));
    }
    p.send(&Message::Request(req(3)));
    match p.recv_until(|m| matches!(m, OwnedMessage::Piece { .. } | OwnedMessage::Reject(_))) {
        Some(OwnedMessage::Piece { piece: 3, data, .. }) => {
            assert_eq!(&data[..], &f.content[3 * 32768..3 * 32768 + 16384])
        }
        other => panic!("unchanged piece 3 not served: {other:?}"),
    }
    let err = seeder_stderr(&f);
    assert!(err.contains("changed under the seeder"), "{err}");
}

/// Sends our BEP 10 handshake: `ut_metadata` as 3 and `ut_pex` as 4, listening on `port`.
fn send_ext_handshake(p: &mut Scripted, port: u16) {
    let mut ext = wire::ExtHandshake {
        p: Some(port),
        ..wire::ExtHandshake::default()
    };
    ext.m.insert("ut_metadata".into(), 3);
    ext.m.insert("ut_pex".into(), 4);
    let payload = ext.encode();
    p.send(&Message::Extended {
        id: 0,
        payload: &payload,
    });
}

/// The seeder's extension handshake (skipping what comes before it).
fn their_ext_handshake(p: &mut Scripted) -> wire::ExtHandshake {
    match p.recv_until(|m| matches!(m, OwnedMessage::Extended { id: 0, .. })) {
        Some(OwnedMessage::Extended { payload, .. }) => {
            wire::ExtHandshake::decode(&payload).expect("a valid extension handshake")
        }
        other => panic!("no extension handshake: {other:?}"),
    }
}

#[test]
fn metadata_is_served_in_pieces_and_pex_lists_the_swarm() {
    use uring_bt_proto::ext::{self, MetadataMsg};
    let f = fixture(300_000);
    let (_seeder, addr) = start_seeder(&f, &[]);
    let meta = uring_bt::torrent::load::metainfo_from_file(&f.torrent).unwrap();

    // Peer A: asks for the metadata.
    let (mut a, _) = Scripted::connect(addr, f.info_hash, true);
    send_ext_handshake(&mut a, 51001);
    let theirs = their_ext_handshake(&mut a);
    let md_id = *theirs.m.get("ut_metadata").expect("ut_metadata advertised");
    assert!(
        theirs.m.get("ut_pex").is_some_and(|&id| id != 0),
        "{theirs:?}"
    );
    assert_eq!(theirs.metadata_size, Some(meta.info_bytes.len() as u64));
    let mut req = Vec::new();
    ext::encode_metadata_request(0, &mut req);
    a.send(&Message::Extended {
        id: md_id,
        payload: &req,
    });
    let reply = a
        .recv_until(|m| matches!(m, OwnedMessage::Extended { id: 3, .. }))
        .expect("a metadata reply");
    let OwnedMessage::Extended { payload, .. } = reply else {
        unreachable!()
    };
    match ext::decode_metadata(&payload).unwrap() {
        MetadataMsg::Data {
            piece: 0,
            total_size,
            data,
        } => {
            assert_eq!(total_size, meta.info_bytes.len() as u64);
            assert_eq!(
                data,
                &meta.info_bytes[..],
                "one piece holds the whole info dict"
            );
            let ih: [u8; 20] = Sha1::digest(data).into();
            assert_eq!(ih, f.info_hash, "the metadata hashes to the info hash");
        }
        other => panic!("expected piece 0 of the metadata, got {other:?}"),
    }
    // A piece past the end is rejected, and the connection stays up.
    req.clear();
    ext::encode_metadata_request(7, &mut req);
    a.send(&Message::Extended {
        id: md_id,
        payload: &req,
    });
    let reply = a
        .recv_until(|m| matches!(m, OwnedMessage::Extended { id: 3, .. }))
        .expect("a metadata reject");
    let OwnedMessage::Extended { payload, .. } = reply else {
        unreachable!()
    };
    assert_eq!(
        ext::decode_metadata(&payload).unwrap(),
        MetadataMsg::Reject { piece: 7 }
    );

    // Peer B: told about A (its IP and the port of A's extension handshake) by PEX.
    let (mut b, _) = Scripted::connect(addr, f.info_hash, true);
    send_ext_handshake(&mut b, 51002);
    let _ = their_ext_handshake(&mut b);
    b.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let pex = b
        .recv_until(|m| matches!(m, OwnedMessage::Extended { id: 4, .. }))
        .expect("a PEX message within a few seconds");
    let OwnedMessage::Extended { payload, .. } = pex else {
        unreachable!()
    };
    let msg = ext::decode_pex(&payload).unwrap();
    let a_listen: SocketAddr = "127.0.0.1:51001".parse().unwrap();
    assert!(
        msg.added.iter().any(|(addr, _)| *addr == a_listen),
        "PEX lists A's listening address: {msg:?}"
    );
    assert!(
        !msg.added.iter().any(|(addr, _)| addr.port() == 51002),
        "B is not told about itself: {msg:?}"
    );
}

#[test]
fn a_second_instance_on_the_same_port_is_refused_and_the_first_keeps_serving() {
    let f = fixture(1 << 20);
    let (_first, addr) = start_seeder(&f, &[]);
    // A second server (its own state directory) on the first one's port, on that address and
    // on the wildcard: SO_REUSEPORT would let it bind and take half the new connections.
    for listen in [addr.to_string(), format!("0.0.0.0:{}", addr.port())] {
        let state = f._dir.path().join("state2");
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "KILL", "60", BIN, "seed"])
            .arg(&f.torrent)
            .arg("--data")
            .arg(&f.data_dir)
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &listen, "--no-pin"]);
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{listen}: {err}");
        assert!(
            err.contains(&format!(
                "port {} is already listened on by another process",
                addr.port()
            )) && err.contains("choose another --listen"),
            "{listen}: {err}"
        );
        // Said before the data check, not after it.
        assert!(!err.contains("checked"), "{listen}: {err}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening:"),
            "{listen}"
        );
    }
    // Every connection still reaches the first server, which serves the whole torrent.
    for _ in 0..4 {
        download_all(addr, &f);
    }
}
