//! Bencode: an iterative validator with hard limits, and raw-span lookups.
//!
//! `serde_bencode` recurses once per nesting level, so a hostile input such as a million `l`s
//! would overflow the stack. Every bencoded input therefore goes through [`validate`] first: a
//! single pass with an explicit stack (no recursion) that enforces a depth limit, a token limit
//! and a size limit, and the strict grammar of BEP 3:
//!
//! - integers `i<digits>e`: no empty integer, no leading zero, no `-0`, must fit an `i64`;
//! - strings `<len>:<bytes>`: no leading zero in the length, the length must fit the input;
//! - dictionary keys are strings. Key *order* is not enforced (real torrents are not always
//!   canonical, and the info hash is taken over the bytes as they stand).
//!
//! Only after [`validate`] succeeds may the bytes be handed to `serde_bencode`, and then only the
//! validated span (`&buf[..len]`).
//!
//! [`dict_entries`] lists a validated dictionary's keys with the *raw bytes* of their values; the
//! info hash is SHA-1 over the raw `info` value found that way, never over a re-encoding.

use std::fmt;

/// Limits enforced by [`validate`] before anything recurses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum nesting of lists and dictionaries (the top-level container is depth 1).
    pub max_depth: usize,
    /// Maximum number of values (integers, strings, lists, dictionaries, keys included).
    pub max_tokens: usize,
    /// Maximum length in bytes of the value.
    pub max_size: usize,
}

impl Limits {
    /// For .torrent files. Depth: a torrent needs 5 (root, info, files, file, path); unknown keys
    /// may nest a little more. Size: [`crate::metainfo::MAX_TORRENT_SIZE`]. Tokens: a torrent of
    /// [`crate::metainfo::MAX_FILES`] files needs about 8 per file.
    pub const TORRENT: Limits = Limits {
        max_depth: 32,
        max_tokens: 1 << 23,
        max_size: 64 << 20,
    };

    /// For small wire payloads (the BEP 10 extension handshake and similar): 64 KiB and 4,096
    /// values bound what one message can make us scan and list. The extension handshake keeps
    /// this size and token count but allows [`crate::wire::EXT_MAX_DEPTH`] levels below its
    /// top-level dictionary ([`crate::wire::EXT_LIMITS`]).
    pub const MESSAGE: Limits = Limits {
        max_depth: 8,
        max_tokens: 4096,
        max_size: 64 << 10,
    };
}

/// What is wrong with a bencoded input. Offsets are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    #[error("unexpected end of input at byte {offset}")]
    UnexpectedEof { offset: usize },
    #[error("unexpected byte {} at byte {offset}", ByteDisplay(*.byte))]
    UnexpectedByte { byte: u8, offset: usize },
    #[error("nesting deeper than {limit} levels at byte {offset}")]
    TooDeep { limit: usize, offset: usize },
    #[error("more than {limit} values")]
    TooManyTokens { limit: usize },
    #[error("value larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bad integer at byte {offset}: {reason}")]
    BadInteger { offset: usize, reason: IntProblem },
    #[error("bad string length at byte {offset}: {reason}")]
    BadStringLength { offset: usize, reason: IntProblem },
    #[error("string of {len} bytes at byte {offset} runs past the end of the input")]
    StringPastEnd { offset: usize, len: u64 },
    #[error("dictionary key at byte {offset} is not a string")]
    NonStringKey { offset: usize },
    #[error("dictionary key at byte {offset} has no value")]
    MissingValue { offset: usize },
    #[error("expected a dictionary")]
    NotADictionary,
}

/// Why an integer (or a string length) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntProblem {
    Empty,
    LeadingZero,
    NegativeZero,
    NotADigit,
    Overflow,
}

impl fmt::Display for IntProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IntProblem::Empty => "no digits",
            IntProblem::LeadingZero => "leading zero",
            IntProblem::NegativeZero => "negative zero",
            IntProblem::NotADigit => "not a digit",
            IntProblem::Overflow => "does not fit 64 bits",
        })
    }
}

struct ByteDisplay(u8);

impl fmt::Display for ByteDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frame {
    List,
    /// `expect_key`: the next item is a key (or the closing `e`).
    Dict {
        expect_key: bool,
    },
}

