//! Fuzz the magnet link parser with arbitrary bytes (as UTF-8, lossily, and behind a valid
//! `magnet:?xt=urn:btih:` prefix so that the parameters are reached).
//!
//! Never a panic. Whatever parses respects the documented bounds (at most `MAX_TRACKERS`
//! distinct trackers, `MAX_PEERS` distinct IP peers with a non-zero port, no empty name) and is
//! a fixed point: printing it again as a link and parsing that gives the same magnet.
#![no_main]

use std::fmt::Write;

use libfuzzer_sys::fuzz_target;
use uring_bt_proto::magnet::{parse, Magnet, MagnetError, MAX_LINK_LEN, MAX_PEERS, MAX_TRACKERS};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    check(&format!(
        "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&{text}"
    ));
});

fn check(link: &str) {
    let Ok(m) = parse(link) else {
        return;
    };
    assert!(link.len() <= MAX_LINK_LEN);
    assert!(m.trackers.len() <= MAX_TRACKERS);
    assert!(m.peers.len() <= MAX_PEERS);
    assert!(m
        .peers
        .iter()
        .all(|p| p.port() != 0 && !p.ip().is_unspecified()));
    assert!(m.name.as_deref() != Some(""));
    for (i, t) in m.trackers.iter().enumerate() {
        assert!(!m.trackers[..i].contains(t));
    }
    for (i, p) in m.peers.iter().enumerate() {
        assert!(!m.peers[..i].contains(p));
    }
    let again = print(&m);
    match parse(&again) {
        Ok(m2) => assert_eq!(
            m2,
            Magnet {
                skipped_peers: 0,
                ..m
            }
        ),
        // A name or tracker can print longer than it was written (every byte escaped): only a
        // length limit may refuse the printed form.
        Err(MagnetError::ValueTooLong { .. } | MagnetError::TooLong { .. }) => {}
        Err(e) => panic!("{e}: {again}"),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn print(m: &Magnet) -> String {
    let mut s = String::from("magnet:?xt=urn:btih:");
    for b in m.info_hash {
        let _ = write!(s, "{b:02x}");
    }
    if let Some(n) = &m.name {
        s.push_str("&dn=");
        s.push_str(&escape(n));
    }
    for t in &m.trackers {
        s.push_str("&tr=");
        s.push_str(&escape(t));
    }
    for p in &m.peers {
        s.push_str("&x.pe=");
        s.push_str(&p.to_string());
    }
    s
}
