//! The dialer: which peers a seeding server connects out to, and on which shard.
//!
//! Peers come from trackers (and later PEX and DHT) as [`FoundPeers`]; each torrent keeps a
//! bounded list of them with a back-off per peer. Once a second ([`Dialer::tick`]) the dialer
//! sends `Dial` commands to the shards, round-robin, within its bounds; the shards connect,
//! handshake and report back ([`ShardEvent`]). Transmission, for one, never dials a loopback
//! peer a tracker gives it: only a seeder that dials can serve it.
//!
//! # Bounds
//! - peers listed per torrent: [`DialerConfig::max_listed`] (new ones are ignored beyond it);
//! - outgoing connections (connected or being set up) per torrent:
//!   [`DialerConfig::max_per_torrent`], and in all: [`DialerConfig::max_total`];
//! - dials started per tick: [`DialerConfig::max_per_tick`]; each shard also caps its own
//!   half-open dials (`ShardConfig::max_half_open`) and its command channel is bounded (a full
//!   channel leaves the peer for the next tick);
//! - a peer that failed waits `retry_base x 2^(failures-1)` (capped at `retry_max`) before the
//!   next try and is forgotten after `max_failures`; a peer found to be a seed is not dialed
//!   again while we seed (two seeds have nothing to exchange).
//!
//! Private torrents (BEP 27) take peers from their trackers only, which is all this module is
//! fed for them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::control::announce::FoundPeers;
use crate::server::state::{ShardCmd, ShardEvent};

/// The dialer's limits.
#[derive(Debug, Clone)]
pub struct DialerConfig {
    pub max_listed: usize,
    pub max_per_torrent: usize,
    pub max_total: usize,
    pub max_per_tick: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub max_failures: u32,
}

impl Default for DialerConfig {
    fn default() -> Self {
        DialerConfig {
            max_listed: 1000,
            max_per_torrent: 32,
            max_total: 256,
            max_per_tick: 64,
            retry_base: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            max_failures: 6,
        }
    }
}

/// The shards' command channels, by shard index; replaced when the supervisor restarts a
/// shard.
pub type ShardLinks = Rc<RefCell<Vec<tokio::sync::mpsc::Sender<ShardCmd>>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Dialing,
    Connected,
    /// A seed: nothing to exchange while we seed.
    Seed,
}

#[derive(Debug)]
struct Candidate {
    state: State,
    failures: u32,
    next_try: Instant,
    /// When the dial in flight was sent (for [`DIAL_STALE`]).
    dialed_at: Instant,
}

/// A dial with no report after this long counts as failed (its report was dropped from a full
/// event channel, or its shard restarted): a connect takes at most 10 s and a handshake 10 s.
pub const DIAL_STALE: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct TorrentPeers {
    index: usize,
    peers: HashMap<SocketAddr, Candidate>,
    /// Dialing or connected.
    outgoing: usize,
    /// The shard that dials for it (a download's home), else round-robin.
    home: Option<usize>,
}

/// Counters for the status line.
#[derive(Debug, Default, Clone, Copy)]
pub struct DialerStats {
    pub listed: usize,
    pub outgoing: usize,
    pub dials: u64,
    pub connected: u64,
    pub failed: u64,
}

/// See the module docs.
pub struct Dialer {
    cfg: DialerConfig,
    shards: ShardLinks,
    /// Our own listening addresses: never dialed (a tracker hands us our own address).
    own: Vec<SocketAddr>,
    torrents: HashMap<[u8; 20], TorrentPeers>,
    by_index: HashMap<usize, [u8; 20]>,
    next_shard: usize,
    outgoing: usize,
    stats: DialerStats,
}

impl Dialer {
    pub fn new(cfg: DialerConfig, shards: ShardLinks, own: Vec<SocketAddr>) -> Self {
        Dialer {
            cfg,
            shards,
            own,
            torrents: HashMap::new(),
            by_index: HashMap::new(),
            next_shard: 0,
            outgoing: 0,
            stats: DialerStats::default(),
        }
    }

    /// A torrent whose peers may be dialed (its registry index).
    pub fn add_torrent(&mut self, info_hash: [u8; 20], index: usize) {
        self.torrents
            .entry(info_hash)
            .or_insert_with(|| TorrentPeers {
                index,
                ..TorrentPeers::default()
            });
        self.by_index.insert(index, info_hash);
    }

    fn is_own(&self, a: &SocketAddr) -> bool {
        self.own.iter().any(|o| {
            o.port() == a.port()
                && (o.ip() == a.ip() || a.ip().is_loopback() || o.ip().is_unspecified())
        })
    }

    /// Dials for torrent `index` go to shard `shard` only (the home of its download).
    pub fn set_home(&mut self, index: usize, shard: usize) {
        if let Some(tp) = self
            .by_index
            .get(&index)
            .and_then(|ih| self.torrents.get_mut(ih))
        {
            tp.home = Some(shard);
        }
    }

