//! Fuzz the iterative bencode validator: it must never panic or recurse, its answer must lie
//! inside the input, and whatever it accepts must be safe for serde_bencode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uring_bt::bencode::{dict_entries, validate, Limits};

fuzz_target!(|data: &[u8]| {
    for limits in [Limits::TORRENT, Limits::MESSAGE] {
        if let Ok(len) = validate(data, &limits) {
            assert!(len > 0 && len <= data.len() && len <= limits.max_size);
            let value = &data[..len];
            let _ = serde_bencode::from_bytes::<serde_bencode::value::Value>(value);
            if value[0] == b'd' {
                let entries = dict_entries(value, &limits).expect("a validated dict lists");
                for (_, v) in entries {
                    assert_eq!(validate(v, &limits), Ok(v.len()));
                }
            }
        }
    }
});
