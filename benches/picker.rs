//! The piece picker (`uring_bt_proto::picker`) at scale: 100,000 pieces of 256 KiB (16 blocks
//! each, a 25 GB torrent), 500 peers registered (50 seeds, 450 with a random half bitfield),
//! 30% of the pieces already had, and 200 partial pieces in progress (8 of 16 blocks requested,
//! 4 of them received) owned by 200 of the peers.
//!
//! - `pick64/seed`: 64 blocks for a seed that owns nothing yet: four new rarest pieces.
//! - `pick64/half`: the same for a peer with a random half bitfield (scans `ordered` from the
//!   rarest end to the pieces it has).
//! - `pick64/seed_over_max_partial`: `max_partial` below the partial count: free blocks of the
//!   200 partial pieces (most received first) before any new piece.
//! - `inc_dec`: one HAVE and its undo (`inc` + `dec` of one piece).
//! - `on_block`: one received block (64 per iteration, the blocks a pick just handed out).
//!
//! Each pick is undone (`peer_gone`) outside the timed section so every iteration sees the same
//! state.
//!
//! Run: `cargo bench -p uring-bt-benches --bench picker -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use uring_bt_proto::picker::{AllPieces, Bits, Picker, PickerConfig};
use uring_bt_proto::wire::BlockRef;

const PIECES: u32 = 100_000;
const PIECE_LEN: u32 = 256 << 10;
const PEERS: u32 = 500;
const SEEDS: u32 = 50;
const PARTIALS: u32 = 200;
const WANT: usize = 64;
/// The key of the peer being measured (not one of the registered 500).
const KEY: u32 = 100_000;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bitfield(&mut self, num_pieces: u32, percent: u64) -> Vec<u8> {
        let mut bits = vec![0u8; num_pieces.div_ceil(8) as usize];
        for p in 0..num_pieces {
            if self.next() % 100 < percent {
                bits[(p / 8) as usize] |= 0x80 >> (p % 8);
            }
        }
        bits
    }
}

/// The picker in the state of the module docs, and the bitfields of the non-seed peers.
fn swarm() -> (Picker, Vec<Vec<u8>>) {
    let started = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let have = rng.bitfield(PIECES, 30);
    let mut cfg = PickerConfig::new(PIECES, PIECE_LEN, 100 << 10);
    cfg.max_partial = 2 * PEERS;
    let mut p = Picker::new(cfg, &have, 42).expect("a valid config");
    let mut fields = Vec::new();
    for _ in 0..SEEDS {
        p.inc_seed();
    }
    for _ in SEEDS..PEERS {
        let bits = rng.bitfield(PIECES, 50);
        p.inc_bitfield(&bits);
        fields.push(bits);
    }
    let mut out = Vec::new();
    for k in 0..PARTIALS {
        out.clear();
        let bits = &fields[k as usize];
        p.pick(k, &Bits(bits), 8, &mut out);
        for b in &out[..4] {
            p.on_block(k, *b);
        }
    }
    assert_eq!(p.partial_count(), PARTIALS as usize);
    eprintln!(
        "picker: {PIECES} pieces, {PEERS} peers ({SEEDS} seeds), {} had, {} partial: set up in {:?}",
        p.have_count(),
        p.partial_count(),
        started.elapsed()
    );
    (p, fields)
}

/// Times `pick` only; the pick is undone with `peer_gone` after the clock stops.
fn time_picks(
    p: &mut Picker,
    iters: u64,
    mut pick: impl FnMut(&mut Picker, &mut Vec<BlockRef>),
) -> Duration {
    let mut out = Vec::with_capacity(WANT);
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        out.clear();
        let t = Instant::now();
        pick(p, &mut out);
        total += t.elapsed();
        assert_eq!(out.len(), WANT);
        black_box(&out);
        p.peer_gone(KEY);
    }
    total
}

fn picker(c: &mut Criterion) {
    let (mut p, fields) = swarm();
    let half = fields[PEERS as usize - SEEDS as usize - 1].clone();

    let mut g = c.benchmark_group("pick64");
    g.throughput(Throughput::Elements(WANT as u64));
    g.bench_function("seed", |b| {
        b.iter_custom(|iters| {
            time_picks(&mut p, iters, |p, out| {
                p.pick(KEY, &AllPieces, WANT, out);
            })
        })
    });
    g.bench_function("half", |b| {
        b.iter_custom(|iters| {
            time_picks(&mut p, iters, |p, out| {
                p.pick(KEY, &Bits(&half), WANT, out);
            })
        })
    });
    p.set_max_partial(PARTIALS / 2);
    g.bench_function("seed_over_max_partial", |b| {
        b.iter_custom(|iters| {
            time_picks(&mut p, iters, |p, out| {
                p.pick(KEY, &AllPieces, WANT, out);
            })
        })
    });
    p.set_max_partial(2 * PEERS);
    g.finish();

    let mut piece = 0u32;
    c.bench_function("inc_dec", |b| {
        b.iter(|| {
            piece = (piece + 7_919) % PIECES;
            p.inc(black_box(piece));
            p.dec(black_box(piece));
        })
    });

    let mut g = c.benchmark_group("on_block");
    g.throughput(Throughput::Elements(WANT as u64));
    g.bench_function("64_blocks", |b| {
        b.iter_custom(|iters| {
            let mut out = Vec::with_capacity(WANT);
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                out.clear();
                p.pick(KEY, &AllPieces, WANT, &mut out);
                let t = Instant::now();
                for blk in &out {
                    black_box(p.on_block(KEY, *blk));
                }
                total += t.elapsed();
                // Undo: the four pieces are complete; failing them makes them free again.
                let mut pieces: Vec<u32> = out.iter().map(|b| b.piece).collect();
                pieces.dedup();
                for piece in pieces {
                    p.piece_failed(piece);
                }
                p.peer_gone(KEY);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, picker);
criterion_main!(benches);
