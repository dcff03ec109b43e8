//! Sans-IO end-to-end: scripted peers talk to a miniature seeder whose every connection is the
//! production `Session` (the code the connection driver runs: handshake, opening, decoding in
//! arbitrary chunks, the peer state machine, the bounded control queue), with the production
//! choker. The harness only moves bytes, as the driver does: what the session consumed leaves
//! the inbox, control bytes go out before the blocks of a batch, and a block is served as
//! header + data. No sockets: every byte is accounted for.

use std::time::{Duration, Instant};

use uring_bt_proto::choker::{Choker, ChokerPeer};
use uring_bt_proto::peer::{DisconnectReason, PeerConfig};
use uring_bt_proto::session::{CloseReason, Phase, Session, SessionConfig, TorrentView};
use uring_bt_proto::wire::{
    self, BlockRef, Handshake, Message, OwnedMessage, BLOCK_SIZE, HANDSHAKE_LEN, MAX_MESSAGE_LEN,
};

const NUM_PIECES: u32 = 6;
const PIECE_LEN: u32 = 32768;
const LAST_LEN: u32 = 10_000;
const INFO_HASH: [u8; 20] = [0xAB; 20];
const REQQ: u32 = 50;

fn cfg() -> PeerConfig {
    PeerConfig::new(NUM_PIECES, PIECE_LEN, LAST_LEN, REQQ)
}

fn session_cfg() -> SessionConfig {
    SessionConfig::new([1; 20], 6881, REQQ)
}

fn view() -> TorrentView {
    TorrentView {
        info_hash: INFO_HASH,
        num_pieces: NUM_PIECES,
        piece_length: PIECE_LEN,
        last_piece_length: LAST_LEN,
        seed: true,
        private: false,
        metadata: None,
    }
}

/// The content byte at `offset` of piece `p` (deterministic).
fn content(p: u32, offset: u32) -> u8 {
    (p.wrapping_mul(31).wrapping_add(offset.wrapping_mul(7)) % 251) as u8
}

/// One connection on the seeder side.
struct Conn {
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    session: Session,
    closed: Option<CloseReason>,
    uploaded: u64,
}

impl Conn {
    /// Moves the session's control bytes to the wire, as the writer does.
    fn flush(&mut self) {
        let mut ctrl = Vec::new();
        self.session.take_control(&mut ctrl);
        self.outbox.extend_from_slice(&ctrl);
    }

    fn peer(&self) -> &uring_bt_proto::peer::Peer {
        self.session.peer().expect("attached")
    }
}

/// A miniature seeder: one torrent, one choker, N connections.
struct Seeder {
    conns: Vec<Conn>,
    choker: Choker,
    t0: Instant,
}

impl Seeder {
    fn new(n: usize, slots: usize) -> Self {
        let t0 = Instant::now();
        Seeder {
            conns: (0..n)
                .map(|_| Conn {
                    inbox: Vec::new(),
                    outbox: Vec::new(),
                    session: Session::new(session_cfg(), None, t0),
                    closed: None,
                    uploaded: 0,
                })
                .collect(),
            choker: Choker::new(slots),
            t0,
        }
    }

    /// Bytes arrive from peer `k`, `chunk` at a time.
    fn receive(&mut self, k: usize, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk) {
            if self.conns[k].closed.is_some() {
                return;
            }
            self.conns[k].inbox.extend_from_slice(piece);
            self.process(k);
        }
    }

    /// What the reader does with its buffer.
    fn process(&mut self, k: usize) {
        let c = &mut self.conns[k];
        loop {
            if c.closed.is_some() {
                return;
            }
            let r = match c.session.receive(&c.inbox) {
                Ok(r) => r,
                Err(e) => {
                    c.closed = Some(e);
                    return;
                }
            };
            c.inbox.drain(..r.consumed);
            if c.session.phase() == Phase::AwaitTorrent {
                let hs = c.session.handshake().expect("handshake parsed");
                assert_eq!(hs.info_hash, INFO_HASH);
                c.session.attach(&view(), &[]);
                continue;
            }
            if r.paused {
                c.flush();
                continue;
            }
            break;
        }
        c.flush();
    }

    /// The choker's turn at `secs`.
    fn tick(&mut self, secs: u64) {
        let input: Vec<ChokerPeer> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.closed.is_none())
            .filter_map(|(key, c)| {
                c.session.peer().map(|p| ChokerPeer {
                    key,
                    interested: p.is_interested(),
                    unchoked: !p.am_choking(),
                    recent_upload: 0,
                })
            })
            .collect();
        for (key, unchoke) in self
            .choker
            .tick(self.t0 + Duration::from_secs(secs), &input)
        {
            let c = &mut self.conns[key];
            c.session.set_choked(!unchoke);
            c.flush();
        }
    }

    /// Serve every queued request of every live connection.
    fn serve(&mut self) {
        for c in &mut self.conns {
            if c.closed.is_some() {
                continue;
            }
            c.flush();
            while let Some(b) = c.session.take_request() {
                // As the driver does: header into the headroom, block behind it.
                c.outbox
                    .extend_from_slice(&wire::encode_piece_header(b.piece, b.begin, b.len));
                c.outbox
                    .extend((0..b.len).map(|i| content(b.piece, b.begin + i)));
                c.session.on_served(b);
                c.uploaded += u64::from(b.len);
            }
        }
    }
}

