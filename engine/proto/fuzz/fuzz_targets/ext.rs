//! Fuzz the BEP 9 `ut_metadata` and BEP 11 `ut_pex` decoders and their per-connection state
//! with arbitrary bytes.
//!
//! Never a panic (nor a recursion: every payload is validated iteratively first). Whatever
//! decodes respects the documented bounds and is a fixed point of encode/decode:
//! - `decode_metadata`: a `Data` piece exists for its `total_size` (at most
//!   `MAX_METADATA_SIZE`) and carries exactly that piece's bytes;
//! - `decode_pex`: at most `PEX_MAX_ADDED` added and `PEX_MAX_DROPPED` dropped per family, no
//!   port 0, IPv4 before IPv6;
//! - `PexReceiver`: decodes at most one message per `PEX_MIN_RECV_INTERVAL` (the first input
//!   byte sets how far `now` advances between two deliveries of the same payload);
//! - `MetadataServer`: the input, read as requests, never gets more than `max_replies` pieces,
//!   each a valid range of the info dict.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use uring_bt_proto::ext::{
    decode_metadata, decode_pex, default_max_replies, encode_metadata_data, encode_metadata_reject,
    encode_metadata_request, encode_pex, metadata_num_pieces, metadata_piece_range, MetadataAnswer,
    MetadataMsg, MetadataServer, PexReceiver, MAX_METADATA_SIZE, PEX_LIMITS, PEX_MAX_ADDED,
    PEX_MAX_DROPPED, PEX_MIN_RECV_INTERVAL,
};

fuzz_target!(|data: &[u8]| {
    check_metadata(data);
    let (step, payload) = match data.split_first() {
        Some((&b, rest)) => (Duration::from_secs(u64::from(b)), rest),
        None => (Duration::ZERO, data),
    };
    check_pex(payload, step);
    check_server(data);
});

fn check_metadata(data: &[u8]) {
    let Ok(msg) = decode_metadata(data) else {
        return;
    };
    let mut again = Vec::new();
    match msg {
        MetadataMsg::Request { piece } => encode_metadata_request(piece, &mut again),
        MetadataMsg::Reject { piece } => encode_metadata_reject(piece, &mut again),
        MetadataMsg::Data {
            piece,
            total_size,
            data: bytes,
        } => {
            assert!(total_size >= 1 && total_size <= MAX_METADATA_SIZE as u64);
            let len = total_size as usize;
            assert!(piece < metadata_num_pieces(len));
            let range = metadata_piece_range(len, piece).expect("a decoded piece exists");
            assert_eq!(bytes.len(), range.len());
            assert!(data.ends_with(bytes));
            encode_metadata_data(piece, total_size, bytes, &mut again);
        }
    }
    assert_eq!(decode_metadata(&again), Ok(msg));
}

fn check_pex(payload: &[u8], step: Duration) {
    let decoded = decode_pex(payload);
    if let Ok(msg) = &decoded {
        assert!(payload.len() <= PEX_LIMITS.max_size);
        for ipv4 in [true, false] {
            let added = msg
                .added
                .iter()
                .filter(|(a, _)| a.is_ipv4() == ipv4)
                .count();
            let dropped = msg.dropped.iter().filter(|a| a.is_ipv4() == ipv4).count();
            assert!(added <= PEX_MAX_ADDED && dropped <= PEX_MAX_DROPPED);
        }
        assert!(msg.added.iter().all(|(a, _)| a.port() != 0));
        assert!(msg.dropped.iter().all(|a| a.port() != 0));
        // IPv4 entries come first in each list.
        assert!(msg
            .added
            .windows(2)
            .all(|w| w[0].0.is_ipv4() || w[1].0.is_ipv6()));
        assert!(msg
            .dropped
            .windows(2)
            .all(|w| w[0].is_ipv4() || w[1].is_ipv6()));
        let mut bytes = Vec::new();
        encode_pex(msg, &mut bytes);
        assert_eq!(decode_pex(&bytes).as_ref(), Ok(msg));
    }
    // The receiver decodes the first delivery like decode_pex, and the second only when `now`
    // moved on by the minimum interval.
    let t0 = Instant::now();
    let mut rx = PexReceiver::new();
    assert_eq!(rx.on_message(t0, payload), decoded.clone().map(Some));
    let second = rx.on_message(t0 + step, payload);
    if step < PEX_MIN_RECV_INTERVAL {
        assert_eq!(second, Ok(None));
        assert_eq!(rx.ignored(), 1);
    } else {
        assert_eq!(second, decoded.map(Some));
        assert_eq!(rx.ignored(), 0);
    }
}

fn check_server(data: &[u8]) {
    // The first 3 bytes: the info dict's length (up to 16 MiB + a bit, to hit the refusal);
    // the rest, two bytes per request.
    let Some((head, requests)) = data.split_first_chunk::<3>() else {
        return;
    };
    let len = (usize::from(head[0]) << 17) | (usize::from(head[1]) << 9) | usize::from(head[2]);
    let max = default_max_replies(len);
    let mut server = MetadataServer::new(len, max);
    let mut served = 0u32;
    for req in requests.chunks(2) {
        let piece = u32::from(req[0]) << 8 | u32::from(req.get(1).copied().unwrap_or(0));
        match server.on_request(piece) {
            MetadataAnswer::Serve { piece: p, range } => {
                assert_eq!(p, piece);
                assert!(len <= MAX_METADATA_SIZE);
                assert_eq!(Some(range), metadata_piece_range(len, piece));
                served += 1;
            }
            MetadataAnswer::Reject { piece: p } => assert_eq!(p, piece),
        }
        assert!(served <= max);
    }
    assert_eq!(served, server.served());
}