/// Scans the first bencoded value at `buf[0..]` without recursion and returns its length in
/// bytes. Bytes after the value are not looked at (the caller decides whether trailing data is
/// allowed). Errors on malformed input and on any of the `limits`.
pub fn validate(buf: &[u8], limits: &Limits) -> Result<usize, BencodeError> {
    // The explicit stack is bounded by `max_depth`.
    let mut stack: Vec<Frame> = Vec::with_capacity(limits.max_depth.min(64));
    let mut pos = 0usize;
    let mut tokens = 0usize;
    loop {
        if pos > limits.max_size {
            return Err(BencodeError::TooLarge {
                limit: limits.max_size,
            });
        }
        let Some(&b) = buf.get(pos) else {
            return Err(BencodeError::UnexpectedEof { offset: pos });
        };
        // A closing `e` ends the innermost container; a dictionary may close only where a key
        // would start.
        if b == b'e' {
            match stack.last() {
                Some(Frame::List) | Some(Frame::Dict { expect_key: true }) => {
                    stack.pop();
                    pos += 1;
                    if finish_value(&mut stack) {
                        return check_size(pos, limits);
                    }
                    continue;
                }
                Some(Frame::Dict { expect_key: false }) => {
                    return Err(BencodeError::MissingValue { offset: pos });
                }
                None => {
                    return Err(BencodeError::UnexpectedByte {
                        byte: b,
                        offset: pos,
                    })
                }
            }
        }
        tokens += 1;
        if tokens > limits.max_tokens {
            return Err(BencodeError::TooManyTokens {
                limit: limits.max_tokens,
            });
        }
        let is_key = matches!(stack.last(), Some(Frame::Dict { expect_key: true }));
        if is_key && !b.is_ascii_digit() {
            return Err(BencodeError::NonStringKey { offset: pos });
        }
        match b {
            b'i' => {
                pos = scan_int(buf, pos)?;
            }
            b'0'..=b'9' => {
                pos = scan_string(buf, pos)?;
            }
            b'l' | b'd' => {
                if stack.len() >= limits.max_depth {
                    return Err(BencodeError::TooDeep {
                        limit: limits.max_depth,
                        offset: pos,
                    });
                }
                stack.push(if b == b'l' {
                    Frame::List
                } else {
                    Frame::Dict { expect_key: true }
                });
                pos += 1;
                continue;
            }
            _ => {
                return Err(BencodeError::UnexpectedByte {
                    byte: b,
                    offset: pos,
                })
            }
        }
        if is_key {
            if let Some(Frame::Dict { expect_key }) = stack.last_mut() {
                *expect_key = false;
            }
            continue;
        }
        if finish_value(&mut stack) {
            return check_size(pos, limits);
        }
    }
}

fn check_size(len: usize, limits: &Limits) -> Result<usize, BencodeError> {
    if len > limits.max_size {
        Err(BencodeError::TooLarge {
            limit: limits.max_size,
        })
    } else {
        Ok(len)
    }
}

/// Called when a complete value (not a key) ends: a dictionary now expects a key again.
/// Returns true when the value was the top-level one.
fn finish_value(stack: &mut [Frame]) -> bool {
    match stack.last_mut() {
        None => true,
        Some(Frame::Dict { expect_key }) => {
            *expect_key = true;
            false
        }
        Some(Frame::List) => false,
    }
}

/// Parses the decimal digits of `buf[start..end]` (already known to be ASCII digits only when
/// `Ok`), refusing empty input and leading zeros. Returns the magnitude.
fn parse_digits(digits: &[u8]) -> Result<u64, IntProblem> {
    if digits.is_empty() {
        return Err(IntProblem::Empty);
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return Err(IntProblem::LeadingZero);
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(IntProblem::NotADigit);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(IntProblem::Overflow)?;
    }
    Ok(v)
}

