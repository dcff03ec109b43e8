//! The metadata fetcher (`uring_bt::control::metadata`, BEP 9 client side) over real loopback
//! sockets: from a real libtorrent seeder (lt_seed_meta.py, the reference), from `uring-bt
//! seed`, and from scripted peers that lie, stall, or announce too much.
//!
//! Every scripted peer runs in a thread on its own 127.0.0.x (`unique_ip`), bounded by a
//! deadline; every process is killed by its guard. A missing libtorrent fails the test.

mod common;

use common::*;
use sha1::{Digest, Sha1};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use uring_bt::control::metadata::{
    fetch_metadata, FetchConfig, FetchError, Fetched, PeerError, MAX_METADATA_SIZE,
};
use uring_bt_proto::ext::{self, MetadataMsg};
use uring_bt_proto::magnet;
use uring_bt_proto::metainfo::Metainfo;
use uring_bt_proto::wire::{self, ExtHandshake, Handshake, Message, OwnedMessage};

const PEER_ID: [u8; 20] = *b"-UB0001-metadatatest";

fn config() -> FetchConfig {
    let mut cfg = FetchConfig::new(PEER_ID, 0);
    cfg.total_timeout = Duration::from_secs(60);
    cfg
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fetch(
    info_hash: [u8; 20],
    peers: Vec<SocketAddr>,
    cfg: &FetchConfig,
) -> Result<Fetched, FetchError> {
    runtime().block_on(fetch_metadata(info_hash, peers, cfg, None))
}

/// The fetch fails, and within 5 s.
fn fetch_fails_fast(info_hash: [u8; 20], peers: Vec<SocketAddr>, cfg: &FetchConfig) -> FetchError {
    let start = Instant::now();
    let err = fetch(info_hash, peers, cfg).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}: {err}");
    err
}

fn sha1(b: &[u8]) -> [u8; 20] {
    Sha1::digest(b).into()
}

/// The info dict parses as the `info` of a torrent, with this info hash.
fn assert_is_info_of(info: &[u8], meta: &Metainfo) {
    let mut t = b"d4:info".to_vec();
    t.extend_from_slice(info);
    t.push(b'e');
    let m = Metainfo::from_bytes(&t).expect("the fetched info dict parses as a torrent's info");
    assert_eq!(m.info_hash, meta.info_hash);
    assert_eq!(m.name, meta.name);
    assert_eq!(m.files.len(), meta.files.len());
}

// ---------------------------------------------------------------------------------------------
// Real seeders
// ---------------------------------------------------------------------------------------------