    /// Peers a tracker (or PEX) returned.
    pub fn on_found(&mut self, found: FoundPeers, now: Instant) {
        let own: Vec<bool> = found.peers.iter().map(|a| self.is_own(a)).collect();
        let Some(tp) = self.torrents.get_mut(&found.info_hash) else {
            return;
        };
        for (addr, own) in found.peers.into_iter().zip(own) {
            if own || addr.port() == 0 || addr.ip().is_unspecified() {
                continue;
            }
            if tp.peers.len() >= self.cfg.max_listed && !tp.peers.contains_key(&addr) {
                break;
            }
            tp.peers.entry(addr).or_insert(Candidate {
                state: State::Idle,
                failures: 0,
                next_try: now,
                dialed_at: now,
            });
        }
    }

    /// A shard's report on a connection we asked for.
    pub fn on_event(&mut self, e: ShardEvent, now: Instant) {
        let (torrent, addr, ok, seed, closed) = match e {
            ShardEvent::Found { torrent, peers } => {
                if let Some(ih) = self.by_index.get(&torrent).copied() {
                    self.on_found(
                        FoundPeers {
                            info_hash: ih,
                            tracker: "pex".into(),
                            peers,
                        },
                        now,
                    );
                }
                return;
            }
            ShardEvent::DialDone {
                torrent,
                addr,
                connected,
                seed,
                ..
            } => (torrent, addr, connected, seed, false),
            ShardEvent::Closed {
                torrent,
                addr,
                seed,
                ..
            } => (torrent, addr, false, seed, true),
        };
        let Some(ih) = self.by_index.get(&torrent) else {
            return;
        };
        let Some(tp) = self.torrents.get_mut(ih) else {
            return;
        };
        let Some(c) = tp.peers.get_mut(&addr) else {
            return;
        };
        let was_out = matches!(c.state, State::Dialing | State::Connected);
        if ok {
            c.state = State::Connected;
            c.failures = 0;
            self.stats.connected += 1;
            return;
        }
        if was_out {
            tp.outgoing = tp.outgoing.saturating_sub(1);
            self.outgoing = self.outgoing.saturating_sub(1);
        }
        if seed {
            c.state = State::Seed;
            return;
        }
        if closed {
            // It was connected: try again after the base delay, without counting a failure.
            c.state = State::Idle;
            c.next_try = now + self.cfg.retry_base;
            return;
        }
        self.stats.failed += 1;
        c.failures += 1;
        if c.failures >= self.cfg.max_failures {
            tp.peers.remove(&addr);
            return;
        }
        c.state = State::Idle;
        let backoff = self
            .cfg
            .retry_base
            .saturating_mul(1u32 << (c.failures - 1).min(16))
            .min(self.cfg.retry_max);
        c.next_try = now + backoff;
    }

    /// Starts the dials that are due, within the bounds. Returns how many were started.
    pub fn tick(&mut self, now: Instant) -> usize {
        let links = self.shards.borrow();
        if links.is_empty() {
            return 0;
        }
        let mut started = 0;
        for tp in self.torrents.values_mut() {
            for c in tp.peers.values_mut() {
                if c.state == State::Dialing
                    && now.saturating_duration_since(c.dialed_at) > DIAL_STALE
                {
                    c.state = State::Idle;
                    c.failures += 1;
                    c.next_try = now + self.cfg.retry_base;
                    tp.outgoing = tp.outgoing.saturating_sub(1);
                    self.outgoing = self.outgoing.saturating_sub(1);
                }
            }
            for (addr, c) in tp.peers.iter_mut() {
                if started >= self.cfg.max_per_tick
                    || self.outgoing >= self.cfg.max_total
                    || tp.outgoing >= self.cfg.max_per_torrent
                {
                    break;
                }
                if c.state != State::Idle || c.next_try > now {
                    continue;
                }
                let shard = match tp.home {
                    Some(h) if h < links.len() => h,
                    _ => self.next_shard % links.len(),
                };
                let cmd = ShardCmd::Dial {
                    torrent: tp.index,
                    addr: *addr,
                };
                if links[shard].try_send(cmd).is_err() {
                    // That shard's queue is full (or it is restarting): next tick.
                    continue;
                }
                self.next_shard = self.next_shard.wrapping_add(1);
                c.state = State::Dialing;
                c.dialed_at = now;
                tp.outgoing += 1;
                self.outgoing += 1;
                self.stats.dials += 1;
                started += 1;
            }
        }
        started
    }

