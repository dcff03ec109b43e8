//! Upload-slot choking for seed mode, sans-IO.
//!
//! A seed has nothing to gain from tit-for-tat: every interested peer wants the same thing and
//! gives nothing back. So the rule is fairness plus a full pipe:
//!
//! - **Regular slots, round-robin.** At most `upload_slots` interested peers are unchoked. Every
//!   [`RECHOKE_INTERVAL`] (10 s) the window of unchoked peers advances round-robin over the
//!   interested peers (ordered by their key), by half the slots (rounded up), so each peer keeps
//!   its slot for about two rounds and half the slots stay warm across a rechoke (a newly
//!   unchoked peer needs a round trip before its requests arrive). No preference by rate.
//! - **One optimistic slot**, on top of the regular ones, given round-robin to an interested
//!   peer outside the window, rotated every [`OPTIMISTIC_INTERVAL`] (30 s) at the latest. It
//!   is the peer just after the window, so the window's next advance usually reaches it and a
//!   new optimistic peer is chosen then (every 10 s with few peers); the 30 s timer decides
//!   only when the window does not move onto it.
//! - **No waiting for free slots.** Between rechokes ([`Choker::fill`], and [`Choker::tick`] when
//!   no rechoke is due) a peer that is unchoked but no longer interested is choked, and free
//!   slots go at once to interested peers: a seeding server should not leave its pipe idle for
//!   up to 10 s because a peer arrived just after a rechoke.
//!
//! The choker keeps no per-peer state: the caller passes the current facts ([`ChokerPeer`]) at
//! every call and applies the returned changes. It reads no clock: `now` comes from the caller.
//!
//! # Default slot count
//! [`DEFAULT_UPLOAD_SLOTS`] = 16 per torrent (`uring-bt seed` divides them over the shards: each
//! shard's choker gets `ceil(16 / shards)`). A single peer's rate
//! is bounded by its own request pipeline, CPU and round-trip time, not by us: typical clients
//! over the internet take a few MB/s to a few tens of MB/s each, so to keep a 1-10 Gbit/s pipe
//! full a seed needs a dozen or more peers downloading at once (libtorrent's default is 8,
//! transmission's 14). An unchoked slot costs nothing but the pool buffers its requests use,
//! which the shard bounds anyway, so erring high is cheap; 0 means no limit.

use std::time::{Duration, Instant};

/// How often the regular slots rotate.
pub const RECHOKE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the optimistic slot rotates at the latest (it moves earlier when the regular
/// window reaches its peer, or the peer leaves or loses interest).
pub const OPTIMISTIC_INTERVAL: Duration = Duration::from_secs(30);
/// A rechoke due within half a tick runs at that tick (callers tick once a second): it runs at
/// the tick nearest its due time.
pub const RECHOKE_SLACK: Duration = Duration::from_millis(500);
/// Regular upload slots per choker unless configured (`--upload-slots`); see the module docs.
pub const DEFAULT_UPLOAD_SLOTS: usize = 16;

/// What the choker needs to know about one peer of its torrent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChokerPeer {
    /// The caller's key for the peer (the slab key).
    pub key: usize,
    /// The peer is interested in us.
    pub interested: bool,
    /// We are currently not choking the peer.
    pub unchoked: bool,
    /// Payload bytes sent to it since the previous tick. Seed-mode round-robin does not use it
    /// (kept for statistics and a future rate-based download mode).
    pub recent_upload: u64,
}

/// The choker of one torrent on one shard.
#[derive(Debug, Clone)]
pub struct Choker {
    /// Regular slots; `usize::MAX` when unlimited.
    slots: usize,
    /// The regular window starts at the first interested key `>= cursor`.
    cursor: usize,
    /// The optimistic peer, if any.
    optimistic: Option<usize>,
    /// The last key given the optimistic slot (its round-robin position).
    opt_cursor: usize,
    next_rechoke: Option<Instant>,
    /// When the last full rechoke ran.
    last_rechoke: Option<Instant>,
    next_optimistic: Option<Instant>,
    /// Scratch: interested keys, sorted.
    interested: Vec<usize>,
    /// Scratch: keys to unchoke, sorted.
    desired: Vec<usize>,
}

