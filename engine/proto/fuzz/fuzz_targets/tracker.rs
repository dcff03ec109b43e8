//! Fuzz the tracker codecs (HTTP announce and scrape bodies, UDP replies) with arbitrary bytes.
//!
//! The first byte picks the UDP side: the expected action (bits 0-1: connect, announce, scrape,
//! error), IPv6 peers (bit 2), and how many hashes the scrape asked for (bits 3-7, times 3: up
//! to 93, past BEP 15's 74). The rest is the body / datagram. For the scrape, the last 20 bytes
//! are the info hash looked up and the bytes before them the body (so the fuzzer can make the
//! torrent be found). The bytes are also tried as a tracker URL.
//!
//! Invariants checked (the caps documented in `tracker`): no panic; at most `MAX_PEERS` peers,
//! none with port 0 or an unspecified address, no duplicates; intervals within
//! `[MIN_INTERVAL, MAX_INTERVAL]`, the minimum interval never above the interval; messages at
//! most `MAX_MESSAGE_LEN` bytes with no control characters; a tracker id at most
//! `MAX_TRACKER_ID_LEN`; UDP replies only with the right transaction id and size.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use uring_bt_proto::tracker::udp::{self, Action, Reply};
use uring_bt_proto::tracker::{
    http, AnnounceRequest, AnnounceResponse, Event, TrackerError, MAX_INTERVAL, MAX_MESSAGE_LEN,
    MAX_PEERS, MAX_RESPONSE_BYTES, MAX_TRACKER_ID_LEN, MIN_INTERVAL,
};

fn check_message(m: &str) {
    assert!(m.len() <= MAX_MESSAGE_LEN, "message of {} bytes", m.len());
    assert!(
        !m.chars().any(char::is_control),
        "control character in {m:?}"
    );
}

fn check_announce(r: &AnnounceResponse) {
    assert!(r.peers.len() <= MAX_PEERS);
    assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&r.interval));
    if let Some(m) = r.min_interval {
        assert!(
            m >= MIN_INTERVAL && m <= r.interval,
            "{m:?} / {:?}",
            r.interval
        );
    }
    let mut seen = BTreeSet::new();
    for p in &r.peers {
        assert_ne!(p.port(), 0);
        assert!(!p.ip().is_unspecified());
        assert!(seen.insert(*p), "duplicate peer {p}");
    }
    if let Some(w) = &r.warning {
        check_message(w);
    }
    assert!(r
        .tracker_id
        .as_ref()
        .is_none_or(|t| !t.is_empty() && t.len() <= MAX_TRACKER_ID_LEN));
}

fn check_error(e: &TrackerError) {
    match e {
        TrackerError::Failure(m) => check_message(m),
        TrackerError::TooLarge(n) => assert_eq!(*n, MAX_RESPONSE_BYTES),
        TrackerError::Malformed(_) => {}
        other => panic!("a parser returned {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };

    // HTTP announce.
    match http::parse_announce(rest) {
        Ok(r) => check_announce(&r),
        Err(e) => check_error(&e),
    }

    // HTTP scrape: the body, then the info hash.
    if let Some((body, hash)) = rest
        .len()
        .checked_sub(20)
        .map(|at| rest.split_at(at))
        .and_then(|(b, h)| Some((b, <[u8; 20]>::try_from(h).ok()?)))
    {
        if let Err(e) = http::parse_scrape(body, &hash) {
            check_error(&e);
        }
    }
    if let Err(e) = http::parse_scrape(rest, &[0; 20]) {
        check_error(&e);
    }

    // UDP replies, with the datagram's own transaction id (and a wrong one).
    let expected = [
        Action::Connect,
        Action::Announce,
        Action::Scrape,
        Action::Error,
    ][usize::from(ctl & 3)];
    let v6 = ctl & 4 != 0;
    let scraped = usize::from(ctl >> 3) * 3;
    let txid = udp::transaction_id(rest);
    assert_eq!(txid.is_some(), rest.len() >= 8);
    let txid = txid.unwrap_or(0);
    assert_eq!(
        udp::decode_reply(rest, expected, txid ^ 1, v6, scraped),
        None
    );
    match udp::decode_reply(rest, expected, txid, v6, scraped) {
        None => {}
        Some(Reply::Error(m)) => check_message(&m),
        Some(Reply::Connect { .. }) => {
            assert_eq!(expected, Action::Connect);
            assert_eq!(rest.len(), 16);
        }
        Some(Reply::Announce(r)) => {
            assert_eq!(expected, Action::Announce);
            let entry = if v6 { 18 } else { 6 };
            assert!(rest.len() >= 20 && (rest.len() - 20) % entry == 0);
            assert!(r.complete.is_some() && r.incomplete.is_some());
            check_announce(&r);
        }
        Some(Reply::Scrape(s)) => {
            assert_eq!(expected, Action::Scrape);
            let n = scraped.min(udp::MAX_SCRAPE_HASHES);
            assert_eq!(s.len(), n);
            assert_eq!(rest.len(), 8 + 12 * n);
        }
    }

    // The bytes as a tracker URL: never a panic; what is accepted keeps the base's text.
    if let Ok(base) = std::str::from_utf8(rest) {
        let req = AnnounceRequest {
            info_hash: [0xAB; 20],
            peer_id: [b'-'; 20],
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: Event::Started,
            numwant: 50,
            key: 1,
            ip: None,
            tracker_id: Some(rest.to_vec()),
        };
        if let Ok(url) = http::announce_url(base, &req) {
            let head = base.split('#').next().unwrap_or(base);
            assert!(url.starts_with(head));
            assert!(url.is_ascii());
        }
        if let Some(url) = http::scrape_url(base, &[[1; 20]]) {
            assert!(url.contains("scrape"));
            assert!(url.ends_with(&"%01".repeat(20)));
        }
    }
});