    pub fn stats(&self) -> DialerStats {
        DialerStats {
            listed: self.torrents.values().map(|t| t.peers.len()).sum(),
            outgoing: self.outgoing,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(
        n_shards: usize,
        cfg: DialerConfig,
    ) -> (Dialer, Vec<tokio::sync::mpsc::Receiver<ShardCmd>>) {
        let mut txs = Vec::new();
        let mut rxs = Vec::new();
        for _ in 0..n_shards {
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            txs.push(tx);
            rxs.push(rx);
        }
        let own = vec!["127.0.0.1:6881".parse().unwrap()];
        (Dialer::new(cfg, Rc::new(RefCell::new(txs)), own), rxs)
    }

    fn found(peers: &[&str]) -> FoundPeers {
        FoundPeers {
            info_hash: [1; 20],
            tracker: "http://t/announce".into(),
            peers: peers.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    fn drain(rxs: &mut [tokio::sync::mpsc::Receiver<ShardCmd>]) -> Vec<(usize, SocketAddr)> {
        let mut out = Vec::new();
        for (i, rx) in rxs.iter_mut().enumerate() {
            while let Ok(ShardCmd::Dial { addr, .. }) = rx.try_recv() {
                out.push((i, addr));
            }
        }
        out
    }

    #[test]
    fn dials_spread_over_shards_skip_ourselves_and_respect_bounds() {
        let cfg = DialerConfig {
            max_per_torrent: 3,
            ..DialerConfig::default()
        };
        let (mut d, mut rxs) = dialer(2, cfg);
        d.add_torrent([1; 20], 0);
        let now = Instant::now();
        d.on_found(
            found(&[
                "127.0.0.1:6881",
                "127.0.0.2:7000",
                "127.0.0.3:7000",
                "127.0.0.4:7000",
                "127.0.0.5:7000",
                "127.0.0.6:0",
            ]),
            now,
        );
        assert_eq!(
            d.stats().listed,
            4,
            "our own address and port 0 are not listed"
        );
        assert_eq!(d.tick(now), 3, "at most max_per_torrent outgoing");
        let sent = drain(&mut rxs);
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().any(|(s, _)| *s == 0) && sent.iter().any(|(s, _)| *s == 1));
        assert_eq!(d.tick(now), 0, "nothing more while three are out");
        // No report for the three (dropped events): after DIAL_STALE they count as failed and
        // are dialed again after the back-off.
        let later = now + DIAL_STALE + Duration::from_secs(1);
        assert_eq!(d.tick(later), 1, "the fourth peer, in a freed slot");
        assert_eq!(d.stats().outgoing, 1);
        drain(&mut rxs);
        assert_eq!(d.tick(later + Duration::from_secs(30)), 2);
    }

    #[test]
    fn failures_back_off_and_are_forgotten_seeds_are_not_redialed() {
        let cfg = DialerConfig {
            retry_base: Duration::from_secs(10),
            max_failures: 3,
            ..DialerConfig::default()
        };
        let (mut d, mut rxs) = dialer(1, cfg);
        d.add_torrent([1; 20], 0);
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.2:7000".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:7000".parse().unwrap();
        d.on_found(found(&["127.0.0.2:7000", "127.0.0.3:7000"]), t0);
        assert_eq!(d.tick(t0), 2);
        drain(&mut rxs);
        let fail = |addr| ShardEvent::DialDone {
            shard: 0,
            torrent: 0,
            addr,
            connected: false,
            seed: false,
        };
        d.on_event(fail(a), t0);
        d.on_event(
            ShardEvent::DialDone {
                shard: 0,
                torrent: 0,
                addr: b,
                connected: false,
                seed: true,
            },
            t0,
        );
        assert_eq!(d.tick(t0 + Duration::from_secs(9)), 0, "back-off: 10 s");
        assert_eq!(
            d.tick(t0 + Duration::from_secs(10)),
            1,
            "a again; b is a seed"
        );
        assert_eq!(drain(&mut rxs), vec![(0, a)]);
        let t1 = t0 + Duration::from_secs(10);
        d.on_event(fail(a), t1);
        assert_eq!(
            d.tick(t1 + Duration::from_secs(19)),
            0,
            "back-off doubled: 20 s"
        );
        assert_eq!(d.tick(t1 + Duration::from_secs(20)), 1);
        d.on_event(fail(a), t1 + Duration::from_secs(20));
        assert_eq!(
            d.stats().listed,
            1,
            "a forgotten after 3 failures, b kept as a seed"
        );
        assert_eq!(d.tick(t1 + Duration::from_secs(3600)), 0);
        assert_eq!(d.stats().outgoing, 0);
    }

    #[test]
    fn a_closed_connection_is_retried_later_and_the_list_is_bounded() {
        let cfg = DialerConfig {
            max_listed: 2,
            retry_base: Duration::from_secs(5),
            ..DialerConfig::default()
        };
        let (mut d, mut rxs) = dialer(1, cfg);
        d.add_torrent([1; 20], 0);
        let t0 = Instant::now();
        d.on_found(found(&["127.0.0.2:1", "127.0.0.3:1", "127.0.0.4:1"]), t0);
        assert_eq!(d.stats().listed, 2);
        assert_eq!(d.tick(t0), 2);
        let sent = drain(&mut rxs);
        let a = sent[0].1;
        d.on_event(
            ShardEvent::DialDone {
                shard: 0,
                torrent: 0,
                addr: a,
                connected: true,
                seed: false,
            },
            t0,
        );
        assert_eq!(d.stats().outgoing, 2);
        d.on_event(
            ShardEvent::Closed {
                shard: 0,
                torrent: 0,
                addr: a,
                seed: false,
            },
            t0,
        );
        assert_eq!(d.stats().outgoing, 1);
        assert_eq!(d.tick(t0 + Duration::from_secs(4)), 0);
        assert_eq!(d.tick(t0 + Duration::from_secs(5)), 1);
    }
}
