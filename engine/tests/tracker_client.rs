//! The tracker clients and the announcer against fake trackers run inside each test on
//! 127.0.0.1 (a tokio TcpListener serving canned HTTP responses; a tokio UdpSocket speaking
//! BEP 15). Every exchange is bounded in count and time.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use uring_bt::control::announce::{
    AnnounceTorrent, Announcer, AnnouncerConfig, FoundPeers, Progress, TrackerState,
};
use uring_bt::control::tracker::{
    AnnounceRequest, ClientConfig, Event, TrackerClient, TrackerError, MAX_RESPONSE_BYTES,
};

// ------------------------------------------------------------------------------------------
// Fake HTTP tracker

/// What the fake HTTP tracker does with one request.
#[derive(Clone)]
enum Http {
    /// These bytes, then close.
    Raw(Vec<u8>),
    /// A 200 with this body.
    Body(Vec<u8>),
    /// A 200 with this body after a delay.
    Slow(Vec<u8>, Duration),
    /// Headers without a length, then `total` bytes of body as fast as the client reads.
    Stream(usize),
}

#[derive(Default)]
struct HttpLog {
    /// Request targets (path and query) in arrival order, with when they came.
    requests: Vec<(String, Instant)>,
    user_agents: Vec<String>,
    /// Body bytes the `Stream` reply managed to write, and whether a write failed.
    streamed: usize,
    stream_write_failed: bool,
    concurrent: usize,
    max_concurrent: usize,
}

struct FakeHttp {
    addr: SocketAddr,
    log: Arc<Mutex<HttpLog>>,
}

impl FakeHttp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn requests(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .requests
            .iter()
            .map(|r| r.0.clone())
            .collect()
    }
}

fn ok_body(peers: &[SocketAddr], interval: u32) -> Vec<u8> {
    let mut compact = Vec::new();
    for p in peers {
        if let SocketAddr::V4(v4) = p {
            compact.extend_from_slice(&v4.ip().octets());
            compact.extend_from_slice(&v4.port().to_be_bytes());
        }
    }
    let mut b = format!(
        "d8:completei5e10:incompletei3e8:intervali{interval}e5:peers{}:",
        compact.len()
    )
    .into_bytes();
    b.extend_from_slice(&compact);
    b.push(b'e');
    b
}

fn http_200(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Reads one request head (bounded to 16 KiB); returns (target, user agent).
async fn read_head(s: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let target = head.split_whitespace().nth(1)?.to_string();
    let ua = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("user-agent: ")
                .or_else(|| l.strip_prefix("User-Agent: "))
        })
        .unwrap_or("")
        .to_string();
    Some((target, ua))
}

async fn fake_http(handler: impl Fn(&str) -> Http + Send + Sync + 'static) -> FakeHttp {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(HttpLog::default()));
    let handler = Arc::new(handler);
    let l2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = l2.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Some((target, ua)) = read_head(&mut s).await else {
                    return;
                };
                {
                    let mut g = log.lock().unwrap();
                    g.requests.push((target.clone(), Instant::now()));
                    g.user_agents.push(ua);
                    g.concurrent += 1;
                    g.max_concurrent = g.max_concurrent.max(g.concurrent);
                }
                match handler(&target) {
                    Http::Raw(b) => {
                        let _ = s.write_all(&b).await;
                    }
                    Http::Body(b) => {
                        let _ = s.write_all(&http_200(&b)).await;
                    }
                    Http::Slow(b, d) => {
                        tokio::time::sleep(d).await;
                        let _ = s.write_all(&http_200(&b)).await;
                    }
                    Http::Stream(total) => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                            .await;
                        let chunk = vec![b'x'; 64 * 1024];
                        let mut sent = 0;
                        let mut failed = false;
                        while sent < total {
                            match tokio::time::timeout(Duration::from_secs(5), s.write(&chunk))
                                .await
                            {
                                Ok(Ok(n)) if n > 0 => sent += n,
                                _ => {
                                    failed = true;
                                    break;
                                }
                            }
                        }
                        let mut g = log.lock().unwrap();
                        g.streamed = sent;
                        g.stream_write_failed = failed;
                    }
                }
                // The client has its answer once the bytes are written.
                log.lock().unwrap().concurrent -= 1;
                let _ = s.shutdown().await;
            });
        }
    });
    FakeHttp { addr, log }
}

// ------------------------------------------------------------------------------------------
// Fake UDP tracker

#[derive(Default)]
struct UdpLog {
    /// (action, transaction id, when, datagram)
    datagrams: Vec<(u32, u32, Instant, Vec<u8>)>,
}

struct FakeUdp {
    addr: SocketAddr,
    log: Arc<Mutex<UdpLog>>,
}