impl Choker {
    /// A choker with `upload_slots` regular slots (0 = every interested peer is unchoked).
    pub fn new(upload_slots: usize) -> Self {
        Choker {
            slots: if upload_slots == 0 {
                usize::MAX
            } else {
                upload_slots
            },
            cursor: 0,
            optimistic: None,
            opt_cursor: 0,
            next_rechoke: None,
            last_rechoke: None,
            next_optimistic: None,
            interested: Vec::new(),
            desired: Vec::new(),
        }
    }

    /// Regular slots (`usize::MAX` for unlimited).
    pub fn upload_slots(&self) -> usize {
        self.slots
    }

    /// When the last full rechoke ran (a [`Choker::tick`] that rotated the window).
    pub fn last_rechoke(&self) -> Option<Instant> {
        self.last_rechoke
    }

    /// The peer holding the optimistic slot.
    pub fn optimistic(&self) -> Option<usize> {
        self.optimistic
    }

    /// Call periodically (e.g. every second) with every peer of the torrent. Runs a full
    /// rechoke when one is due (the first call, then every [`RECHOKE_INTERVAL`]), otherwise only
    /// [`Choker::fill`]. Returns the changes to apply: `(key, true)` = unchoke, `(key, false)` =
    /// choke. Peers not listed keep their state.
    pub fn tick(&mut self, now: Instant, peers: &[ChokerPeer]) -> Vec<(usize, bool)> {
        if self.next_rechoke.is_none_or(|t| now + RECHOKE_SLACK >= t) {
            // A fixed cadence: the next one is due an interval after this one was (a caller
            // ticking every second reads its clock a little early or late; counting from
            // `now` would let rechokes drift to 11 s apart), unless we are far behind.
            let next = match self.next_rechoke {
                Some(t) if now < t + RECHOKE_INTERVAL / 2 => t + RECHOKE_INTERVAL,
                _ => now + RECHOKE_INTERVAL,
            };
            self.next_rechoke = Some(next);
            self.last_rechoke = Some(now);
            self.rechoke(now, peers)
        } else {
            self.fill(now, peers)
        }
    }

    /// Quick pass between rechokes (call it when a peer's interest changed or a peer left):
    /// chokes unchoked peers that are not interested, gives free regular slots to choked
    /// interested peers (round-robin order from the window's cursor), and fills an empty
    /// optimistic slot. Rotates nothing.
    pub fn fill(&mut self, now: Instant, peers: &[ChokerPeer]) -> Vec<(usize, bool)> {
        let mut changes = Vec::new();
        if let Some(o) = self.optimistic {
            if !peers.iter().any(|p| p.key == o && p.interested) {
                self.optimistic = None;
            }
        }
        let mut regular = 0usize;
        for p in peers {
            if p.unchoked && !p.interested {
                changes.push((p.key, false));
            } else if p.unchoked && Some(p.key) != self.optimistic {
                regular += 1;
            }
        }
        self.collect_interested(peers, |p| !p.unchoked);
        let mut free = self.slots.saturating_sub(regular);
        let n = self.interested.len();
        let start = self.interested.partition_point(|&k| k < self.cursor);
        let mut taken = 0;
        while free > 0 && taken < n {
            let key = self.interested[(start + taken) % n];
            changes.push((key, true));
            free -= 1;
            taken += 1;
        }
        if self.optimistic.is_none() && taken < n {
            // Candidates: the choked interested peers not just unchoked above.
            let rest: Vec<usize> = (taken..n)
                .map(|i| self.interested[(start + i) % n])
                .collect();
            if let Some(key) = self.next_after(self.opt_cursor, &rest) {
                self.optimistic = Some(key);
                self.opt_cursor = key;
                self.next_optimistic = Some(now + OPTIMISTIC_INTERVAL);
                changes.push((key, true));
            }
        }
        changes
    }

