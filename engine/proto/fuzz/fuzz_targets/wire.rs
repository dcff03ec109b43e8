//! Fuzz the wire codec and the peer state machine with arbitrary bytes.
//!
//! The first byte picks the FAST flag, our seed status and a chunk size; the rest is treated as
//! (1) a handshake and (2) a message stream, decoded in chunks the way the connection driver
//! would see it, with every decoded message fed to a `Peer` and every request it queues served.
//! (The BEP 10 dictionary has its own target, `ext_handshake`; the whole connection, `session`.) Invariants checked: no panic, `decode` consumes
//! what it claims, re-encoding a decoded message gives back the same bytes, and the peer's
//! queue never exceeds its bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uring_bt_proto::peer::{Action, Actions, Peer, PeerConfig};
use uring_bt_proto::wire::{self, MAX_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let fast = ctl & 1 != 0;
    let seed = ctl & 2 != 0;
    let chunk = usize::from(ctl >> 2) + 1;

    let _ = wire::decode_handshake(rest);

    let cfg = PeerConfig::new(37, 32768, 5000, 16);
    let mut peer = Peer::new(cfg, seed, fast);
    let mut out = Actions::new();
    peer.start(&mut out);
    peer.set_choked(false, &mut out);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut reencoded = Vec::new();
    'stream: while fed < rest.len() {
        let end = (fed + chunk).min(rest.len());
        buf.extend_from_slice(&rest[fed..end]);
        fed = end;
        let mut at = 0;
        loop {
            match wire::decode(&buf[at..], MAX_MESSAGE_LEN) {
                Ok(Some((msg, used))) => {
                    assert!(used >= 4 && used <= buf.len() - at);
                    reencoded.clear();
                    wire::encode(&msg, &mut reencoded);
                    assert_eq!(&reencoded[..], &buf[at..at + used]);
                    at += used;
                    peer.on_message(&msg, &mut out);
                    assert!(peer.queued() + peer.in_flight() as usize <= 16);
                    let stop = out.drain().any(|a| matches!(a, Action::Disconnect(_)));
                    if stop {
                        break 'stream;
                    }
                    if let Some(b) = peer.take_request() {
                        assert!(cfg.check_block(&b).is_ok());
                        peer.on_served(b);
                    }
                }
                Ok(None) => break,
                Err(_) => break 'stream,
            }
        }
        buf.drain(..at);
    }
    // Alternate choking to exercise the REJECT paths.
    peer.set_choked(true, &mut out);
    out.clear();
});