impl FakeUdp {
    fn url(&self) -> String {
        format!("udp://{}/announce", self.addr)
    }
    fn count(&self, action: u32) -> usize {
        self.log
            .lock()
            .unwrap()
            .datagrams
            .iter()
            .filter(|d| d.0 == action)
            .count()
    }
    fn events(&self) -> Vec<u32> {
        self.log
            .lock()
            .unwrap()
            .datagrams
            .iter()
            .filter(|d| d.0 == 1)
            .map(|d| u32::from_be_bytes(d.3[80..84].try_into().unwrap()))
            .collect()
    }
}

const CONN_ID: u64 = 0x1122_3344_5566_7788;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn udp_connect_reply(txid: u32) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&0u32.to_be_bytes());
    r.extend_from_slice(&txid.to_be_bytes());
    r.extend_from_slice(&CONN_ID.to_be_bytes());
    r
}

fn udp_announce_reply(txid: u32, peers: &[([u8; 4], u16)]) -> Vec<u8> {
    let mut r = Vec::new();
    for v in [1u32, txid, 1800, 2, 7] {
        r.extend_from_slice(&v.to_be_bytes());
    }
    for (ip, port) in peers {
        r.extend_from_slice(ip);
        r.extend_from_slice(&port.to_be_bytes());
    }
    r
}

fn udp_error_reply(txid: u32, msg: &str) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&3u32.to_be_bytes());
    r.extend_from_slice(&txid.to_be_bytes());
    r.extend_from_slice(msg.as_bytes());
    r
}

/// A standard reply: connect gives CONN_ID; announce (with the right connection id) gives a
/// peer; scrape gives (11, 12, 13).
fn udp_standard(d: &[u8]) -> Vec<Vec<u8>> {
    if d.len() < 16 {
        return vec![];
    }
    let action = be32(d, 8);
    let txid = be32(d, 12);
    match action {
        0 => vec![udp_connect_reply(txid)],
        1 if u64::from_be_bytes(d[0..8].try_into().unwrap()) == CONN_ID => {
            vec![udp_announce_reply(txid, &[([127, 0, 0, 9], 6881)])]
        }
        2 => {
            let mut r = Vec::new();
            for v in [2u32, txid, 11, 12, 13] {
                r.extend_from_slice(&v.to_be_bytes());
            }
            vec![r]
        }
        _ => vec![udp_error_reply(txid, "bad connection id")],
    }
}

async fn fake_udp(handler: impl FnMut(&[u8]) -> Vec<Vec<u8>> + Send + 'static) -> FakeUdp {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let log = Arc::new(Mutex::new(UdpLog::default()));
    let l2 = log.clone();
    let mut handler = handler;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let d = buf[..n].to_vec();
            if n >= 16 {
                l2.lock().unwrap().datagrams.push((
                    be32(&d, 8),
                    be32(&d, 12),
                    Instant::now(),
                    d.clone(),
                ));
            }
            for r in handler(&d) {
                let _ = sock.send_to(&r, from).await;
            }
        }
    });
    FakeUdp { addr, log }
}

// ------------------------------------------------------------------------------------------
// Helpers

fn client_cfg() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        udp_base_timeout: Duration::from_millis(500),
        udp_max_retransmit: 1,
        ..ClientConfig::default()
    }
}

fn req(event: Event) -> AnnounceRequest {
    AnnounceRequest {
        info_hash: [0xAB; 20],
        peer_id: *b"-UB0100-abcdefghijkl",
        port: 6881,
        uploaded: 1,
        downloaded: 2,
        left: 0,
        event,
        numwant: 50,
        key: 0x1234_5678,
        ip: None,
        tracker_id: None,
    }
}

async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

// ------------------------------------------------------------------------------------------
// HTTP client

#[tokio::test]
async fn http_ok_compact_response() {
    let peers: Vec<SocketAddr> = vec![
        "127.0.0.2:6881".parse().unwrap(),
        "127.0.0.3:51413".parse().unwrap(),
    ];
    let body = ok_body(&peers, 1800);
    let t = fake_http(move |_| Http::Body(body.clone())).await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let r = c
        .announce(&t.url("/announce"), &req(Event::Started))
        .await
        .unwrap();
    assert_eq!(r.peers, peers);
    assert_eq!(r.interval, Duration::from_secs(1800));
    assert_eq!((r.complete, r.incomplete), (Some(5), Some(3)));
    let reqs = t.requests();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].starts_with("/announce?info_hash=%AB%AB"),
        "{}",
        reqs[0]
    );
    assert!(
        reqs[0].contains("event=started") && reqs[0].contains("compact=1"),
        "{}",
        reqs[0]
    );
    let ua = t.log.lock().unwrap().user_agents[0].clone();
    assert!(ua.starts_with("uring-bt/"), "{ua}");
}

