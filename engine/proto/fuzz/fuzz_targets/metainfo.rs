//! Fuzz the .torrent parser: any input is either refused with an error or yields a metainfo whose
//! layout, piece count and magnet link are consistent. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uring_bt::metainfo::Metainfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_bytes(data) {
        let layout = m.layout();
        assert_eq!(layout.num_pieces() as usize, m.pieces.len());
        assert_eq!(layout.total_length(), m.total_length);
        assert!(m.magnet(&[]).starts_with("magnet:?xt=urn:btih:"));
        for p in 0..layout.num_pieces() {
            let _ = layout.piece_files(p);
        }
    }
});
