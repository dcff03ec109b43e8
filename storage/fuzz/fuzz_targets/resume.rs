//! Fuzz the resume-data decoder (a file under the state directory: anyone who can write there
//! can hand us any bytes). It must never panic, and whatever it accepts must survive an
//! encode/decode round trip unchanged. The file ends in a SHA-1 of what precedes it, which
//! random bytes almost never match: so each input is decoded twice, as it is and with its
//! SHA-1 appended (which reaches every field behind the checksum).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use uring_bt_storage::resume::{decode, encode};

fn check(bytes: &[u8]) {
    let path = Path::new("fuzz.resume");
    if let Ok(r) = decode(path, bytes) {
        assert_eq!(r.have.len(), (r.num_pieces as usize).div_ceil(8));
        let again = decode(path, &encode(&r)).expect("what we encode decodes");
        assert_eq!(again, r);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut signed = data.to_vec();
    signed.extend_from_slice(&Sha1::digest(data));
    check(&signed);
});