    /// Full rechoke: advance the round-robin window, rotate the optimistic slot if due, and
    /// return every change needed to reach that set.
    fn rechoke(&mut self, now: Instant, peers: &[ChokerPeer]) -> Vec<(usize, bool)> {
        self.collect_interested(peers, |_| true);
        let n = self.interested.len();
        self.desired.clear();
        if n <= self.slots {
            self.desired.extend_from_slice(&self.interested);
        } else {
            let start = self.interested.partition_point(|&k| k < self.cursor);
            for i in 0..self.slots {
                self.desired.push(self.interested[(start + i) % n]);
            }
            let rotate = self.slots.div_ceil(2);
            // The next window starts `rotate` peers further on (wrapping).
            self.cursor = self.interested[(start + rotate) % n];
        }
        self.desired.sort_unstable();

        // Optimistic slot: keep it until due, unless its peer left, lost interest or is now in
        // the regular window.
        let opt_valid = self
            .optimistic
            .is_some_and(|o| self.interested.binary_search(&o).is_ok() && !self.in_desired(o));
        let due = self.next_optimistic.is_none_or(|t| now >= t);
        if !opt_valid || due {
            let candidates: Vec<usize> = self
                .interested
                .iter()
                .copied()
                .filter(|&k| !self.in_desired(k))
                .collect();
            self.optimistic = self.next_after(self.opt_cursor, &candidates);
            if let Some(o) = self.optimistic {
                self.opt_cursor = o;
                self.next_optimistic = Some(now + OPTIMISTIC_INTERVAL);
            } else {
                self.next_optimistic = None;
            }
        }
        let mut changes = Vec::new();
        for p in peers {
            let want = self.in_desired(p.key) || Some(p.key) == self.optimistic;
            if want != p.unchoked {
                changes.push((p.key, want));
            }
        }
        changes
    }

    fn in_desired(&self, key: usize) -> bool {
        self.desired.binary_search(&key).is_ok()
    }

    /// Sorted keys of interested peers matching `filter` into `self.interested`.
    fn collect_interested(&mut self, peers: &[ChokerPeer], filter: impl Fn(&ChokerPeer) -> bool) {
        self.interested.clear();
        self.interested.extend(
            peers
                .iter()
                .filter(|p| p.interested && filter(p))
                .map(|p| p.key),
        );
        self.interested.sort_unstable();
        self.interested.dedup();
    }

    /// The first key in `keys` after `after` in round-robin order (wrapping to the smallest).
    fn next_after(&self, after: usize, keys: &[usize]) -> Option<usize> {
        keys.iter()
            .copied()
            .filter(|&k| k > after)
            .min()
            .or_else(|| keys.iter().copied().min())
    }
}