/// Scans `i<int>e` at `buf[pos]`; returns the position after the `e`.
fn scan_int(buf: &[u8], pos: usize) -> Result<usize, BencodeError> {
    let body_start = pos + 1;
    let Some(rel_end) = buf[body_start.min(buf.len())..]
        .iter()
        .position(|&c| c == b'e')
    else {
        return Err(BencodeError::UnexpectedEof { offset: buf.len() });
    };
    let body = &buf[body_start..body_start + rel_end];
    parse_int(body).map_err(|reason| BencodeError::BadInteger {
        offset: pos,
        reason,
    })?;
    Ok(body_start + rel_end + 1)
}

/// Parses the body of a bencoded integer (between `i` and `e`) strictly.
pub fn parse_int(body: &[u8]) -> Result<i64, IntProblem> {
    let (negative, digits) = match body.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, body),
    };
    let magnitude = parse_digits(digits)?;
    if negative {
        if magnitude == 0 {
            return Err(IntProblem::NegativeZero);
        }
        // i64::MIN has a magnitude one larger than i64::MAX.
        if magnitude == i64::MIN.unsigned_abs() {
            return Ok(i64::MIN);
        }
        i64::try_from(magnitude)
            .map(|m| -m)
            .map_err(|_| IntProblem::Overflow)
    } else {
        i64::try_from(magnitude).map_err(|_| IntProblem::Overflow)
    }
}

/// Scans `<len>:<bytes>` at `buf[pos]`; returns the position after the bytes.
fn scan_string(buf: &[u8], pos: usize) -> Result<usize, BencodeError> {
    let Some(rel_colon) = buf[pos..]
        .iter()
        .take(21) // 20 digits hold any u64; more is an overflow or garbage.
        .position(|&c| c == b':')
    else {
        // Tell an overflowing length from a truncated one.
        let digits = buf[pos..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 20 {
            return Err(BencodeError::BadStringLength {
                offset: pos,
                reason: IntProblem::Overflow,
            });
        }
        if pos + digits < buf.len() {
            return Err(BencodeError::BadStringLength {
                offset: pos,
                reason: IntProblem::NotADigit,
            });
        }
        return Err(BencodeError::UnexpectedEof { offset: buf.len() });
    };
    let len = parse_digits(&buf[pos..pos + rel_colon]).map_err(|reason| {
        BencodeError::BadStringLength {
            offset: pos,
            reason,
        }
    })?;
    let data_start = pos + rel_colon + 1;
    let remaining = (buf.len() - data_start) as u64;
    if len > remaining {
        return Err(BencodeError::StringPastEnd { offset: pos, len });
    }
    // len <= remaining <= usize::MAX.
    Ok(data_start + len as usize)
}

/// One dictionary entry: the key and the raw bencoded bytes of its value.
pub type Entry<'a> = (&'a [u8], &'a [u8]);

/// The entries of the validated dictionary at `buf[0..]`: each key with the raw bytes of its
/// value, in file order (duplicates kept). `buf` must start with a dictionary that passed
/// [`validate`] with `limits`; anything else is an error, never a panic.
pub fn dict_entries<'a>(buf: &'a [u8], limits: &Limits) -> Result<Vec<Entry<'a>>, BencodeError> {
    if buf.first() != Some(&b'd') {
        return Err(BencodeError::NotADictionary);
    }
    let mut out = Vec::new();
    let mut pos = 1usize;
    loop {
        match buf.get(pos) {
            None => return Err(BencodeError::UnexpectedEof { offset: pos }),
            Some(b'e') => return Ok(out),
            Some(c) if c.is_ascii_digit() => {}
            Some(_) => return Err(BencodeError::NonStringKey { offset: pos }),
        }
        let key_end = scan_string(buf, pos)?;
        let colon = pos
            + buf[pos..key_end]
                .iter()
                .position(|&c| c == b':')
                .ok_or(BencodeError::UnexpectedEof { offset: pos })?;
        let key = &buf[colon + 1..key_end];
        let value_len = validate(&buf[key_end..], limits)?;
        out.push((key, &buf[key_end..key_end + value_len]));
        pos = key_end + value_len;
    }
}

/// The raw bytes of the value of `key` in the validated dictionary at `buf[0..]`; `None` when
/// the key is absent. When a key is repeated, the first occurrence wins (the metainfo parser
/// refuses repeated keys separately).
pub fn dict_get<'a>(
    buf: &'a [u8],
    key: &[u8],
    limits: &Limits,
) -> Result<Option<&'a [u8]>, BencodeError> {
    Ok(dict_entries(buf, limits)?
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v))
}