/// What a scripted peer sends: handshake (FAST and extensions as given), then messages.
fn script(fast: bool, msgs: &[Message<'_>]) -> Vec<u8> {
    let mut hs = Handshake::new(INFO_HASH, [9; 20]);
    if !fast {
        hs.reserved = [0; 8];
    }
    let mut v = hs.to_bytes().to_vec();
    for m in msgs {
        wire::encode(m, &mut v);
    }
    v
}

/// Decode everything the seeder sent to a peer (after our handshake).
fn received(c: &Conn) -> Vec<OwnedMessage> {
    let hs = wire::decode_handshake(&c.outbox).unwrap().unwrap();
    assert!(hs.supports_fast() && hs.supports_extensions() && !hs.supports_dht());
    let mut at = HANDSHAKE_LEN;
    let mut out = Vec::new();
    while let Some((m, used)) = wire::decode(&c.outbox[at..], MAX_MESSAGE_LEN).unwrap() {
        out.push(m.to_owned_message());
        at += used;
    }
    assert_eq!(at, c.outbox.len(), "no partial message left");
    out
}

fn req(piece: u32, begin: u32, len: u32) -> Message<'static> {
    Message::Request(BlockRef { piece, begin, len })
}

fn every_block() -> Vec<BlockRef> {
    let mut v = Vec::new();
    for p in 0..NUM_PIECES {
        let size = if p + 1 == NUM_PIECES {
            LAST_LEN
        } else {
            PIECE_LEN
        };
        let mut b = 0;
        while b < size {
            let len = BLOCK_SIZE.min(size - b);
            v.push(BlockRef {
                piece: p,
                begin: b,
                len,
            });
            b += len;
        }
    }
    v
}

#[test]
fn good_peer_downloads_everything_with_correct_bytes() {
    for chunk in [1, 5, 64, 4096] {
        let mut s = Seeder::new(1, 4);
        s.receive(
            0,
            &script(true, &[Message::HaveNone, Message::Interested]),
            chunk,
        );
        s.tick(0);
        let reqs: Vec<Message<'_>> = every_block().into_iter().map(Message::Request).collect();
        let mut bytes = Vec::new();
        for m in &reqs {
            wire::encode(m, &mut bytes);
        }
        s.receive(0, &bytes, chunk);
        s.serve();
        let c = &s.conns[0];
        assert_eq!(c.closed, None);
        let got = received(c);
        assert_eq!(got[0], OwnedMessage::HaveAll);
        assert!(matches!(got[1], OwnedMessage::Extended { id: 0, .. }));
        assert_eq!(got[2], OwnedMessage::Unchoke);
        let pieces: Vec<_> = got[3..].to_vec();
        assert_eq!(pieces.len(), every_block().len());
        for (m, b) in pieces.iter().zip(every_block()) {
            let OwnedMessage::Piece { piece, begin, data } = m else {
                panic!("expected PIECE, got {m:?}");
            };
            assert_eq!(
                (*piece, *begin, data.len() as u32),
                (b.piece, b.begin, b.len)
            );
            assert!(data
                .iter()
                .enumerate()
                .all(|(i, &x)| x == content(b.piece, b.begin + i as u32)));
        }
        let total: u64 = u64::from(PIECE_LEN) * u64::from(NUM_PIECES - 1) + u64::from(LAST_LEN);
        assert_eq!(c.uploaded, total);
        assert_eq!(c.peer().stats().uploaded, total);
    }
}

#[test]
fn non_fast_peer_gets_a_bitfield_and_silent_drops() {
    let mut s = Seeder::new(1, 4);
    s.receive(
        0,
        &script(
            false,
            &[Message::Interested, req(0, 0, 0), req(99, 0, 16384)],
        ),
        7,
    );
    s.tick(0);
    // After the unchoke: bad requests are dropped silently, good ones served.
    let mut b = Vec::new();
    wire::encode(&req(0, 0, BLOCK_SIZE + 1), &mut b);
    wire::encode(&req(1, 0, 100), &mut b);
    s.receive(0, &b, 1);
    s.serve();
    let got = received(&s.conns[0]);
    // No extension handshake either: the peer did not set the bit.
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], OwnedMessage::Bitfield(vec![0xFC]));
    assert_eq!(got[1], OwnedMessage::Unchoke);
    assert!(
        matches!(got[2], OwnedMessage::Piece { piece: 1, begin: 0, ref data } if data.len() == 100)
    );
    let st = s.conns[0].peer().stats();
    assert_eq!((st.requests_rejected, st.bad_requests), (3, 3));
}