impl Default for Choker {
    fn default() -> Self {
        Choker::new(DEFAULT_UPLOAD_SLOTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn rechokes_keep_a_ten_second_cadence_when_ticks_come_a_little_early_or_late() {
        for skew_ms in [-4i64, -1, 0, 3] {
            let mut c = Choker::new(2);
            let t0 = Instant::now();
            let peers: Vec<ChokerPeer> = (0..5)
                .map(|key| ChokerPeer {
                    key,
                    interested: true,
                    unchoked: false,
                    recent_upload: 0,
                })
                .collect();
            let mut at = Vec::new();
            for i in 0..100i64 {
                // A 1 s ticker whose readings drift by `skew_ms` per tick.
                let ms = (i * (1000 + skew_ms)).max(0) as u64;
                let now = t0 + Duration::from_millis(ms);
                c.tick(now, &peers);
                if c.last_rechoke() == Some(now) {
                    at.push(ms);
                }
            }
            for w in at.windows(2) {
                let gap = w[1] - w[0];
                assert!(
                    (9_400..=10_600).contains(&gap),
                    "skew {skew_ms} ms: gap {gap} ms in {at:?}"
                );
            }
            assert!(at.len() >= 9, "skew {skew_ms}: {at:?}");
        }
    }

    /// A simulated swarm: key -> (interested, unchoked). Applies the choker's decisions.
    struct Sim {
        choker: Choker,
        peers: BTreeMap<usize, (bool, bool)>,
        t0: Instant,
    }

    impl Sim {
        fn new(slots: usize, interested: impl IntoIterator<Item = usize>) -> Self {
            Sim {
                choker: Choker::new(slots),
                peers: interested.into_iter().map(|k| (k, (true, false))).collect(),
                t0: Instant::now(),
            }
        }

        fn input(&self) -> Vec<ChokerPeer> {
            self.peers
                .iter()
                .map(|(&key, &(interested, unchoked))| ChokerPeer {
                    key,
                    interested,
                    unchoked,
                    recent_upload: 0,
                })
                .collect()
        }

        fn apply(&mut self, changes: &[(usize, bool)]) {
            for &(k, u) in changes {
                let p = self.peers.get_mut(&k).expect("decision for a known peer");
                assert_ne!(p.1, u, "decision for {k} changes nothing");
                p.1 = u;
            }
        }

        fn tick(&mut self, secs: u64) -> Vec<(usize, bool)> {
            let input = self.input();
            let c = self
                .choker
                .tick(self.t0 + Duration::from_secs(secs), &input);
            self.apply(&c);
            c
        }

        fn fill(&mut self, secs: u64) -> Vec<(usize, bool)> {
            let input = self.input();
            let c = self
                .choker
                .fill(self.t0 + Duration::from_secs(secs), &input);
            self.apply(&c);
            c
        }

        fn unchoked(&self) -> Vec<usize> {
            self.peers
                .iter()
                .filter(|(_, &(_, u))| u)
                .map(|(&k, _)| k)
                .collect()
        }

        /// Unchoked, interested, not the optimistic one.
        fn regular(&self) -> usize {
            self.peers
                .iter()
                .filter(|(&k, &(i, u))| i && u && Some(k) != self.choker.optimistic())
                .count()
        }
    }

    #[test]
    fn few_interested_peers_are_all_unchoked_at_once() {
        let mut s = Sim::new(4, [3, 1, 2]);
        s.tick(0);
        assert_eq!(s.unchoked(), [1, 2, 3]);
        assert_eq!(s.choker.optimistic(), None);
        // A steady state produces no decisions.
        assert!(s.tick(1).is_empty());
        assert!(s.tick(10).is_empty());
        assert!(s.tick(30).is_empty());
    }

    #[test]
    fn newcomer_gets_a_free_slot_without_waiting_for_the_rechoke() {
        let mut s = Sim::new(4, [1, 2]);
        s.tick(0);
        s.peers.insert(7, (true, false));
        // One second later, long before the next rechoke.
        assert_eq!(s.tick(1), [(7, true)]);
        // `fill` alone does the same.
        s.peers.insert(9, (true, false));
        assert_eq!(s.fill(2), [(9, true)]);
        assert_eq!(s.unchoked(), [1, 2, 7, 9]);
        // Slots full: the next one gets the optimistic slot, and one more has to wait.
        s.peers.insert(11, (true, false));
        assert_eq!(s.fill(3), [(11, true)]);
        assert_eq!(s.choker.optimistic(), Some(11));
        s.peers.insert(12, (true, false));
        assert!(s.fill(4).is_empty());
    }

    #[test]
    fn uninterested_unchoked_peers_are_choked_and_slot_reused() {
        let mut s = Sim::new(2, [1, 2, 3, 4]);
        s.tick(0);
        assert_eq!(s.regular(), 2);
        let before = s.unchoked();
        let gone = *before
            .iter()
            .find(|&&k| Some(k) != s.choker.optimistic())
            .unwrap();
        s.peers.get_mut(&gone).unwrap().0 = false;
        let c = s.fill(1);
        assert!(c.contains(&(gone, false)), "{c:?}");
        assert_eq!(s.regular(), 2);
        assert!(!s.unchoked().contains(&gone));
    }

    #[test]
    fn regular_slots_rotate_round_robin_every_10s() {
        let keys: Vec<usize> = (0..20).map(|i| i * 3 + 1).collect();
        let mut s = Sim::new(4, keys.clone());
        let mut turns: BTreeMap<usize, u32> = BTreeMap::new();
        let mut last = s.unchoked();
        for sec in 0..200u64 {
            s.tick(sec);
            assert!(s.regular() <= 4, "at {sec}s: {:?}", s.unchoked());
            assert!(s.unchoked().len() <= 5);
            let now = s.unchoked();
            if sec % 10 != 0 {
                assert_eq!(now, last, "changes only at a rechoke ({sec}s)");
            } else {
                for k in &now {
                    if Some(*k) != s.choker.optimistic() {
                        *turns.entry(*k).or_default() += 1;
                    }
                }
            }
            last = now;
        }
        // 20 rechokes × 4 slots = 80 regular turns over 20 peers: 4 each, exactly.
        assert_eq!(turns.len(), 20, "everyone was served: {turns:?}");
        assert!(turns.values().all(|&t| t == 4), "{turns:?}");
    }

    #[test]
    fn optimistic_rotates_every_30s_outside_the_window() {
        let mut s = Sim::new(2, 0..10);
        let mut seen = Vec::new();
        for sec in 0..=120u64 {
            s.tick(sec);
            let o = s
                .choker
                .optimistic()
                .expect("enough peers for an optimistic slot");
            assert!(s.unchoked().contains(&o));
            if seen.last() != Some(&o) {
                seen.push(o);
            }
        }
        // It may also move when the rotating window reaches it; it changes at least at 0, 30,
        // 60, 90, 120 s and always to a peer outside the regular window.
        assert!(seen.len() >= 5, "{seen:?}");
        let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
        assert!(distinct.len() >= 4, "{seen:?}");
    }

    #[test]
    fn optimistic_kept_between_rotations() {
        // 1 slot, 3 peers; the window advances by 1 every 10 s. The optimistic slot holds
        // for 30 s unless the window takes its peer.
        let mut s = Sim::new(1, [10, 20, 30]);
        s.tick(0);
        let o = s.choker.optimistic().unwrap();
        for sec in 1..10 {
            s.tick(sec);
            assert_eq!(s.choker.optimistic(), Some(o));
        }
    }

    #[test]
    fn departed_optimistic_is_replaced() {
        let mut s = Sim::new(1, [1, 2, 3, 4]);
        s.tick(0);
        let o = s.choker.optimistic().unwrap();
        s.peers.remove(&o);
        let c = s.fill(1);
        let n = s.choker.optimistic().unwrap();
        assert_ne!(n, o);
        assert_eq!(c, [(n, true)]);
    }

    #[test]
    fn zero_slots_means_unlimited() {
        let mut s = Sim::new(0, 0..100);
        s.tick(0);
        assert_eq!(s.unchoked().len(), 100);
        assert_eq!(s.choker.optimistic(), None);
        assert_eq!(Choker::default().upload_slots(), DEFAULT_UPLOAD_SLOTS);
    }

    #[test]
    fn changes_only_name_known_peers_and_real_changes() {
        // `Sim::apply` asserts both; churn peers in and out across rechokes.
        let mut s = Sim::new(3, 0..8);
        for sec in 0..100u64 {
            if sec % 7 == 0 {
                let k = 100 + sec as usize;
                s.peers.insert(k, (true, false));
            }
            if sec % 11 == 0 {
                if let Some(&k) = s.peers.keys().next() {
                    s.peers.remove(&k);
                }
            }
            if sec % 5 == 0 {
                if let Some(p) = s.peers.values_mut().nth(2) {
                    p.0 = !p.0;
                }
            }
            s.tick(sec);
            assert!(s.regular() <= 3);
            for &(i, u) in s.peers.values() {
                assert!(!u || i, "an unchoked peer is interested");
            }
        }
    }
}