/// The bytes of the string whose whole bencoding is `raw` (a value span from [`dict_entries`] or
/// [`validate`]); `None` when `raw` is anything else (another type, a malformed or truncated
/// string, or bytes after the string). Never panics, whatever `raw` holds.
pub fn as_bytes(raw: &[u8]) -> Option<&[u8]> {
    // 20 digits hold any u64; a colon further in is not a length we could have validated.
    let colon = raw.iter().take(21).position(|&c| c == b':')?;
    let len = parse_digits(&raw[..colon]).ok()?;
    let data = &raw[colon + 1..];
    (data.len() as u64 == len).then_some(data)
}

/// The integer whose whole bencoding is `raw` (`i<int>e`, strict as in [`validate`]); `None`
/// when `raw` is anything else. Never panics, whatever `raw` holds.
pub fn as_int(raw: &[u8]) -> Option<i64> {
    let body = raw.strip_prefix(b"i")?.strip_suffix(b"e")?;
    parse_int(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BIG: Limits = Limits {
        max_depth: 64,
        max_tokens: 1 << 20,
        max_size: 1 << 24,
    };

    fn v(s: &[u8]) -> Result<usize, BencodeError> {
        validate(s, &BIG)
    }

    #[test]
    fn accepts_valid_values() {
        assert_eq!(v(b"i0e"), Ok(3));
        assert_eq!(v(b"i-12e"), Ok(5));
        assert_eq!(v(b"0:"), Ok(2));
        assert_eq!(v(b"4:spam"), Ok(6));
        assert_eq!(v(b"le"), Ok(2));
        assert_eq!(v(b"de"), Ok(2));
        assert_eq!(v(b"l4:spami42ee"), Ok(12));
        assert_eq!(v(b"d3:cow3:moo4:spam4:eggse"), Ok(24));
        // Non-canonical key order is accepted.
        assert_eq!(v(b"d1:bi1e1:ai2ee"), Ok(14));
        // Trailing bytes are not part of the value.
        assert_eq!(v(b"i1eXYZ"), Ok(3));
        assert_eq!(v(b"i9223372036854775807e"), Ok(21));
        assert_eq!(v(b"i-9223372036854775808e"), Ok(22));
    }

    #[test]
    fn refuses_bad_integers() {
        let bad = |s: &[u8], reason| {
            assert_eq!(
                v(s),
                Err(BencodeError::BadInteger { offset: 0, reason }),
                "{:?}",
                String::from_utf8_lossy(s)
            )
        };
        bad(b"i03e", IntProblem::LeadingZero);
        bad(b"i00e", IntProblem::LeadingZero);
        bad(b"i-03e", IntProblem::LeadingZero);
        bad(b"i-0e", IntProblem::NegativeZero);
        bad(b"ie", IntProblem::Empty);
        bad(b"i-e", IntProblem::Empty);
        bad(b"i1x2e", IntProblem::NotADigit);
        bad(b"i+1e", IntProblem::NotADigit);
        bad(b"i9223372036854775808e", IntProblem::Overflow);
        bad(b"i-9223372036854775809e", IntProblem::Overflow);
        bad(b"i99999999999999999999999999e", IntProblem::Overflow);
        assert_eq!(v(b"i12"), Err(BencodeError::UnexpectedEof { offset: 3 }));
    }

    #[test]
    fn refuses_bad_strings() {
        assert_eq!(
            v(b"05:hello"),
            Err(BencodeError::BadStringLength {
                offset: 0,
                reason: IntProblem::LeadingZero
            })
        );
        assert_eq!(
            v(b"5:hi"),
            Err(BencodeError::StringPastEnd { offset: 0, len: 5 })
        );
        // A huge declared length is refused without allocating anything.
        assert_eq!(
            v(b"18446744073709551615:x"),
            Err(BencodeError::StringPastEnd {
                offset: 0,
                len: u64::MAX
            })
        );
        assert_eq!(
            v(b"99999999999999999999999:x"),
            Err(BencodeError::BadStringLength {
                offset: 0,
                reason: IntProblem::Overflow
            })
        );
        assert_eq!(
            v(b"3x:abc"),
            Err(BencodeError::BadStringLength {
                offset: 0,
                reason: IntProblem::NotADigit
            })
        );
        assert_eq!(v(b"12"), Err(BencodeError::UnexpectedEof { offset: 2 }));
    }

    #[test]
    fn refuses_structural_errors() {
        assert_eq!(v(b""), Err(BencodeError::UnexpectedEof { offset: 0 }));
        assert_eq!(v(b"l"), Err(BencodeError::UnexpectedEof { offset: 1 }));
        assert_eq!(
            v(b"e"),
            Err(BencodeError::UnexpectedByte {
                byte: b'e',
                offset: 0
            })
        );
        assert_eq!(
            v(b"x"),
            Err(BencodeError::UnexpectedByte {
                byte: b'x',
                offset: 0
            })
        );
        assert_eq!(
            v(b"di1ei2ee"),
            Err(BencodeError::NonStringKey { offset: 1 })
        );
        assert_eq!(v(b"dlei2ee"), Err(BencodeError::NonStringKey { offset: 1 }));
        assert_eq!(v(b"d1:ae"), Err(BencodeError::MissingValue { offset: 4 }));
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        // A million nested lists: the validator refuses at the limit, and uses no recursion.
        let mut deep = vec![b'l'; 1_000_000];
        deep.extend(std::iter::repeat_n(b'e', 1_000_000));
        assert_eq!(
            validate(&deep, &Limits::TORRENT),
            Err(BencodeError::TooDeep {
                limit: 32,
                offset: 32
            })
        );
        let mut ok = vec![b'l'; 32];
        ok.extend(std::iter::repeat_n(b'e', 32));
        assert_eq!(validate(&ok, &Limits::TORRENT), Ok(64));
        let mut dicts = b"d1:a".repeat(33);
        dicts.extend(b"i1e");
        dicts.extend(std::iter::repeat_n(b'e', 33));
        assert!(matches!(
            validate(&dicts, &Limits::TORRENT),
            Err(BencodeError::TooDeep { limit: 32, .. })
        ));
    }

    #[test]
    fn refuses_token_and_size_limits() {
        let lim = Limits {
            max_depth: 4,
            max_tokens: 3,
            max_size: 100,
        };
        assert_eq!(validate(b"li1ei2ee", &lim), Ok(8));
        assert_eq!(
            validate(b"li1ei2ei3ee", &lim),
            Err(BencodeError::TooManyTokens { limit: 3 })
        );
        let mut big = b"200:".to_vec();
        big.extend([b'x'; 200]);
        assert_eq!(
            validate(&big, &lim),
            Err(BencodeError::TooLarge { limit: 100 })
        );
        let mut many = b"l".to_vec();
        many.extend(b"0:".repeat(5000));
        many.push(b'e');
        assert_eq!(
            validate(&many, &Limits::MESSAGE),
            Err(BencodeError::TooManyTokens { limit: 4096 })
        );
    }

    #[test]
    fn dict_entries_give_raw_values() {
        let buf = b"d4:infod1:bi1e1:ai2ee3:zzz3:abce";
        let n = v(buf).unwrap();
        assert_eq!(n, buf.len());
        let e = dict_entries(buf, &BIG).unwrap();
        assert_eq!(
            e,
            vec![
                (&b"info"[..], &b"d1:bi1e1:ai2ee"[..]),
                (&b"zzz"[..], &b"3:abc"[..])
            ]
        );
        assert_eq!(dict_get(buf, b"zzz", &BIG), Ok(Some(&b"3:abc"[..])));
        assert_eq!(dict_get(buf, b"nope", &BIG), Ok(None));
        assert_eq!(
            dict_entries(b"li1ee", &BIG),
            Err(BencodeError::NotADictionary)
        );
    }

    #[test]
    fn as_bytes_and_as_int_take_whole_values_only() {
        assert_eq!(as_bytes(b"4:spam"), Some(&b"spam"[..]));
        assert_eq!(as_bytes(b"0:"), Some(&b""[..]));
        assert_eq!(as_bytes(b"3:a:b"), Some(&b"a:b"[..]));
        for not in [
            &b""[..],
            b":",
            b"4:spa",
            b"4:spamX",
            b"04:spam",
            b"-1:",
            b"i4e",
            b"le",
            b"99999999999999999999999:x",
            b"18446744073709551615:x",
        ] {
            assert_eq!(as_bytes(not), None, "{:?}", String::from_utf8_lossy(not));
        }
        assert_eq!(as_int(b"i0e"), Some(0));
        assert_eq!(as_int(b"i-42e"), Some(-42));
        assert_eq!(as_int(b"i-9223372036854775808e"), Some(i64::MIN));
        for not in [
            &b""[..],
            b"i",
            b"ie",
            b"i1",
            b"i01e",
            b"i-0e",
            b"i1e2e",
            b"i1ee",
            b"i9223372036854775808e",
            b"1:1",
            b"li1ee",
        ] {
            assert_eq!(as_int(not), None, "{:?}", String::from_utf8_lossy(not));
        }
    }

    /// A bencode value tree for property tests, with a canonical encoder.
    #[derive(Debug, Clone)]
    enum Tree {
        Int(i64),
        Bytes(Vec<u8>),
        List(Vec<Tree>),
        Dict(std::collections::BTreeMap<Vec<u8>, Tree>),
    }

    fn encode(t: &Tree, out: &mut Vec<u8>) {
        match t {
            Tree::Int(i) => out.extend(format!("i{i}e").bytes()),
            Tree::Bytes(b) => {
                out.extend(format!("{}:", b.len()).bytes());
                out.extend(b);
            }
            Tree::List(l) => {
                out.push(b'l');
                l.iter().for_each(|x| encode(x, out));
                out.push(b'e');
            }
            Tree::Dict(d) => {
                out.push(b'd');
                for (k, x) in d {
                    encode(&Tree::Bytes(k.clone()), out);
                    encode(x, out);
                }
                out.push(b'e');
            }
        }
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Tree::Int),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Tree::Bytes),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Tree::List),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..8),
                    inner,
                    0..6
                )
                .prop_map(Tree::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn valid_trees_validate_and_round_trip(t in tree(), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = Vec::new();
            encode(&t, &mut buf);
            let len = buf.len();
            buf.extend(&tail);
            prop_assert_eq!(validate(&buf, &BIG), Ok(len));
            // serde_bencode reads the validated span back to the same canonical bytes.
            let value: serde_bencode::value::Value = serde_bencode::from_bytes(&buf[..len]).unwrap();
            prop_assert_eq!(serde_bencode::to_bytes(&value).unwrap(), buf[..len].to_vec());
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(n) = validate(&buf, &BIG) {
                prop_assert!(n <= buf.len());
                // Whatever validates is safe for serde_bencode.
                let _ = serde_bencode::from_bytes::<serde_bencode::value::Value>(&buf[..n]);
            }
        }

        #[test]
        fn as_bytes_and_as_int_read_what_validates(t in tree()) {
            let mut buf = Vec::new();
            encode(&t, &mut buf);
            match &t {
                Tree::Int(i) => prop_assert_eq!(as_int(&buf), Some(*i)),
                Tree::Bytes(b) => prop_assert_eq!(as_bytes(&buf), Some(&b[..])),
                _ => prop_assert!(as_int(&buf).is_none() && as_bytes(&buf).is_none()),
            }
            if let Tree::Dict(d) = &t {
                for ((k, raw), (tk, tv)) in dict_entries(&buf, &BIG).unwrap().into_iter().zip(d) {
                    prop_assert_eq!(k, &tk[..]);
                    let mut want = Vec::new();
                    encode(tv, &mut want);
                    prop_assert_eq!(raw, &want[..]);
                }
            }
        }

        #[test]
        fn truncations_are_refused(t in tree()) {
            let mut buf = Vec::new();
            encode(&t, &mut buf);
            for cut in 0..buf.len() {
                prop_assert!(validate(&buf[..cut], &BIG).is_err());
            }
        }
    }
}