/// (a) From a real libtorrent seeder, through the magnet link it prints (parsed by our parser):
/// the bytes hash to the info hash and are the info dict of the .torrent, byte for byte.
#[test]
fn fetches_from_libtorrent() {
    let _t = Timed::new("fetches_from_libtorrent");
    let _g = heavy_lock();
    require_libtorrent();
    let case = tree_case(1000, 31);
    let meta = uring_bt::torrent::load::metainfo_from_file(&case.torrent).unwrap();
    assert!(
        meta.info_bytes.len() > 2 * ext::METADATA_PIECE_LEN,
        "the case should span several metadata pieces: {} bytes",
        meta.info_bytes.len()
    );
    let (seeder, link) = spawn_lt_meta_seeder(&case.torrent, &case.data, unique_ip(), &[]);
    let m = magnet::parse(&link).unwrap_or_else(|e| panic!("libtorrent's magnet {link}: {e}"));
    assert_eq!(hex(&m.info_hash), case.info_hash);
    assert_eq!(m.peers, vec![seeder.addr], "{link}");

    let mut cfg = config();
    cfg.bind_ip = Some(unique_ip().into()); // from an address of our own, as a real leecher
    let got = fetch(m.info_hash, m.peers.clone(), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", seeder.proc.logs()));
    assert_eq!(sha1(&got.info), meta.info_hash);
    assert!(got.info == meta.info_bytes, "not the .torrent's info dict");
    assert_eq!((got.from, got.tried, got.bad_metadata), (seeder.addr, 1, 0));
    assert_is_info_of(&got.info, &meta);
}

/// (b) From `uring-bt seed`, for a 1,000-file torrent whose info dict spans several 16 KiB
/// pieces. Our seeder must count 0 peers dropped for misbehaving.
#[test]
fn fetches_from_our_seeder() {
    let _t = Timed::new("fetches_from_our_seeder");
    let _g = heavy_lock();
    let case = tree_case(1000, 32);
    let meta = uring_bt::torrent::load::metainfo_from_file(&case.torrent).unwrap();
    let pieces = ext::metadata_num_pieces(meta.info_bytes.len());
    assert!(
        pieces >= 3,
        "{} bytes: {pieces} pieces",
        meta.info_bytes.len()
    );
    let seeder = spawn_our_seeder(&[&case.torrent], &case.data, None);
    let got = fetch(meta.info_hash, vec![seeder.addr], &config())
        .unwrap_or_else(|e| panic!("{e}\n{}", seeder.proc.logs()));
    assert_eq!(sha1(&got.info), meta.info_hash);
    assert!(got.info == meta.info_bytes, "not the .torrent's info dict");
    assert_eq!((got.from, got.tried, got.bad_metadata), (seeder.addr, 1, 0));
    assert_is_info_of(&got.info, &meta);
    eprintln!(
        "fetched {} bytes ({pieces} pieces) from uring-bt seed",
        got.info.len()
    );
    stop_our_seeder(seeder);
}

// ---------------------------------------------------------------------------------------------
// Scripted peers
// ---------------------------------------------------------------------------------------------

/// What a scripted peer does once connected.
#[derive(Clone)]
enum Script {
    /// Serves `info` (as a corrupt copy when `corrupt`), each data reply after `delay`.
    Serve {
        info: Arc<Vec<u8>>,
        corrupt: bool,
        delay: Duration,
    },
    /// Accepts, reads, never writes a byte.
    Silent,
    /// Handshakes and announces this metadata_size, then only reads.
    Announce { size: u64 },
    /// Serves nothing: rejects every request.
    Reject { size: u64 },
    /// Answers the handshake with another info hash.
    OtherTorrent,
}

/// A scripted peer: a std listener on its own 127.0.0.x in a thread, serving connections one
/// at a time until it is dropped or its deadline passes.
struct ScriptedPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

const SCRIPT_DEADLINE: Duration = Duration::from_secs(90);
/// The id the scripted peer asks `ut_metadata` messages to be sent to it with.
const SCRIPT_UT_METADATA: u8 = 3;

impl ScriptedPeer {
    fn start(info_hash: [u8; 20], script: Script) -> ScriptedPeer {
        let listener = TcpListener::bind((unique_ip(), 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (s, c, r) = (stop.clone(), connections.clone(), requests.clone());
        let thread = thread::spawn(move || {
            let deadline = Instant::now() + SCRIPT_DEADLINE;
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((sock, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        // A broken connection ends this one only.
                        let _ = serve(sock, info_hash, &script, &s, deadline, &r);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        ScriptedPeer {
            addr,
            stop,
            connections,
            requests,
            thread: Some(thread),
        }
    }

    /// A peer that serves `info` (its info hash is `info`'s), as a corrupt copy when
    /// `corrupt`, each data reply after `delay`.
    fn serving(info: &Arc<Vec<u8>>, corrupt: bool, delay: Duration) -> ScriptedPeer {
        let script = Script::Serve {
            info: info.clone(),
            corrupt,
            delay,
        };
        ScriptedPeer::start(sha1(info), script)
    }
}

impl Drop for ScriptedPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one message (or returns None on a read timeout, to look at the stop flag).
fn read_msg(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
    deadline: Instant,
) -> std::io::Result<OwnedMessage> {
    loop {
        if let Some((m, n)) = wire::decode(buf, wire::MAX_MESSAGE_LEN)
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?
        {
            let m = m.to_owned_message();
            buf.drain(..n);
            return Ok(m);
        }
        read_some(sock, buf, stop, deadline)?;
    }
}

fn read_some(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
    deadline: Instant,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 16384];
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Err(ErrorKind::TimedOut.into());
        }
        match sock.read(&mut chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
}

fn send(sock: &mut TcpStream, m: &Message<'_>) -> std::io::Result<()> {
    let mut out = Vec::new();
    wire::encode(m, &mut out);
    sock.write_all(&out)
}

fn serve(
    mut sock: TcpStream,
    info_hash: [u8; 20],
    script: &Script,
    stop: &AtomicBool,
    deadline: Instant,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = Vec::new();
    while buf.len() < wire::HANDSHAKE_LEN {
        read_some(&mut sock, &mut buf, stop, deadline)?;
    }
    let theirs = wire::decode_handshake(&buf)
        .ok()
        .flatten()
        .expect("the fetcher sends a valid handshake");
    assert_eq!(theirs.info_hash, info_hash);
    assert!(
        theirs.supports_extensions(),
        "the fetcher sets the BEP 10 bit"
    );
    buf.drain(..wire::HANDSHAKE_LEN);
    if let Script::Silent = script {
        loop {
            read_some(&mut sock, &mut buf, stop, deadline)?;
            buf.clear();
        }
    }
    let mut ours = Handshake::new(info_hash, *b"-SC0001-scriptedpeer");
    if let Script::OtherTorrent = script {
        ours.info_hash = [0xEE; 20];
    }
    sock.write_all(&ours.to_bytes())?;
    let size = match script {
        Script::Serve { info, .. } => info.len() as u64,
        Script::Announce { size } | Script::Reject { size } => *size,
        Script::Silent | Script::OtherTorrent => 0,
    };
    send(&mut sock, &Message::HaveAll)?;
    let mut hs = ExtHandshake {
        metadata_size: Some(size),
        v: Some("scripted".into()),
        ..ExtHandshake::default()
    };
    hs.m.insert("ut_metadata".into(), SCRIPT_UT_METADATA);
    hs.m.insert("ut_pex".into(), 4);
    let payload = hs.encode();
    send(
        &mut sock,
        &Message::Extended {
            id: 0,
            payload: &payload,
        },
    )?;

    let mut their_id = None;
    loop {
        match read_msg(&mut sock, &mut buf, stop, deadline)? {
            OwnedMessage::Extended { id: 0, payload } => {
                let hs = ExtHandshake::decode(&payload).expect("a valid extension handshake");
                their_id = hs.m.get("ut_metadata").copied();
            }
            OwnedMessage::Extended {
                id: SCRIPT_UT_METADATA,
                payload,
            } => {
                let Ok(MetadataMsg::Request { piece }) = ext::decode_metadata(&payload) else {
                    panic!("the fetcher sent a bad ut_metadata message");
                };
                requests.fetch_add(1, Ordering::Relaxed);
                let id = their_id.expect("a request before the fetcher's extension handshake");
                let mut reply = Vec::new();
                match script {
                    Script::Serve {
                        info,
                        corrupt,
                        delay,
                    } => {
                        thread::sleep(*delay);
                        let range = ext::metadata_piece_range(info.len(), piece)
                            .expect("the fetcher asks for pieces that exist");
                        let mut data = info[range].to_vec();
                        if *corrupt {
                            data[0] ^= 0x5A;
                        }
                        ext::encode_metadata_data(piece, size, &data, &mut reply);
                    }
                    _ => ext::encode_metadata_reject(piece, &mut reply),
                }
                send(
                    &mut sock,
                    &Message::Extended {
                        id,
                        payload: &reply,
                    },
                )?;
            }
            _ => {}
        }
    }
}

/// A bencoded dict of about `len` bytes (3 metadata pieces for 40,000): what the fetcher
/// checks is the hash and the bencode, not the torrent.
fn fake_info(len: usize) -> Vec<u8> {
    let filler: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let mut v = format!("d6:filler{}:", filler.len()).into_bytes();
    v.extend(filler);
    v.extend(b"4:name4:fakee");
    v
}

/// (c) A peer that serves metadata that does not hash, before an honest one: the honest one
/// wins and the liar is counted. Then both at once, the honest one slower: same outcome. And a
/// liar alone: every peer failed, and the error says why.
#[test]
fn a_lying_peer_is_counted_and_the_honest_one_wins() {
    let info = Arc::new(fake_info(40_000));
    let ih = sha1(&info);
    let liar = ScriptedPeer::serving(&info, true, Duration::ZERO);
    let honest = ScriptedPeer::serving(&info, false, Duration::ZERO);
    // One at a time, the liar first.
    let mut cfg = config();
    cfg.max_parallel = 1;
    let got = fetch(ih, vec![liar.addr, honest.addr], &cfg).unwrap();
    assert_eq!(got.info, *info);
    assert_eq!((got.from, got.tried, got.bad_metadata), (honest.addr, 2, 1));
    assert_eq!(
        liar.requests.load(Ordering::Relaxed),
        3,
        "3 pieces asked of the liar"
    );

    // In parallel, the honest one answering more slowly: the liar is done (and counted) first.
    let slow = ScriptedPeer::serving(&info, false, Duration::from_millis(300));
    let got = fetch(ih, vec![slow.addr, liar.addr], &config()).unwrap();
    assert_eq!(got.info, *info);
    assert_eq!((got.from, got.tried, got.bad_metadata), (slow.addr, 2, 1));

    // The liar alone.
    let err = fetch(ih, vec![liar.addr], &config()).unwrap_err();
    match &err {
        FetchError::AllFailed {
            tried: 1,
            bad_metadata: 1,
            reasons,
        } => assert!(matches!(reasons[..], [(a, PeerError::BadHash(_))] if a == liar.addr)),
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("does not hash to the info hash"), "{text}");
    assert_eq!(liar.connections.load(Ordering::Relaxed), 3);
}

/// (d) A peer that never answers: the peer timeout fires and the error says so; with a total
/// timeout shorter than the peer's, the fetch as a whole times out, and says so.
#[test]
fn a_silent_peer_times_out() {
    let ih = [7u8; 20];
    let silent = ScriptedPeer::start(ih, Script::Silent);
    let mut cfg = config();
    cfg.peer_timeout = Duration::from_secs(1);
    let err = fetch_fails_fast(ih, vec![silent.addr], &cfg);
    assert!(
        matches!(&err, FetchError::AllFailed { tried: 1, reasons, .. }
            if matches!(reasons[..], [(_, PeerError::Timeout(_))])),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("timed out: no metadata within 1 s"),
        "{err}"
    );

    let mut cfg = config();
    cfg.total_timeout = Duration::from_millis(800);
    let err = fetch_fails_fast(ih, vec![silent.addr], &cfg);
    assert!(
        matches!(err, FetchError::TimedOut { tried: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("timed out after 0.8 s fetching the metadata"),
        "{err}"
    );
}

/// (e) A peer announcing a metadata_size above the cap is refused at once (nothing requested,
/// nothing allocated), with a clear error; so are a peer of another torrent and one that
/// rejects our requests. The fetch ends as soon as the last peer has failed.
#[test]
fn oversized_rejecting_and_foreign_peers_are_refused() {
    let ih = [9u8; 20];
    let big = MAX_METADATA_SIZE as u64 + 1;
    let huge = ScriptedPeer::start(ih, Script::Announce { size: big });
    let reject = ScriptedPeer::start(ih, Script::Reject { size: 20_000 });
    let other = ScriptedPeer::start(ih, Script::OtherTorrent);
    let start = Instant::now();
    let err = fetch(ih, vec![huge.addr, reject.addr, other.addr], &config()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let FetchError::AllFailed {
        tried: 3,
        bad_metadata: 0,
        reasons,
    } = &err
    else {
        panic!("{err:?}");
    };
    let why = |a: SocketAddr| {
        reasons
            .iter()
            .find(|(r, _)| *r == a)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| panic!("no reason for {a}: {err}"))
    };
    assert_eq!(why(huge.addr), PeerError::MetadataTooLarge { size: big });
    assert_eq!(why(reject.addr), PeerError::Rejected(0));
    assert_eq!(why(other.addr), PeerError::WrongInfoHash);
    assert_eq!(huge.requests.load(Ordering::Relaxed), 0);
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "announced metadata_size {big}, above the limit of 16777216 bytes"
        )),
        "{text}"
    );
}

/// Peers that arrive later on the `more` channel (as from a tracker) are tried; with none at
/// first, the fetch waits for them.
#[test]
fn peers_found_later_are_tried() {
    let info = Arc::new(fake_info(5_000));
    let ih = sha1(&info);
    let honest = ScriptedPeer::serving(&info, false, Duration::ZERO);
    let rt = runtime();
    let cfg = config();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let addr = honest.addr;
    let got = rt
        .block_on(async move {
            let feed = async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                tx.send(vec![addr, addr]).await.unwrap();
                // Keep the channel open: the fetch must not need it closed to finish.
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(tx);
            };
            tokio::select! {
                r = fetch_metadata(ih, vec![], &cfg, Some(rx)) => r,
                _ = feed => panic!("the fetch did not finish"),
            }
        })
        .unwrap();
    assert_eq!(got.info, *info);
    assert_eq!((got.from, got.tried), (honest.addr, 1));
}
