//! Fuzz the .torrent parser: any input is either refused with an error or yields a metainfo whose
//! layout, piece count, info hash and magnet link are consistent. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use uring_bt_proto::metainfo::Metainfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        let layout = m.layout();
        assert_eq!(layout.num_pieces() as usize, m.pieces.len());
        assert_eq!(layout.total_length(), m.total_length);
        // The info hash is over the raw `info` bytes as they stand in the input.
        let hash: [u8; 20] = Sha1::digest(&m.info_bytes).into();
        assert_eq!(hash, m.info_hash);
        assert!(!m.info_bytes.is_empty());
        assert!(data
            .windows(m.info_bytes.len())
            .any(|w| w == &m.info_bytes[..]));
        assert!(m.magnet(&[]).starts_with("magnet:?xt=urn:btih:"));
        for p in 0..layout.num_pieces() {
            let _ = layout.piece_files(p);
        }
    }
});
