//! Fuzz the iterative bencode validator: it must never panic or recurse, its answer must lie
//! inside the input, and whatever it accepts must be safe for serde_bencode. The raw-span
//! helpers (`dict_entries`, `as_bytes`, `as_int`) agree with it on every value it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uring_bt_proto::bencode::{as_bytes, as_int, dict_entries, validate, Limits};
use uring_bt_proto::wire::EXT_LIMITS;

fuzz_target!(|data: &[u8]| {
    // Never a panic on arbitrary bytes, whether they validate or not.
    let _ = as_bytes(data);
    let _ = as_int(data);
    for limits in [Limits::TORRENT, Limits::MESSAGE, EXT_LIMITS] {
        if let Ok(len) = validate(data, &limits) {
            assert!(len > 0 && len <= data.len() && len <= limits.max_size);
            let value = &data[..len];
            let _ = serde_bencode::from_bytes::<serde_bencode::value::Value>(value);
            match value[0] {
                b'd' => {
                    let entries = dict_entries(value, &limits).expect("a validated dict lists");
                    for (_, v) in entries {
                        assert_eq!(validate(v, &limits), Ok(v.len()));
                    }
                }
                b'i' => assert!(as_int(value).is_some(), "a validated integer reads"),
                b'0'..=b'9' => {
                    let s = as_bytes(value).expect("a validated string reads");
                    assert!(value.ends_with(s));
                }
                _ => assert!(as_int(value).is_none() && as_bytes(value).is_none()),
            }
        }
    }
});