/// The acceptance scenario: one peer sends every kind of bad request; it gets REJECTs and is
/// finally disconnected, while the good peers next to it are served in full.
#[test]
fn abusive_peer_is_rejected_then_dropped_and_others_keep_being_served() {
    let mut s = Seeder::new(3, 4);
    for k in 0..3 {
        s.receive(k, &script(true, &[Message::HaveNone]), 3);
    }
    // Peer 1 requests while choked (before it is even interested): REJECT, no strike.
    let mut bytes = Vec::new();
    wire::encode(&req(0, 0, 16384), &mut bytes);
    s.receive(1, &bytes, 2);
    for k in 0..3 {
        let mut b = Vec::new();
        wire::encode(&Message::Interested, &mut b);
        s.receive(k, &b, 1);
    }
    s.tick(0);

    let bad = [
        req(NUM_PIECES, 0, 16384),                  // piece out of range
        req(0, 0, 0),                               // length 0
        req(0, 0, BLOCK_SIZE + 1),                  // above 16 KiB
        req(NUM_PIECES - 1, LAST_LEN - 100, 16384), // past the piece end
        req(0, PIECE_LEN, 1),                       // begins at the end
    ];
    let mut rejected = 0;
    let mut round = 0;
    while s.conns[1].closed.is_none() {
        round += 1;
        assert!(round < 100, "the abusive peer is never disconnected");
        let mut b = Vec::new();
        for m in &bad {
            wire::encode(m, &mut b);
        }
        // Good peers request a couple of valid blocks each round.
        for k in [0, 2] {
            let mut g = Vec::new();
            for blk in every_block().into_iter().take(2) {
                wire::encode(&Message::Request(blk), &mut g);
            }
            s.receive(k, &g, 11);
        }
        s.receive(1, &b, 13);
        s.serve();
        rejected = received(&s.conns[1])
            .iter()
            .filter(|m| matches!(m, OwnedMessage::Reject(_)))
            .count();
    }
    assert!(matches!(
        s.conns[1].closed,
        Some(CloseReason::Peer(DisconnectReason::TooManyBadRequests(_)))
    ));
    // Every bad request was answered with a REJECT (plus the one sent while choked), but the
    // last: the strike that ends the connection closes it before its REJECT is written.
    let p1 = s.conns[1].peer();
    assert_eq!(rejected as u64 + 1, p1.stats().requests_rejected);
    assert!(p1.stats().bad_requests >= cfg().max_bad_requests);
    assert_eq!(p1.stats().requests_served, 0);
    for k in [0, 2] {
        assert_eq!(s.conns[k].closed, None);
        let served = s.conns[k].peer().stats().requests_served;
        assert_eq!(served, 2 * round as u64, "peer {k} served every round");
    }
    // After the abuser is gone the choker keeps serving the others.
    s.tick(10);
    for k in [0, 2] {
        assert!(!s.conns[k].peer().am_choking());
    }
}

#[test]
fn requests_beyond_reqq_are_rejected() {
    let mut s = Seeder::new(1, 4);
    s.receive(
        0,
        &script(true, &[Message::HaveNone, Message::Interested]),
        64,
    );
    s.tick(0);
    let reqq = cfg().reqq;
    let mut b = Vec::new();
    for i in 0..reqq + 3 {
        wire::encode(&req(i % NUM_PIECES, 0, 1000), &mut b);
    }
    s.receive(0, &b, 4096);
    let p = s.conns[0].peer();
    assert_eq!(p.queued(), reqq as usize);
    assert_eq!(p.stats().requests_rejected, 3);
    let rejects = received(&s.conns[0])
        .into_iter()
        .filter(|m| matches!(m, OwnedMessage::Reject(_)))
        .count();
    assert_eq!(rejects, 3);
}

#[test]
fn seed_peer_is_disconnected() {
    let mut s = Seeder::new(2, 4);
    s.receive(0, &script(true, &[Message::HaveAll]), 9);
    assert_eq!(
        s.conns[0].closed,
        Some(CloseReason::Peer(DisconnectReason::BothSeeds))
    );
    let full = [0xFCu8];
    s.receive(1, &script(false, &[Message::Bitfield(&full)]), 9);
    assert!(s.conns[1].closed.is_some());
}

#[test]
fn oversized_length_prefix_closes_before_buffering() {
    let mut s = Seeder::new(1, 4);
    let mut b = script(true, &[]);
    b.extend_from_slice(&(MAX_MESSAGE_LEN + 1).to_be_bytes());
    s.receive(0, &b, 68 + 4);
    assert!(matches!(
        s.conns[0].closed,
        Some(CloseReason::Wire(wire::WireError::TooLong { .. }))
    ));
    assert!(s.conns[0].inbox.len() <= 4);
}
