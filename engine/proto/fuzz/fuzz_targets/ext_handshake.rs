//! Fuzz the BEP 10 extension handshake decoder with arbitrary bytes.
//!
//! Never a panic (nor a recursion: the payload is validated iteratively first). Whatever
//! decodes respects the documented caps, and is a fixed point: its canonical encoding decodes
//! to the same value and re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uring_bt_proto::wire::{
    ExtHandshake, EXT_LIMITS, EXT_MAX_M_ENTRIES, EXT_MAX_NAME_LEN, EXT_MAX_V_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Ok(hs) = ExtHandshake::decode(data) else {
        return;
    };
    assert!(data.len() <= EXT_LIMITS.max_size);
    assert!(hs.m.len() <= EXT_MAX_M_ENTRIES);
    assert!(hs.m.keys().all(|k| k.len() <= EXT_MAX_NAME_LEN));
    assert!(hs.v.as_ref().is_none_or(|v| v.len() <= EXT_MAX_V_LEN));
    assert_ne!(hs.p, Some(0));
    let bytes = hs.encode();
    let again = ExtHandshake::decode(&bytes).expect("a canonical encoding decodes");
    assert_eq!(again, hs);
    assert_eq!(again.encode(), bytes);
});