#[tokio::test]
async fn http_scrape() {
    let t = fake_http(|target| {
        if target.starts_with("/scrape?info_hash=") {
            let mut b = b"d5:filesd20:".to_vec();
            b.extend_from_slice(&[0xAB; 20]);
            b.extend_from_slice(b"d8:completei4e10:downloadedi9e10:incompletei2eeee");
            Http::Body(b)
        } else {
            Http::Raw(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec())
        }
    })
    .await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let s = c.scrape(&t.url("/announce"), [0xAB; 20]).await.unwrap();
    assert_eq!((s.complete, s.incomplete, s.downloaded), (4, 2, 9));
    // No scrape URL (the last path element is not `announce...`).
    let e = c.scrape(&t.url("/tracker"), [0xAB; 20]).await.unwrap_err();
    assert!(matches!(e, TrackerError::BadUrl(_)), "{e:?}");
}

#[tokio::test]
async fn http_500_is_a_transport_error() {
    let t = fake_http(|_| {
        Http::Raw(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!".to_vec())
    })
    .await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let e = c
        .announce(&t.url("/announce"), &req(Event::None))
        .await
        .unwrap_err();
    match e {
        TrackerError::Transport(m) => assert!(m.starts_with("HTTP 500"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_failure_reason() {
    let t = fake_http(|_| Http::Body(b"d14:failure reason15:torrent unknowne".to_vec())).await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let e = c
        .announce(&t.url("/announce"), &req(Event::None))
        .await
        .unwrap_err();
    assert_eq!(e, TrackerError::Failure("torrent unknown".into()));
}

#[tokio::test]
async fn http_malformed_body() {
    let t = fake_http(|_| Http::Body(b"<html>not bencode</html>".to_vec())).await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let e = c
        .announce(&t.url("/announce"), &req(Event::None))
        .await
        .unwrap_err();
    assert!(matches!(e, TrackerError::Malformed(_)), "{e:?}");
}

#[tokio::test]
async fn http_truncated_body() {
    let t = fake_http(|_| {
        Http::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nd8:intervali1800e".to_vec())
    })
    .await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let started = Instant::now();
    let e = c
        .announce(&t.url("/announce"), &req(Event::None))
        .await
        .unwrap_err();
    match e {
        TrackerError::Transport(m) => assert!(m.contains("reading the response"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited for the timeout instead"
    );
}

#[tokio::test]
async fn http_oversized_body_stops_reading() {
    // A declared length above the cap: refused before reading.
    let t = fake_http(|_| {
        Http::Raw(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\nd",
                MAX_RESPONSE_BYTES + 1
            )
            .into_bytes(),
        )
    })
    .await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let e = c
        .announce(&t.url("/announce"), &req(Event::None))
        .await
        .unwrap_err();
    assert_eq!(e, TrackerError::TooLarge(MAX_RESPONSE_BYTES));

    // A body without a length that never ends: the client stops at the cap and hangs up, so
    // the tracker cannot write all of it.
    const TOTAL: usize = 256 << 20;
    let t = fake_http(|_| Http::Stream(TOTAL)).await;
    let started = Instant::now();
    let e = c
        .announce(&t.url("/announce"), &req(Event::None))
        .await
        .unwrap_err();
    assert_eq!(e, TrackerError::TooLarge(MAX_RESPONSE_BYTES));
    assert!(started.elapsed() < Duration::from_secs(4));
    // Wait for the fake tracker to notice the hang-up.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (sent, failed) = {
            let g = t.log.lock().unwrap();
            (g.streamed, g.stream_write_failed)
        };
        if failed {
            assert!(sent < 64 << 20, "the client read {sent} bytes");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker wrote {sent} bytes and is still writing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn http_redirects() {
    let addr = Arc::new(Mutex::new(None::<SocketAddr>));
    let a2 = addr.clone();
    let body = ok_body(&["127.0.0.5:1".parse().unwrap()], 900);
    let t = fake_http(move |target| {
        let redirect = |loc: String| {
            Http::Raw(
                format!("HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\n\r\n")
                    .into_bytes(),
            )
        };
        let host = a2.lock().unwrap().unwrap();
        if target.starts_with("/old/announce") {
            // relative to the path
            redirect(format!("http://{host}/announce?moved=1"))
        } else if target.starts_with("/announce") {
            Http::Body(body.clone())
        } else if let Some(rest) = target.strip_prefix("/loop-a") {
            // Trackers that move keep the query.
            redirect(format!("/loop-b{rest}"))
        } else if let Some(rest) = target.strip_prefix("/loop-b") {
            redirect(format!("http://{host}/loop-a{rest}"))
        } else if let Some(rest) = target.strip_prefix("/chain") {
            let n: u32 = rest[..1].parse().unwrap();
            redirect(format!("/chain{}/announce", n + 1))
        } else if target.starts_with("/magnet") {
            redirect("magnet:?xt=urn:btih:0000000000000000000000000000000000000000".into())
        } else {
            redirect("ftp://127.0.0.1/announce".into())
        }
    })
    .await;
    *addr.lock().unwrap() = Some(t.addr);
    let c = TrackerClient::new(client_cfg()).unwrap();
    // Followed.
    let r = c
        .announce(&t.url("/old/announce"), &req(Event::None))
        .await
        .unwrap();
    assert_eq!(r.interval, Duration::from_secs(900));
    // A loop ends at once.
    let e = c
        .announce(&t.url("/loop-a/announce"), &req(Event::None))
        .await
        .unwrap_err();
    match &e {
        TrackerError::Transport(m) => assert!(m.contains("redirect loop"), "{m}"),
        other => panic!("{other:?}"),
    }
    let loop_hits = t
        .requests()
        .iter()
        .filter(|r| r.starts_with("/loop"))
        .count();
    assert_eq!(loop_hits, 2);
    // At most max_redirects (3).
    let e = c
        .announce(&t.url("/chain0/announce"), &req(Event::None))
        .await
        .unwrap_err();
    match &e {
        TrackerError::Transport(m) => assert!(m.contains("too many redirects"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.requests()
            .iter()
            .filter(|r| r.starts_with("/chain"))
            .count(),
        4
    );
    // Other schemes are refused.
    for path in ["/magnet/announce", "/ftp/announce"] {
        let e = c
            .announce(&t.url(path), &req(Event::None))
            .await
            .unwrap_err();
        match &e {
            TrackerError::Transport(m) => assert!(m.contains("non-HTTP"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn http_unreachable_tracker() {
    let port = closed_port().await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let started = Instant::now();
    let e = c
        .announce(
            &format!("http://127.0.0.1:{port}/announce"),
            &req(Event::None),
        )
        .await
        .unwrap_err();
    match &e {
        TrackerError::Transport(m) => assert!(m.contains("connect"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // https goes through the TLS connector: refused likewise, and a TLS handshake with a
    // plain-HTTP server fails (rather than "unsupported").
    let e = c
        .announce(
            &format!("https://127.0.0.1:{port}/announce"),
            &req(Event::None),
        )
        .await
        .unwrap_err();
    match &e {
        TrackerError::Transport(m) => assert!(m.contains("connect"), "{m}"),
        other => panic!("{other:?}"),
    }
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = plain.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            let _ = s.shutdown().await;
        }
    });
    let started = Instant::now();
    let e = c
        .announce(&format!("https://{plain_addr}/announce"), &req(Event::None))
        .await
        .unwrap_err();
    match &e {
        TrackerError::Transport(m) => assert!(!m.contains("not supported"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2), "{e}");
}

#[tokio::test]
async fn bad_schemes() {
    let c = TrackerClient::new(client_cfg()).unwrap();
    for url in [
        "wss://127.0.0.1/announce",
        "ftp://127.0.0.1/x",
        "127.0.0.1:80",
    ] {
        let e = c.announce(url, &req(Event::None)).await.unwrap_err();
        assert!(matches!(e, TrackerError::BadUrl(_)), "{url}: {e:?}");
    }
}

// ------------------------------------------------------------------------------------------
// UDP client

#[tokio::test]
async fn udp_announce_and_scrape() {
    let t = fake_udp(udp_standard).await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let r = c.announce(&t.url(), &req(Event::Started)).await.unwrap();
    assert_eq!(
        r.peers,
        vec!["127.0.0.9:6881".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!((r.complete, r.incomplete), (Some(7), Some(2)));
    assert_eq!(t.events(), vec![2], "started is event 2");
    let s = c.scrape(&t.url(), [0xAB; 20]).await.unwrap();
    assert_eq!((s.complete, s.downloaded, s.incomplete), (11, 12, 13));
}

#[tokio::test]
async fn udp_never_answers_bounded_retransmits() {
    let t = fake_udp(|_| vec![]).await;
    let base = Duration::from_millis(50);
    let c = TrackerClient::new(ClientConfig {
        udp_base_timeout: base,
        udp_max_retransmit: 3,
        ..client_cfg()
    })
    .unwrap();
    let started = Instant::now();
    let e = c
        .announce(&t.url(), &req(Event::Started))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, TrackerError::Transport(_)), "{e:?}");
    // 4 connect tries (n = 0..=3), waiting 50 + 100 + 200 + 400 ms.
    let log = t.log.lock().unwrap();
    assert_eq!(log.datagrams.len(), 4);
    assert!(log.datagrams.iter().all(|d| d.0 == 0), "only connects");
    assert!(
        log.datagrams.iter().all(|d| d.1 == log.datagrams[0].1),
        "one transaction id"
    );
    assert!(took >= base * 15, "{took:?}");
    assert!(took < base * 15 + Duration::from_millis(600), "{took:?}");
    let gaps: Vec<Duration> = log.datagrams.windows(2).map(|w| w[1].2 - w[0].2).collect();
    for (g, want) in gaps.iter().zip([50u64, 100, 200]) {
        assert!(*g >= Duration::from_millis(want - 5), "{gaps:?}");
    }
}

#[tokio::test]
async fn udp_wrong_txid_ignored_then_right_one_accepted() {
    let t = fake_udp(|d| {
        let mut r = udp_standard(d);
        if d.len() >= 16 {
            let txid = be32(d, 12);
            let mut wrong = r[0].clone();
            wrong[4..8].copy_from_slice(&txid.wrapping_add(1).to_be_bytes());
            // A reply for someone else first, then a short junk one, then the right one.
            r.insert(0, wrong);
            r.insert(1, vec![0, 0, 0]);
        }
        r
    })
    .await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let started = Instant::now();
    let r = c.announce(&t.url(), &req(Event::None)).await.unwrap();
    assert_eq!(r.peers.len(), 1);
    assert_eq!((t.count(0), t.count(1)), (1, 1), "no retransmission");
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn udp_wrong_action_ignored() {
    let answered = Arc::new(AtomicUsize::new(0));
    let a2 = answered.clone();
    let t = fake_udp(move |d| {
        if d.len() < 16 {
            return vec![];
        }
        let txid = be32(d, 12);
        match be32(d, 8) {
            0 => vec![udp_connect_reply(txid)],
            // To the announce: a `connect` reply with its transaction id (wrong action), then
            // the announce reply.
            1 => {
                a2.fetch_add(1, Ordering::SeqCst);
                vec![
                    udp_connect_reply(txid),
                    udp_announce_reply(txid, &[([127, 0, 0, 7], 7)]),
                ]
            }
            _ => vec![],
        }
    })
    .await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let r = c.announce(&t.url(), &req(Event::None)).await.unwrap();
    assert_eq!(r.peers, vec!["127.0.0.7:7".parse::<SocketAddr>().unwrap()]);
    assert_eq!(answered.load(Ordering::SeqCst), 1);

    // Only ever the wrong action: the request times out after its tries.
    let t = fake_udp(|d| {
        if d.len() < 16 {
            return vec![];
        }
        vec![udp_connect_reply(be32(d, 12))]
    })
    .await;
    let c = TrackerClient::new(ClientConfig {
        udp_base_timeout: Duration::from_millis(50),
        udp_max_retransmit: 1,
        ..client_cfg()
    })
    .unwrap();
    let e = c.announce(&t.url(), &req(Event::None)).await.unwrap_err();
    assert!(matches!(e, TrackerError::Transport(_)), "{e:?}");
    assert_eq!((t.count(0), t.count(1)), (1, 2));
}

#[tokio::test]
async fn udp_error_action_is_a_failure() {
    let t = fake_udp(|d| {
        if d.len() < 16 {
            return vec![];
        }
        let txid = be32(d, 12);
        match be32(d, 8) {
            0 => vec![udp_connect_reply(txid)],
            _ => vec![udp_error_reply(txid, "torrent not registered")],
        }
    })
    .await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    let e = c.announce(&t.url(), &req(Event::None)).await.unwrap_err();
    assert_eq!(e, TrackerError::Failure("torrent not registered".into()));
}

#[tokio::test]
async fn udp_connection_id_reused() {
    let t = fake_udp(udp_standard).await;
    let c = TrackerClient::new(client_cfg()).unwrap();
    for _ in 0..2 {
        c.announce(&t.url(), &req(Event::None)).await.unwrap();
    }
    c.scrape(&t.url(), [0xAB; 20]).await.unwrap();
    assert_eq!(t.count(0), 1, "one connect for two announces and a scrape");
    assert_eq!(t.count(1), 2);
    let log = t.log.lock().unwrap();
    for d in log.datagrams.iter().filter(|d| d.0 == 1) {
        assert_eq!(u64::from_be_bytes(d.3[0..8].try_into().unwrap()), CONN_ID);
    }
    // Transaction ids differ between requests.
    let mut ids: Vec<u32> = log.datagrams.iter().map(|d| d.1).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

// ------------------------------------------------------------------------------------------
// The announcer

fn ann_cfg() -> AnnouncerConfig {
    let mut c = AnnouncerConfig::new(*b"-UB0100-abcdefghijkl", 6881);
    c.rate = 1000.0;
    c.client = client_cfg();
    c.stop_timeout = Duration::from_secs(3);
    c
}

fn torrent(ih: [u8; 20], tiers: Vec<Vec<String>>) -> AnnounceTorrent {
    AnnounceTorrent {
        info_hash: ih,
        name: "t".into(),
        tiers,
        private: false,
        progress: Box::new(|| Progress {
            uploaded: 10,
            downloaded: 0,
            left: 0,
        }),
    }
}

fn ih(n: u16) -> [u8; 20] {
    let mut h = [0x11; 20];
    h[..2].copy_from_slice(&n.to_be_bytes());
    h
}

/// Percent-decoded `info_hash` of an announce target.
fn info_hash_of(target: &str) -> Option<[u8; 20]> {
    let v = target
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("info_hash="))?;
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out.try_into().ok()
}

fn event_of(target: &str) -> &str {
    target
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("event="))
        .unwrap_or("none")
}

/// Drives `ann.run` until `done` says so (checked every 20 ms, at most `limit`), then shuts it
/// down; returns the stop report and whether `done` was reached.
async fn run_until(
    ann: &Announcer,
    found: mpsc::Sender<FoundPeers>,
    limit: Duration,
    done: impl Fn() -> bool,
) -> (uring_bt::control::announce::StopReport, bool) {
    let (tx, rx) = watch::channel(false);
    let reached = Cell::new(false);
    let driver = async {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if done() {
                reached.set(true);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = tx.send(true);
    };
    let (report, ()) = tokio::join!(ann.run(found, rx), driver);
    (report, reached.get())
}

#[tokio::test]
async fn announcer_tier_failover_and_move_to_front() {
    let live = fake_http(|_| Http::Body(ok_body(&["127.0.0.8:8".parse().unwrap()], 1800))).await;
    let other = fake_http(|_| Http::Body(ok_body(&[], 1800))).await;
    let dead1 = format!("http://127.0.0.1:{}/announce", closed_port().await);
    let dead2 = format!("http://127.0.0.1:{}/announce", closed_port().await);
    let ann = Announcer::new(ann_cfg()).unwrap();
    // Tier 0: a dead tracker and the live one (shuffled); tier 1: another tracker, never
    // needed. Several torrents, so both shuffle orders come up.
    for n in 0..8 {
        ann.add(torrent(
            ih(n),
            vec![
                vec![dead1.clone(), live.url("/announce")],
                vec![other.url("/announce")],
            ],
        ));
    }
    // A torrent whose tier 0 is all dead: tier 1 answers.
    ann.add(torrent(
        ih(100),
        vec![
            vec![dead1.clone(), dead2.clone()],
            vec![other.url("/announce")],
        ],
    ));
    let (ftx, mut frx) = mpsc::channel(64);
    let done = || live.requests().len() >= 8 && !other.requests().is_empty();
    let (_, reached) = run_until(&ann, ftx, Duration::from_secs(10), done).await;
    assert!(
        reached,
        "live: {:?}, other: {:?}",
        live.requests(),
        other.requests()
    );
    let other_reqs: Vec<_> = other
        .requests()
        .iter()
        .map(|r| (info_hash_of(r).unwrap(), event_of(r).to_string()))
        .collect();
    assert_eq!(
        other_reqs,
        vec![
            (ih(100), "started".to_string()),
            (ih(100), "stopped".to_string())
        ],
        "tier 1 only for the torrent whose tier 0 failed"
    );
    for n in 0..8 {
        let st = ann.status(&ih(n));
        assert_eq!(st.len(), 3);
        assert_eq!(
            st[0].url,
            live.url("/announce"),
            "the tracker that answered moved to the front"
        );
        assert!(
            matches!(
                st[0].state,
                TrackerState::Ok {
                    peers_received: 1,
                    ..
                }
            ),
            "{:?}",
            st[0]
        );
        assert!(
            matches!(
                st[1].state,
                TrackerState::Failed { .. } | TrackerState::NotYet
            ),
            "{:?}",
            st[1]
        );
        assert_eq!((st[2].tier, &st[2].state), (1, &TrackerState::NotYet));
    }
    let st = ann.status(&ih(100));
    assert!(
        st[..2]
            .iter()
            .all(|s| matches!(s.state, TrackerState::Failed { failures: 1, .. })),
        "{st:?}"
    );
    assert!(matches!(st[2].state, TrackerState::Ok { .. }));
    let mut batches = 0;
    while let Ok(b) = frx.try_recv() {
        assert_eq!(b.tracker, live.url("/announce"));
        assert_eq!(b.peers, vec!["127.0.0.8:8".parse::<SocketAddr>().unwrap()]);
        batches += 1;
    }
    assert_eq!(batches, 8);
}

#[tokio::test]
async fn announcer_backoff_grows() {
    let t = fake_http(|_| {
        Http::Raw(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec())
    })
    .await;
    let mut cfg = ann_cfg();
    cfg.backoff_base = Duration::from_millis(150);
    cfg.backoff_max = Duration::from_millis(600);
    let ann = Announcer::new(cfg).unwrap();
    ann.add(torrent(ih(1), vec![vec![t.url("/announce")]]));
    let (ftx, _frx) = mpsc::channel(4);
    let (report, reached) = run_until(&ann, ftx, Duration::from_secs(6), || {
        t.requests().len() >= 6
    })
    .await;
    assert!(reached);
    assert_eq!(report.sent, 0, "nothing to stop: no announce succeeded");
    let times: Vec<Instant> = t.log.lock().unwrap().requests.iter().map(|r| r.1).collect();
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    for (g, want) in gaps.iter().zip([150u128, 300, 600, 600, 600]) {
        assert!(*g + 5 >= want && *g < want + 250, "gaps {gaps:?}");
    }
    match &ann.status(&ih(1))[0].state {
        TrackerState::Failed {
            error,
            failures,
            retry_at,
        } => {
            assert!(
                matches!(error, TrackerError::Transport(m) if m.starts_with("HTTP 503")),
                "{error:?}"
            );
            assert!(*failures >= 6);
            assert!(retry_at.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn announcer_rate_and_in_flight_bounds() {
    let t = fake_http(|_| Http::Slow(ok_body(&[], 1800), Duration::from_millis(40))).await;
    let mut cfg = ann_cfg();
    cfg.rate = 100.0;
    cfg.max_in_flight = 6;
    let ann = Announcer::new(cfg).unwrap();
    let started = Instant::now();
    for n in 0..200 {
        ann.add(torrent(ih(n), vec![vec![t.url("/announce")]]));
    }
    let (ftx, _frx) = mpsc::channel(4);
    // Until every `started` is answered (none in flight, so the `stopped` at shutdown are
    // the only requests then).
    let all_ok = || {
        t.requests().len() >= 200
            && (0..200).all(|n| matches!(ann.status(&ih(n))[0].state, TrackerState::Ok { .. }))
    };
    let (report, reached) = run_until(&ann, ftx, Duration::from_secs(20), all_ok).await;
    let took = started.elapsed();
    assert!(reached);
    let log = t.log.lock().unwrap();
    let first = log.requests[0].1;
    let last_start = log.requests[199].1;
    assert!(
        last_start - first >= Duration::from_millis(1900),
        "200 at 100/s in {:?}",
        last_start - first
    );
    assert!(took < Duration::from_secs(15));
    assert!(log.max_concurrent <= 6, "{} in flight", log.max_concurrent);
    assert!(
        log.max_concurrent >= 2,
        "{} in flight: no parallelism",
        log.max_concurrent
    );
    // Each torrent got exactly one `started`; then every tracker got its `stopped`.
    let started_ev: Vec<_> = log.requests[..200].iter().map(|r| event_of(&r.0)).collect();
    assert!(started_ev.iter().all(|e| *e == "started"));
    assert_eq!(report.sent, 200);
    assert_eq!(report.acknowledged, 200);
    let stops = log
        .requests
        .iter()
        .filter(|r| event_of(&r.0) == "stopped")
        .count();
    assert_eq!(stops, 200);
}

#[tokio::test]
async fn announcer_stopped_only_to_trackers_announced_to() {
    let a = fake_http(|_| Http::Body(ok_body(&[], 1800))).await;
    let b = fake_http(|_| Http::Body(ok_body(&[], 1800))).await;
    let u = fake_udp(udp_standard).await;
    let dead = format!("http://127.0.0.1:{}/announce", closed_port().await);
    let ann = Announcer::new(ann_cfg()).unwrap();
    // Tier 0 answers, tier 1 is never announced to.
    ann.add(torrent(
        ih(1),
        vec![vec![a.url("/announce")], vec![b.url("/announce")]],
    ));
    // A UDP tracker.
    ann.add(torrent(ih(2), vec![vec![u.url()]]));
    // A dead tracker only.
    ann.add(torrent(ih(3), vec![vec![dead]]));
    // Added, then removed before shutdown: its `stopped` goes at once.
    ann.add(torrent(ih(4), vec![vec![a.url("/announce")]]));
    let (ftx, _frx) = mpsc::channel(16);
    let removed = Cell::new(false);
    let done = || {
        let a_hashes: Vec<_> = a
            .requests()
            .iter()
            .filter_map(|r| info_hash_of(r))
            .collect();
        if !removed.get() && a_hashes.contains(&ih(4)) {
            ann.remove(&ih(4));
            removed.set(true);
        }
        let stopped4 = a.requests().iter().any(|r| event_of(r) == "stopped");
        let dead_failed = matches!(
            ann.status(&ih(3)).first().map(|s| &s.state),
            Some(TrackerState::Failed { .. })
        );
        removed.get() && stopped4 && a_hashes.contains(&ih(1)) && u.count(1) >= 1 && dead_failed
    };
    let (report, reached) = run_until(&ann, ftx, Duration::from_secs(10), done).await;
    assert!(reached, "a: {:?}", a.requests());
    assert_eq!(report.sent, 2, "{report:?}");
    assert_eq!(report.acknowledged, 2);
    assert!(
        b.requests().is_empty(),
        "tier 1 was never announced to: {:?}",
        b.requests()
    );
    let a_events: Vec<(Option<[u8; 20]>, String)> = a
        .requests()
        .iter()
        .map(|r| (info_hash_of(r), event_of(r).to_string()))
        .collect();
    assert_eq!(
        a_events
            .iter()
            .filter(|(h, e)| *h == Some(ih(1)) && e == "stopped")
            .count(),
        1
    );
    assert_eq!(
        a_events
            .iter()
            .filter(|(h, e)| *h == Some(ih(4)) && e == "stopped")
            .count(),
        1
    );
    assert_eq!(u.events(), vec![2, 3], "UDP: started, then stopped");
}

#[tokio::test]
async fn announcer_completed_tracker_id_and_progress() {
    // The tracker gives a tracker id and a short interval; a completed() goes out next.
    let t =
        fake_http(|_| Http::Body(b"d8:intervali60e10:tracker id3:xyz5:peers0:e".to_vec())).await;
    let ann = Announcer::new(ann_cfg()).unwrap();
    let uploaded = Rc::new(Cell::new(100u64));
    let up2 = uploaded.clone();
    ann.add(AnnounceTorrent {
        info_hash: ih(9),
        name: "t".into(),
        tiers: vec![vec![t.url("/announce")]],
        private: true,
        progress: Box::new(move || Progress {
            uploaded: up2.get(),
            downloaded: 5,
            left: 0,
        }),
    });
    let (ftx, _frx) = mpsc::channel(4);
    let marked = Cell::new(false);
    // Announces only (showing the status may scrape).
    let announces = || -> Vec<String> {
        t.requests()
            .into_iter()
            .filter(|r| r.starts_with("/announce"))
            .collect()
    };
    let done = || {
        let answered = matches!(ann.status(&ih(9))[0].state, TrackerState::Ok { .. });
        if !marked.get() && answered {
            uploaded.set(200);
            ann.completed(&ih(9));
            marked.set(true);
        }
        announces().len() >= 2
    };
    let (report, reached) = run_until(&ann, ftx, Duration::from_secs(5), done).await;
    assert!(reached, "{:?}", t.requests());
    let reqs = announces();
    assert_eq!(event_of(&reqs[0]), "started");
    assert!(reqs[0].contains("uploaded=100"), "{}", reqs[0]);
    assert_eq!(event_of(&reqs[1]), "completed");
    assert!(
        reqs[1].contains("uploaded=200") && reqs[1].contains("trackerid=xyz"),
        "{}",
        reqs[1]
    );
    assert_eq!(report.sent, 1);
    let last = announces().last().cloned().unwrap();
    assert_eq!(event_of(&last), "stopped");
    assert!(last.contains("trackerid=xyz"));
}

#[tokio::test]
async fn announcer_full_peer_channel_drops_batches() {
    let t = fake_http(|_| Http::Body(ok_body(&["127.0.0.4:4".parse().unwrap()], 1800))).await;
    let ann = Announcer::new(ann_cfg()).unwrap();
    for n in 0..5 {
        ann.add(torrent(ih(n), vec![vec![t.url("/announce")]]));
    }
    let (ftx, mut frx) = mpsc::channel(2);
    let (_, reached) = run_until(&ann, ftx, Duration::from_secs(5), || {
        t.log.lock().unwrap().requests.len() >= 5 && ann.dropped_peer_batches() >= 3
    })
    .await;
    assert!(reached, "dropped {}", ann.dropped_peer_batches());
    let mut got = HashMap::new();
    while let Ok(b) = frx.try_recv() {
        *got.entry(b.info_hash).or_insert(0) += 1;
    }
    assert_eq!(got.len(), 2);
    assert_eq!(ann.dropped_peer_batches(), 3);
}
