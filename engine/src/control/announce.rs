//! The announcer: keeps every torrent announced to its trackers (BEP 3, 12, 15, 27), on the
//! control plane's current-thread tokio runtime (never on a shard).
//!
//! One [`Announcer`] serves every torrent; torrents are [`Announcer::add`]ed and
//! [`Announcer::remove`]d while it runs, and [`Announcer::run`] drives the announces until its
//! shutdown signal, then sends `stopped` and returns a [`StopReport`].
//!
//! # What it does
//! - **Tiers (BEP 12).** Each torrent's tiers are shuffled once, when it is added, each tier on
//!   its own; trackers are tried in order; a tracker that answers moves to the front of its
//!   tier; a failure goes on at once to the next tracker of the tier, then the next tier. A
//!   walk starts from the top each time, so a better tier whose back-off ran out is tried again
//!   at the next announce. Only one tracker (the first that answers) is announced to, unless
//!   `announce_to_all_tiers`: then each tier is walked on its own, in parallel.
//! - **Private torrents (BEP 27)**: one tracker at a time, whatever `announce_to_all_tiers`.
//! - **Back-off**: a tracker that failed is not tried again for `backoff_base x 2^(failures-1)`,
//!   at most `backoff_max`. A tracker with an unusable URL (scheme other than http, https,
//!   udp) is never tried. When every tracker of a walk is backing off, the walk waits for the
//!   first to be usable again.
//! - **Scheduling**: one `BinaryHeap` of (due, torrent, slot) entries (a slot is one walk: the
//!   torrent, or one tier of it); entries made stale by a reschedule are skipped when popped
//!   and the heap is rebuilt when stale ones outnumber the live ones. At most `max_in_flight`
//!   requests (announces and scrapes) in flight, and at most `rate` started per second (a
//!   token bucket holding one token, or [`BURST`] worth at high rates). A torrent's first
//!   announce comes at a random offset within `(torrents not yet announced) / rate` seconds of
//!   its addition, so torrents added together spread their `started` evenly.
//! - **Re-announce** at the tracker's `interval`, up to [`JITTER`] of it earlier, never before
//!   its `min interval`; `completed` (after [`Announcer::completed`]) goes out at once (not held
//!   by `min interval`, which bounds re-announces). The event per tracker: `started` until one succeeded,
//!   then `completed` if pending, else none. `uploaded`/`downloaded`/`left` are read from the
//!   torrent's `progress()` when each announce starts. A `tracker id` is kept per tracker and
//!   sent back.
//! - **Scrape**: a tracker that answered is scraped when its status is shown
//!   ([`Announcer::status`]) and it has no seeders/leechers figures younger than
//!   [`SCRAPE_MIN_INTERVAL`] (from an announce or a scrape), at most once per that interval.
//! - **Peers** found go out through a channel with `try_send`: a full channel drops the batch
//!   and counts it ([`Announcer::dropped_peer_batches`]); the announcer never blocks on it.
//! - **Stop**: [`Announcer::remove`] queues `stopped` for each tracker that got a successful
//!   announce. When the shutdown signal turns true (or its sender is dropped), scheduling stops,
//!   requests in flight are abandoned, and `stopped` goes to every tracker that got a successful
//!   announce, in parallel (at most `max_in_flight` at once), all within `stop_timeout`.
//! - **Logs**: one `info` event per completed announce, target `uring_bt::announce`, fields
//!   `info_hash`, `tracker`, `event`, `ok`, `peers`; a `warn` with the reason on failure.
//!
//! # Bounds
//! Configuration: `max_in_flight` (16), `rate` (20/s), `numwant` (50), `stop_timeout` (5 s),
//! `backoff_base` (30 s), `backoff_max` (30 min) and the client's ([`ClientConfig`]: timeouts,
//! redirects, UDP retransmissions). Constants: [`MAX_TRACKERS_PER_TORRENT`] trackers kept per
//! torrent (duplicates dropped), URLs of at most [`MAX_URL_LEN`] bytes, [`MAX_SCRAPE_QUEUE`]
//! scrapes queued, [`MAX_STOP_QUEUE`] `stopped` announces queued by removals (more are dropped
//! and logged), [`SCRAPE_MIN_INTERVAL`], [`JITTER`], [`BURST`]; intervals from trackers are
//! clamped by the codec to `[MIN_INTERVAL, MAX_INTERVAL]`.
//!
//! # Threading
//! The handle is an `Rc` around a `RefCell`: `!Send`, used on the control runtime's one thread
//! only. No borrow is held across an `.await`, and a torrent's `progress` closure is called
//! with no borrow held (it may call back into the announcer). The requests themselves run as
//! `Send` tasks on the same runtime ([`TrackerClient`] futures).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use uring_bt_proto::metainfo::hex;

use crate::control::tracker::{
    scheme_of, AnnounceRequest, AnnounceResponse, ClientConfig, Event, Rng, ScrapeStats,
    TrackerClient, TrackerError,
};

/// Trackers kept per torrent (over all tiers, after removing duplicates); the rest are ignored.
pub const MAX_TRACKERS_PER_TORRENT: usize = 64;
/// Longest tracker URL kept (bytes).
pub const MAX_URL_LEN: usize = 2048;
/// A tracker is scraped at most this often, and not while it has figures younger than this.
pub const SCRAPE_MIN_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Scrapes queued (asked for by [`Announcer::status`]) at most; more are not queued.
pub const MAX_SCRAPE_QUEUE: usize = 1024;
/// `stopped` announces queued by [`Announcer::remove`] at most; more are dropped.
pub const MAX_STOP_QUEUE: usize = 65536;
/// Re-announces come up to this fraction of the interval early (random).
pub const JITTER: f64 = 0.10;
/// The token bucket holds `max(1, rate x BURST)` tokens.
pub const BURST: Duration = Duration::from_millis(10);

/// How the announcer behaves; [`AnnouncerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct AnnouncerConfig {
    pub peer_id: [u8; 20],
    /// The port announced (peers connect to it).
    pub port: u16,
    /// The `ip` announced (`--announce-ip`), if any.
    pub ip: Option<IpAddr>,
    /// Peers asked for per announce (default 50).
    pub numwant: u32,
    /// Requests (announces and scrapes) in flight at most (default 16).
    pub max_in_flight: usize,
    /// Requests started per second at most (default 20).
    pub rate: f64,
    /// Announce to one tracker of every tier instead of the first that answers (default
    /// false; never for private torrents).
    pub announce_to_all_tiers: bool,
    /// Time for all `stopped` announces at shutdown (default 5 s).
    pub stop_timeout: Duration,
    /// First back-off after a failure (default 30 s); doubles with each failure in a row.
    pub backoff_base: Duration,
    /// Longest back-off (default 30 min).
    pub backoff_max: Duration,
    pub client: ClientConfig,
}

impl AnnouncerConfig {
    /// The defaults, for `peer_id` listening on `port`.
    pub fn new(peer_id: [u8; 20], port: u16) -> AnnouncerConfig {
        AnnouncerConfig {
            peer_id,
            port,
            ip: None,
            numwant: 50,
            max_in_flight: 16,
            rate: 20.0,
            announce_to_all_tiers: false,
            stop_timeout: Duration::from_secs(5),
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30 * 60),
            client: ClientConfig::default(),
        }
    }

    fn validate(&self) -> std::io::Result<()> {
        let bad = |m: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                m.to_string(),
            ))
        };
        if self.max_in_flight == 0 {
            return bad("announcer: max_in_flight must be at least 1");
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return bad("announcer: rate must be a positive number of announces per second");
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return bad("announcer: need 0 < backoff_base <= backoff_max");
        }
        Ok(())
    }
}

/// A torrent's transfer figures, as announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
}

/// A torrent to announce.
pub struct AnnounceTorrent {
    pub info_hash: [u8; 20],
    pub name: String,
    /// The announce list (BEP 12), or `[[announce]]`.
    pub tiers: Vec<Vec<String>>,
    /// BEP 27: one tracker at a time.
    pub private: bool,
    /// Read when each announce starts.
    pub progress: Box<dyn Fn() -> Progress>,
}

/// Peers a tracker gave for a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPeers {
    pub info_hash: [u8; 20],
    pub tracker: String,
    pub peers: Vec<SocketAddr>,
}

/// One tracker's state, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerState {
    /// Not announced to yet.
    NotYet,
    /// An announce is in flight.
    Updating,
    /// The last announce succeeded. Seeders/leechers from that announce or the last scrape,
    /// whichever is newer.
    Ok {
        seeders: Option<u32>,
        leechers: Option<u32>,
        peers_received: usize,
    },
    /// The last announce failed (`failures` in a row); tried again not before `retry_at`
    /// (`None`: never, the URL is unusable).
    Failed {
        error: TrackerError,
        failures: u32,
        retry_at: Option<Instant>,
    },
}

/// One tracker of a torrent, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerStatus {
    pub url: String,
    /// Its tier (index in the announce list).
    pub tier: usize,
    pub state: TrackerState,
    /// When it is to be announced to next, if it is the one that will be.
    pub next_announce: Option<Instant>,
}

/// What the shutdown did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopReport {
    /// `stopped` announces sent.
    pub sent: usize,
    /// Of which the tracker answered.
    pub acknowledged: usize,
}

/// The announcer's handle (cheap to clone; `!Send`: the control runtime's thread only).
#[derive(Clone)]
pub struct Announcer {
    inner: Rc<Inner>,
}

struct Inner {
    sched: RefCell<Sched>,
    notify: Notify,
    client: Arc<TrackerClient>,
    running: Cell<bool>,
    dropped_batches: Cell<u64>,
}

impl Announcer {
    /// The announcer and its tracker client. Must be called inside the tokio runtime that will
    /// run it (the UDP socket is registered there).
    pub fn new(cfg: AnnouncerConfig) -> std::io::Result<Announcer> {
        cfg.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(std::io::Error::other(
                "the announcer must be made inside a tokio runtime",
            ));
        }
        let client = Arc::new(TrackerClient::new(cfg.client.clone())?);
        let sched = Sched::new(cfg, Rng::from_os(), Instant::now());
        Ok(Announcer {
            inner: Rc::new(Inner {
                sched: RefCell::new(sched),
                notify: Notify::new(),
                client,
                running: Cell::new(false),
                dropped_batches: Cell::new(0),
            }),
        })
    }

    /// Adds a torrent (also while running) and schedules its `started`. A torrent already
    /// added is left as it is.
    pub fn add(&self, t: AnnounceTorrent) {
        self.inner.sched.borrow_mut().add(t, Instant::now());
        self.inner.notify.notify_one();
    }

    /// Removes a torrent; `stopped` is queued for every tracker it announced to.
    pub fn remove(&self, info_hash: &[u8; 20]) {
        let removed = self.inner.sched.borrow_mut().remove(info_hash);
        if let Some((progress, mut stops)) = removed {
            let p = progress();
            for s in &mut stops {
                if let Some(req) = &mut s.req {
                    fill(req, p);
                }
            }
            self.inner.sched.borrow_mut().queue_stops(stops);
            self.inner.notify.notify_one();
        }
    }

    /// A download of this torrent finished in this process: the next announce to each tracker
    /// that knows it carries `completed`, as soon as the tracker's `min interval` allows.
    pub fn completed(&self, info_hash: &[u8; 20]) {
        self.inner
            .sched
            .borrow_mut()
            .completed(info_hash, Instant::now());
        self.inner.notify.notify_one();
    }

    /// The torrent's trackers in tier order (empty for an unknown torrent). Showing it may
    /// queue scrapes of the trackers that answered.
    pub fn status(&self, info_hash: &[u8; 20]) -> Vec<TrackerStatus> {
        let (st, queued) = self
            .inner
            .sched
            .borrow_mut()
            .status(info_hash, Instant::now());
        if queued {
            self.inner.notify.notify_one();
        }
        st
    }

    /// Peer batches dropped because the channel was full (or closed).
    pub fn dropped_peer_batches(&self) -> u64 {
        self.inner.dropped_batches.get()
    }

    /// Announces until `shutdown` turns true (or its sender is dropped), then sends `stopped`
    /// and returns what it did. Found peers go to `found` (`try_send`). One `run` at a time: a
    /// second call returns at once with an empty report.
    pub async fn run(
        &self,
        found: mpsc::Sender<FoundPeers>,
        mut shutdown: watch::Receiver<bool>,
    ) -> StopReport {
        if self.inner.running.replace(true) {
            tracing::warn!(target: "uring_bt::announce", "the announcer is already running");
            return StopReport::default();
        }
        let mut tasks: JoinSet<Outcome> = JoinSet::new();
        let mut jobs: HashMap<tokio::task::Id, Job> = HashMap::new();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let wait = loop {
                let next = self.inner.sched.borrow_mut().next(Instant::now());
                match next {
                    Next::Start(mut job) => {
                        if let (Some(p), Some(req)) = (job.progress.take(), job.req.as_mut()) {
                            fill(req, p());
                        }
                        let client = self.inner.client.clone();
                        let url = job.url.clone();
                        let work = match (&job.kind, &job.req) {
                            (JobKind::Scrape { .. }, _) | (_, None) => Work::Scrape(job.info_hash),
                            (_, Some(req)) => Work::Announce(req.clone()),
                        };
                        let h = tasks.spawn(async move {
                            match work {
                                Work::Announce(req) => {
                                    Outcome::Announce(client.announce(&url, &req).await)
                                }
                                Work::Scrape(ih) => Outcome::Scrape(client.scrape(&url, ih).await),
                            }
                        });
                        jobs.insert(h.id(), job);
                    }
                    Next::Wait(w) => break w,
                }
            };
            let sleep = async {
                match wait {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = shutdown.changed() => {
                    if r.is_err() {
                        break;
                    }
                }
                Some(res) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, outcome) = match res {
                        Ok((id, o)) => (id, Some(o)),
                        Err(e) => {
                            tracing::error!(target: "uring_bt::announce", "tracker request task failed: {e}");
                            (e.id(), None)
                        }
                    };
                    if let Some(job) = jobs.remove(&id) {
                        let outcome = outcome.unwrap_or_else(|| {
                            let e = TrackerError::Transport("the request task failed".into());
                            match job.kind {
                                JobKind::Scrape { .. } => Outcome::Scrape(Err(e)),
                                _ => Outcome::Announce(Err(e)),
                            }
                        });
                        let batch = self.inner.sched.borrow_mut().finish(job, outcome, Instant::now());
                        if let Some(b) = batch {
                            if found.try_send(b).is_err() {
                                self.inner.dropped_batches.set(self.inner.dropped_batches.get() + 1);
                            }
                        }
                    }
                }
                _ = self.inner.notify.notified() => {}
                _ = sleep => {}
            }
        }
        tasks.abort_all();
        drop(jobs);
        let report = self.stop_all().await;
        tasks.shutdown().await;
        self.inner.running.set(false);
        report
    }

    /// Sends `stopped` to every tracker that got a successful announce (and the ones queued by
    /// removals), `max_in_flight` at once, within `stop_timeout` in all.
    async fn stop_all(&self) -> StopReport {
        let (stops, progs, max, timeout) = {
            let mut s = self.inner.sched.borrow_mut();
            let (stops, progs) = s.drain_for_shutdown();
            (stops, progs, s.cfg.max_in_flight, s.cfg.stop_timeout)
        };
        let mut queue: VecDeque<Job> = VecDeque::with_capacity(stops.len());
        let figures: Vec<Progress> = progs.iter().map(|p| p()).collect();
        for (mut job, pi) in stops {
            if let (Some(i), Some(req)) = (pi, job.req.as_mut()) {
                if let Some(p) = figures.get(i) {
                    fill(req, *p);
                }
            }
            queue.push_back(job);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        type Done = ([u8; 20], String, Result<AnnounceResponse, TrackerError>);
        let mut set: JoinSet<Done> = JoinSet::new();
        let mut report = StopReport::default();
        loop {
            while set.len() < max {
                let Some(job) = queue.pop_front() else { break };
                let Some(req) = job.req.clone() else { continue };
                let client = self.inner.client.clone();
                report.sent += 1;
                let (ih, url) = (job.info_hash, job.url);
                set.spawn(async move {
                    let r = client.announce(&url, &req).await;
                    (ih, url, r)
                });
            }
            if set.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, set.join_next()).await {
                Err(_) => {
                    tracing::warn!(
                        target: "uring_bt::announce",
                        "stop timeout ({timeout:?}): {} `stopped` announces unanswered, {} not sent",
                        set.len(),
                        queue.len()
                    );
                    set.abort_all();
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::error!(target: "uring_bt::announce", "stopped announce task failed: {e}");
                }
                Ok(Some(Ok((ih, url, r)))) => {
                    log_announce(&ih, &url, Event::Stopped, &r);
                    if r.is_ok() {
                        report.acknowledged += 1;
                    }
                }
            }
        }
        set.shutdown().await;
        report
    }
}

fn fill(req: &mut AnnounceRequest, p: Progress) {
    req.uploaded = p.uploaded;
    req.downloaded = p.downloaded;
    req.left = p.left;
}

fn log_announce(
    info_hash: &[u8; 20],
    url: &str,
    ev: Event,
    r: &Result<AnnounceResponse, TrackerError>,
) {
    let h = hex(info_hash);
    match r {
        Ok(resp) => {
            tracing::info!(target: "uring_bt::announce", info_hash = %h, tracker = %url, event = ?ev, ok = true, peers = resp.peers.len(), "announce");
            if let Some(w) = &resp.warning {
                tracing::warn!(target: "uring_bt::announce", info_hash = %h, tracker = %url, "tracker warning: {w}");
            }
        }
        Err(e) => {
            tracing::info!(target: "uring_bt::announce", info_hash = %h, tracker = %url, event = ?ev, ok = false, peers = 0usize, "announce");
            tracing::warn!(target: "uring_bt::announce", info_hash = %h, tracker = %url, event = ?ev, "announce failed: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scheduler: no I/O, no clock of its own (every call takes `now`), so it is unit-tested
// with a fake clock below.

type ProgressFn = Rc<dyn Fn() -> Progress>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Announce { slot: usize, tracker: usize },
    Stop,
    Scrape { tracker: usize },
}

/// A request to make, and what to do with its answer.
struct Job {
    info_hash: [u8; 20],
    epoch: u64,
    url: String,
    kind: JobKind,
    /// The announce (counters filled from `progress` before it is sent); `None` for a scrape.
    req: Option<AnnounceRequest>,
    progress: Option<ProgressFn>,
}

enum Work {
    Announce(AnnounceRequest),
    Scrape([u8; 20]),
}

enum Outcome {
    Announce(Result<AnnounceResponse, TrackerError>),
    Scrape(Result<ScrapeStats, TrackerError>),
}

enum Next {
    Start(Job),
    /// Nothing to start now: wait until then (`None`: until something happens).
    Wait(Option<Instant>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Last {
    Never,
    Ok,
    Failed(TrackerError),
}

struct Tracker {
    url: String,
    tier: usize,
    /// Unusable URL: never tried.
    disabled: Option<TrackerError>,
    in_flight: bool,
    last: Last,
    failures: u32,
    retry_at: Option<Instant>,
    /// An announce (other than `stopped`) succeeded: `stopped` is owed at the end.
    started_ok: bool,
    completed_pending: bool,
    tracker_id: Option<Vec<u8>>,
    last_ok: Option<Instant>,
    min_interval: Option<Duration>,
    seeders: Option<u32>,
    leechers: Option<u32>,
    peers_received: usize,
    /// When the seeders/leechers figures were last updated.
    stats_at: Option<Instant>,
    scrape_tried_at: Option<Instant>,
    scrape_queued: bool,
    no_scrape: bool,
}

struct Slot {
    /// The tiers this walk covers.
    tiers: Range<usize>,
    due: Option<Instant>,
    gen: u64,
    in_flight: bool,
}

struct TorrentEntry {
    epoch: u64,
    progress: ProgressFn,
    trackers: Vec<Tracker>,
    /// Tracker indices per tier, in the order they are tried.
    tiers: Vec<Vec<usize>>,
    slots: Vec<Slot>,
    /// No announce started yet.
    unstarted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    due: Instant,
    seq: u64,
    info_hash: [u8; 20],
    epoch: u64,
    slot: usize,
    gen: u64,
}

struct Bucket {
    rate: f64,
    cap: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        let cap = (rate * BURST.as_secs_f64()).max(1.0);
        Bucket {
            rate,
            cap,
            tokens: 1.0,
            last: now,
        }
    }

    /// Takes a token, or says when one will be there.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.last = now;
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(now + Duration::from_secs_f64(wait) + Duration::from_micros(1))
        }
    }
}

struct Sched {
    cfg: AnnouncerConfig,
    key: u32,
    rng: Rng,
    torrents: HashMap<[u8; 20], TorrentEntry>,
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    next_epoch: u64,
    slot_count: usize,
    /// Torrents whose first announce has not started.
    unstarted: usize,
    bucket: Bucket,
    in_flight: usize,
    stops: VecDeque<Job>,
    scrapes: VecDeque<Job>,
    stopping: bool,
}

impl Sched {
    fn new(cfg: AnnouncerConfig, mut rng: Rng, now: Instant) -> Sched {
        let key = rng.next_u32();
        let bucket = Bucket::new(cfg.rate, now);
        Sched {
            cfg,
            key,
            rng,
            torrents: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            next_epoch: 1,
            slot_count: 0,
            unstarted: 0,
            bucket,
            in_flight: 0,
            stops: VecDeque::new(),
            scrapes: VecDeque::new(),
            stopping: false,
        }
    }

    fn add(&mut self, t: AnnounceTorrent, now: Instant) {
        if self.stopping {
            return;
        }
        let ih_hex = hex(&t.info_hash);
        if self.torrents.contains_key(&t.info_hash) {
            tracing::warn!(target: "uring_bt::announce", info_hash = %ih_hex, "torrent already announced; not added again");
            return;
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut trackers: Vec<Tracker> = Vec::new();
        let mut tiers: Vec<Vec<usize>> = Vec::new();
        let mut capped = false;
        'tiers: for tier in &t.tiers {
            let mut ids = Vec::new();
            for url in tier {
                let url = url.trim();
                if url.is_empty() {
                    continue;
                }
                if url.len() > MAX_URL_LEN {
                    tracing::warn!(target: "uring_bt::announce", info_hash = %ih_hex, "tracker URL longer than {MAX_URL_LEN} bytes ignored");
                    continue;
                }
                if !seen.insert(url.to_string()) {
                    continue;
                }
                if trackers.len() >= MAX_TRACKERS_PER_TORRENT {
                    capped = true;
                    if !ids.is_empty() {
                        tiers.push(std::mem::take(&mut ids));
                    }
                    break 'tiers;
                }
                ids.push(trackers.len());
                trackers.push(Tracker {
                    url: url.to_string(),
                    tier: tiers.len(),
                    disabled: scheme_of(url).err(),
                    in_flight: false,
                    last: Last::Never,
                    failures: 0,
                    retry_at: None,
                    started_ok: false,
                    completed_pending: false,
                    tracker_id: None,
                    last_ok: None,
                    min_interval: None,
                    seeders: None,
                    leechers: None,
                    peers_received: 0,
                    stats_at: None,
                    scrape_tried_at: None,
                    scrape_queued: false,
                    no_scrape: false,
                });
            }
            if !ids.is_empty() {
                tiers.push(ids);
            }
        }
        if capped {
            tracing::warn!(target: "uring_bt::announce", info_hash = %ih_hex, "more than {MAX_TRACKERS_PER_TORRENT} trackers: the rest are ignored");
        }
        for tier in &mut tiers {
            self.rng.shuffle(tier);
        }
        let slots: Vec<Slot> = if tiers.is_empty() {
            Vec::new()
        } else if t.private || !self.cfg.announce_to_all_tiers {
            vec![Slot {
                tiers: 0..tiers.len(),
                due: None,
                gen: 0,
                in_flight: false,
            }]
        } else {
            (0..tiers.len())
                .map(|i| Slot {
                    tiers: i..i + 1,
                    due: None,
                    gen: 0,
                    in_flight: false,
                })
                .collect()
        };
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let has_slots = !slots.is_empty();
        self.slot_count += slots.len();
        let n_slots = slots.len();
        let _ = t.name;
        self.torrents.insert(
            t.info_hash,
            TorrentEntry {
                epoch,
                progress: Rc::from(t.progress),
                trackers,
                tiers,
                slots,
                unstarted: has_slots,
            },
        );
        if has_slots {
            self.unstarted += 1;
            let window = self.unstarted as f64 / self.cfg.rate;
            let due = now + Duration::from_secs_f64(window * self.rng.unit());
            for s in 0..n_slots {
                self.schedule(&t.info_hash, s, due);
            }
        }
    }

    fn schedule(&mut self, ih: &[u8; 20], slot: usize, due: Instant) {
        let Some(t) = self.torrents.get_mut(ih) else {
            return;
        };
        let Some(s) = t.slots.get_mut(slot) else {
            return;
        };
        s.gen += 1;
        s.due = Some(due);
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            due,
            seq: self.seq,
            info_hash: *ih,
            epoch: t.epoch,
            slot,
            gen: s.gen,
        }));
        if self.heap.len() > 2 * self.slot_count + 1024 {
            self.compact();
        }
    }

    /// Rebuilds the heap from the live entries.
    fn compact(&mut self) {
        let torrents = &self.torrents;
        let live: Vec<Reverse<Entry>> = std::mem::take(&mut self.heap)
            .into_iter()
            .filter(|Reverse(e)| Self::entry_live(torrents, e))
            .collect();
        self.heap = BinaryHeap::from(live);
    }

    fn entry_live(torrents: &HashMap<[u8; 20], TorrentEntry>, e: &Entry) -> bool {
        torrents
            .get(&e.info_hash)
            .filter(|t| t.epoch == e.epoch)
            .and_then(|t| t.slots.get(e.slot))
            .is_some_and(|s| s.gen == e.gen && !s.in_flight)
    }

    /// The first tracker of the slot's walk usable at `at`.
    fn pick(t: &TorrentEntry, slot: usize, at: Instant) -> Option<usize> {
        let s = t.slots.get(slot)?;
        t.tiers[s.tiers.clone()]
            .iter()
            .flatten()
            .copied()
            .find(|&i| {
                let tr = &t.trackers[i];
                tr.disabled.is_none() && tr.retry_at.is_none_or(|r| r <= at)
            })
    }

    /// When the first tracker of the slot that backs off may be tried again.
    fn earliest_retry(t: &TorrentEntry, slot: usize) -> Option<Instant> {
        let s = t.slots.get(slot)?;
        t.tiers[s.tiers.clone()]
            .iter()
            .flatten()
            .filter_map(|&i| {
                let tr = &t.trackers[i];
                if tr.disabled.is_some() {
                    None
                } else {
                    tr.retry_at
                }
            })
            .min()
    }

    /// Reschedules a slot with no usable tracker now to when one will be.
    fn reschedule_later(&mut self, ih: &[u8; 20], slot: usize) {
        let at = self
            .torrents
            .get(ih)
            .and_then(|t| Self::earliest_retry(t, slot));
        match at {
            Some(at) => self.schedule(ih, slot, at),
            None => {
                if let Some(s) = self
                    .torrents
                    .get_mut(ih)
                    .and_then(|t| t.slots.get_mut(slot))
                {
                    s.due = None;
                    s.gen += 1;
                }
            }
        }
    }

    /// Drops stale heap entries from the top, and due ones whose walk has no usable tracker
    /// (rescheduled to when one will be).
    fn clean_top(&mut self, now: Instant) {
        while let Some(Reverse(e)) = self.heap.peek().copied() {
            if !Self::entry_live(&self.torrents, &e) {
                self.heap.pop();
                continue;
            }
            if e.due > now {
                break;
            }
            let usable = self
                .torrents
                .get(&e.info_hash)
                .and_then(|t| Self::pick(t, e.slot, now))
                .is_some();
            if usable {
                break;
            }
            self.heap.pop();
            self.reschedule_later(&e.info_hash, e.slot);
        }
        while let Some(j) = self.scrapes.front() {
            let ok = match j.kind {
                JobKind::Scrape { tracker } => self
                    .torrents
                    .get(&j.info_hash)
                    .filter(|t| t.epoch == j.epoch)
                    .is_some_and(|t| t.trackers.get(tracker).is_some()),
                _ => false,
            };
            if ok {
                break;
            }
            self.scrapes.pop_front();
        }
    }

    /// The next request to start, or how long to wait for one.
    fn next(&mut self, now: Instant) -> Next {
        if self.stopping || self.in_flight >= self.cfg.max_in_flight {
            return Next::Wait(None);
        }
        self.clean_top(now);
        let heap_due = self.heap.peek().map(|Reverse(e)| e.due);
        let announce_ready = heap_due.is_some_and(|d| d <= now);
        if self.stops.is_empty() && !announce_ready && self.scrapes.is_empty() {
            return Next::Wait(heap_due);
        }
        if let Err(at) = self.bucket.take(now) {
            return Next::Wait(Some(at));
        }
        self.in_flight += 1;
        if let Some(job) = self.stops.pop_front() {
            return Next::Start(job);
        }
        if announce_ready {
            if let Some(Reverse(e)) = self.heap.pop() {
                if let Some(job) = self.start_announce(&e, now) {
                    return Next::Start(job);
                }
            }
        } else if let Some(mut job) = self.scrapes.pop_front() {
            if let (JobKind::Scrape { tracker }, Some(t)) =
                (job.kind, self.torrents.get_mut(&job.info_hash))
            {
                if let Some(tr) = t.trackers.get_mut(tracker) {
                    job.url = tr.url.clone();
                }
            }
            return Next::Start(job);
        }
        // Cannot happen (clean_top left a startable entry on top); give the token back.
        self.in_flight -= 1;
        self.bucket.tokens += 1.0;
        Next::Wait(self.heap.peek().map(|Reverse(e)| e.due))
    }

    fn start_announce(&mut self, e: &Entry, now: Instant) -> Option<Job> {
        let t = self.torrents.get_mut(&e.info_hash)?;
        let tid = Self::pick(t, e.slot, now)?;
        let slot = t.slots.get_mut(e.slot)?;
        slot.in_flight = true;
        slot.due = None;
        if t.unstarted {
            t.unstarted = false;
            self.unstarted = self.unstarted.saturating_sub(1);
        }
        let tr = &mut t.trackers[tid];
        tr.in_flight = true;
        let event = if !tr.started_ok {
            Event::Started
        } else if tr.completed_pending {
            Event::Completed
        } else {
            Event::None
        };
        let req = AnnounceRequest {
            info_hash: e.info_hash,
            peer_id: self.cfg.peer_id,
            port: self.cfg.port,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event,
            numwant: self.cfg.numwant,
            key: self.key,
            ip: self.cfg.ip,
            tracker_id: tr.tracker_id.clone(),
        };
        Some(Job {
            info_hash: e.info_hash,
            epoch: e.epoch,
            url: tr.url.clone(),
            kind: JobKind::Announce {
                slot: e.slot,
                tracker: tid,
            },
            req: Some(req),
            progress: Some(t.progress.clone()),
        })
    }

    fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        self.cfg
            .backoff_base
            .saturating_mul(1u32 << shift)
            .min(self.cfg.backoff_max)
    }

    /// Takes in the answer to a request started by [`Sched::next`]; returns the peers to hand
    /// on, if any.
    fn finish(&mut self, job: Job, outcome: Outcome, now: Instant) -> Option<FoundPeers> {
        self.in_flight = self.in_flight.saturating_sub(1);
        match (job.kind, outcome) {
            (JobKind::Stop, Outcome::Announce(r)) => {
                log_announce(&job.info_hash, &job.url, Event::Stopped, &r);
                None
            }
            (JobKind::Announce { slot, tracker }, Outcome::Announce(r)) => {
                let event = job.req.as_ref().map_or(Event::None, |q| q.event);
                log_announce(&job.info_hash, &job.url, event, &r);
                self.finish_announce(job, slot, tracker, event, r, now)
            }
            (JobKind::Scrape { tracker }, Outcome::Scrape(r)) => {
                self.finish_scrape(&job, tracker, r, now);
                None
            }
            _ => None,
        }
    }

    fn finish_announce(
        &mut self,
        job: Job,
        slot: usize,
        tid: usize,
        event: Event,
        r: Result<AnnounceResponse, TrackerError>,
        now: Instant,
    ) -> Option<FoundPeers> {
        let backoff = match &r {
            Ok(_) => Duration::ZERO,
            Err(_) => {
                let failures = self
                    .torrents
                    .get(&job.info_hash)
                    .and_then(|t| t.trackers.get(tid))
                    .map_or(1, |tr| tr.failures + 1);
                self.backoff(failures)
            }
        };
        let jitter = self.rng.unit() * JITTER;
        let Some(t) = self
            .torrents
            .get_mut(&job.info_hash)
            .filter(|t| t.epoch == job.epoch)
        else {
            // Removed meanwhile: a `started` that got through is owed its `stopped`.
            if r.is_ok() && event == Event::Started {
                if let Some(mut req) = job.req {
                    req.event = Event::Stopped;
                    self.queue_stops(vec![Job {
                        info_hash: job.info_hash,
                        epoch: job.epoch,
                        url: job.url,
                        kind: JobKind::Stop,
                        req: Some(req),
                        progress: None,
                    }]);
                }
            }
            return None;
        };
        if let Some(s) = t.slots.get_mut(slot) {
            s.in_flight = false;
        }
        let tr = t.trackers.get_mut(tid)?;
        tr.in_flight = false;
        let tier = tr.tier;
        match r {
            Ok(resp) => {
                tr.last = Last::Ok;
                tr.failures = 0;
                tr.retry_at = None;
                tr.started_ok = true;
                if matches!(event, Event::Started | Event::Completed) {
                    tr.completed_pending = false;
                }
                if resp.tracker_id.is_some() {
                    tr.tracker_id = resp.tracker_id.clone();
                }
                tr.min_interval = resp.min_interval;
                tr.last_ok = Some(now);
                if resp.complete.is_some() || resp.incomplete.is_some() {
                    tr.seeders = resp.complete.or(tr.seeders);
                    tr.leechers = resp.incomplete.or(tr.leechers);
                    tr.stats_at = Some(now);
                }
                tr.peers_received = resp.peers.len();
                let min = resp.min_interval.unwrap_or(Duration::ZERO);
                let due = if tr.completed_pending {
                    now
                } else {
                    (now + resp.interval - resp.interval.mul_f64(jitter)).max(now + min)
                };
                // BEP 12: the tracker that answered goes to the front of its tier.
                if let Some(order) = t.tiers.get_mut(tier) {
                    if let Some(pos) = order.iter().position(|&i| i == tid) {
                        order[..=pos].rotate_right(1);
                    }
                }
                let url = job.url;
                self.schedule(&job.info_hash, slot, due);
                if resp.peers.is_empty() {
                    None
                } else {
                    Some(FoundPeers {
                        info_hash: job.info_hash,
                        tracker: url,
                        peers: resp.peers,
                    })
                }
            }
            Err(e) => {
                tr.failures += 1;
                if matches!(e, TrackerError::BadUrl(_)) {
                    tr.disabled = Some(e.clone());
                    tr.retry_at = None;
                } else {
                    tr.retry_at = Some(now + backoff);
                }
                tr.last = Last::Failed(e);
                if Self::pick(t, slot, now).is_some() {
                    // The next tracker of the walk, now (through the rate bound).
                    self.schedule(&job.info_hash, slot, now);
                } else {
                    self.reschedule_later(&job.info_hash, slot);
                }
                None
            }
        }
    }

    fn finish_scrape(
        &mut self,
        job: &Job,
        tid: usize,
        r: Result<ScrapeStats, TrackerError>,
        now: Instant,
    ) {
        let Some(tr) = self
            .torrents
            .get_mut(&job.info_hash)
            .filter(|t| t.epoch == job.epoch)
            .and_then(|t| t.trackers.get_mut(tid))
        else {
            return;
        };
        tr.scrape_queued = false;
        tr.scrape_tried_at = Some(now);
        match r {
            Ok(s) => {
                tr.seeders = Some(s.complete);
                tr.leechers = Some(s.incomplete);
                tr.stats_at = Some(now);
            }
            Err(e) => {
                if matches!(e, TrackerError::BadUrl(_)) {
                    tr.no_scrape = true;
                }
                tracing::debug!(target: "uring_bt::announce", info_hash = %hex(&job.info_hash), tracker = %job.url, "scrape failed: {e}");
            }
        }
    }

    /// Takes a torrent out; returns its progress and the `stopped` announces it owes (their
    /// counters to fill).
    fn remove(&mut self, ih: &[u8; 20]) -> Option<(ProgressFn, Vec<Job>)> {
        let t = self.torrents.remove(ih)?;
        self.slot_count = self.slot_count.saturating_sub(t.slots.len());
        if t.unstarted {
            self.unstarted = self.unstarted.saturating_sub(1);
        }
        let stops = t
            .trackers
            .iter()
            .filter(|tr| tr.started_ok)
            .map(|tr| self.stop_job(ih, t.epoch, tr))
            .collect();
        Some((t.progress, stops))
    }

    fn stop_job(&self, ih: &[u8; 20], epoch: u64, tr: &Tracker) -> Job {
        Job {
            info_hash: *ih,
            epoch,
            url: tr.url.clone(),
            kind: JobKind::Stop,
            req: Some(AnnounceRequest {
                info_hash: *ih,
                peer_id: self.cfg.peer_id,
                port: self.cfg.port,
                uploaded: 0,
                downloaded: 0,
                left: 0,
                event: Event::Stopped,
                numwant: 0,
                key: self.key,
                ip: self.cfg.ip,
                tracker_id: tr.tracker_id.clone(),
            }),
            progress: None,
        }
    }

    fn queue_stops(&mut self, stops: Vec<Job>) {
        for s in stops {
            if self.stops.len() >= MAX_STOP_QUEUE {
                tracing::warn!(target: "uring_bt::announce", tracker = %s.url, "too many `stopped` announces queued ({MAX_STOP_QUEUE}): one dropped");
                continue;
            }
            self.stops.push_back(s);
        }
    }

    fn completed(&mut self, ih: &[u8; 20], now: Instant) {
        let Some(t) = self.torrents.get_mut(ih) else {
            return;
        };
        for tr in &mut t.trackers {
            if tr.started_ok {
                tr.completed_pending = true;
            }
        }
        if t.unstarted {
            // Its `started` goes out with `left` as it is then.
            return;
        }
        let mut resched = Vec::new();
        for (si, s) in t.slots.iter().enumerate() {
            let Some(due) = s.due else { continue };
            if s.in_flight {
                continue;
            }
            if Self::pick(t, si, now).is_none() {
                continue;
            }
            // BEP 3: `completed` is sent when the download completes. It does not wait for the
            // tracker's `min interval` (which bounds re-announces): a tracker that counts
            // completions, and the leechers it hands our address to as a seed, hear it now, as
            // libtorrent and transmission do.
            let earliest = now;
            if earliest < due {
                resched.push((si, earliest));
            }
        }
        for (si, at) in resched {
            self.schedule(ih, si, at);
        }
    }

    /// The status of a torrent's trackers; the bool says whether scrapes were queued.
    fn status(&mut self, ih: &[u8; 20], now: Instant) -> (Vec<TrackerStatus>, bool) {
        let Some(t) = self.torrents.get_mut(ih) else {
            return (Vec::new(), false);
        };
        let mut out = Vec::with_capacity(t.trackers.len());
        let mut to_scrape = Vec::new();
        for (si, s) in t.slots.iter().enumerate() {
            let due_pick = s.due.and_then(|d| Self::pick(t, si, d).map(|p| (p, d)));
            for tier in s.tiers.clone() {
                for &tid in &t.tiers[tier] {
                    let tr = &t.trackers[tid];
                    let state = if tr.in_flight {
                        TrackerState::Updating
                    } else if let Some(e) = &tr.disabled {
                        TrackerState::Failed {
                            error: e.clone(),
                            failures: tr.failures,
                            retry_at: None,
                        }
                    } else {
                        match &tr.last {
                            Last::Never => TrackerState::NotYet,
                            Last::Ok => TrackerState::Ok {
                                seeders: tr.seeders,
                                leechers: tr.leechers,
                                peers_received: tr.peers_received,
                            },
                            Last::Failed(e) => TrackerState::Failed {
                                error: e.clone(),
                                failures: tr.failures,
                                retry_at: tr.retry_at,
                            },
                        }
                    };
                    let next_announce = if tr.in_flight || s.in_flight {
                        None
                    } else if let Some((p, d)) = due_pick.filter(|(p, _)| *p == tid) {
                        let _ = p;
                        Some(d)
                    } else if matches!(tr.last, Last::Failed(_)) {
                        tr.retry_at
                    } else {
                        None
                    };
                    let fresh = |at: Option<Instant>| {
                        at.is_some_and(|a| now.saturating_duration_since(a) < SCRAPE_MIN_INTERVAL)
                    };
                    if tr.last == Last::Ok
                        && tr.disabled.is_none()
                        && !tr.no_scrape
                        && !tr.scrape_queued
                        && !fresh(tr.stats_at)
                        && !fresh(tr.scrape_tried_at)
                    {
                        to_scrape.push(tid);
                    }
                    out.push(TrackerStatus {
                        url: tr.url.clone(),
                        tier: tr.tier,
                        state,
                        next_announce,
                    });
                }
            }
        }
        let epoch = t.epoch;
        let mut queued = false;
        if self.stopping {
            to_scrape.clear();
        }
        for tid in to_scrape {
            if self.scrapes.len() >= MAX_SCRAPE_QUEUE {
                break;
            }
            t.trackers[tid].scrape_queued = true;
            self.scrapes.push_back(Job {
                info_hash: *ih,
                epoch,
                url: t.trackers[tid].url.clone(),
                kind: JobKind::Scrape { tracker: tid },
                req: None,
                progress: None,
            });
            queued = true;
        }
        (out, queued)
    }

    /// Stops scheduling; returns every `stopped` owed (queued ones and one per tracker that
    /// got a successful announce) with, for each, the index of the progress to fill it from.
    #[allow(clippy::type_complexity)]
    fn drain_for_shutdown(&mut self) -> (Vec<(Job, Option<usize>)>, Vec<ProgressFn>) {
        self.stopping = true;
        let mut out: Vec<(Job, Option<usize>)> = self.stops.drain(..).map(|j| (j, None)).collect();
        let mut progs = Vec::new();
        // The torrents stay (for a last status); nothing is scheduled any more.
        for (ih, t) in &self.torrents {
            let owed: Vec<&Tracker> = t.trackers.iter().filter(|tr| tr.started_ok).collect();
            if owed.is_empty() {
                continue;
            }
            progs.push(t.progress.clone());
            let pi = progs.len() - 1;
            for tr in owed {
                out.push((self.stop_job(ih, t.epoch, tr), Some(pi)));
            }
        }
        self.heap.clear();
        self.scrapes.clear();
        (out, progs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> AnnouncerConfig {
        let mut c = AnnouncerConfig::new(*b"-UB0100-abcdefghijkl", 6881);
        c.rate = 1000.0;
        c.backoff_base = Duration::from_secs(30);
        c.backoff_max = Duration::from_secs(30 * 60);
        c
    }

    fn torrent(n: u8, tiers: &[&[&str]], private: bool) -> AnnounceTorrent {
        AnnounceTorrent {
            info_hash: [n; 20],
            name: format!("t{n}"),
            tiers: tiers
                .iter()
                .map(|t| t.iter().map(|s| s.to_string()).collect())
                .collect(),
            private,
            progress: Box::new(|| Progress {
                uploaded: 7,
                downloaded: 0,
                left: 0,
            }),
        }
    }

    fn ok(interval: u64) -> Outcome {
        Outcome::Announce(Ok(AnnounceResponse {
            interval: Duration::from_secs(interval),
            min_interval: None,
            tracker_id: None,
            complete: Some(3),
            incomplete: Some(4),
            peers: vec!["127.0.0.1:1".parse().unwrap()],
            warning: None,
        }))
    }

    fn fail() -> Outcome {
        Outcome::Announce(Err(TrackerError::Transport("refused".into())))
    }

    /// Runs the scheduler until a job starts or nothing is due before `limit`; the clock moves
    /// to the wake-up times it asks for.
    fn next_job(s: &mut Sched, now: &mut Instant, limit: Instant) -> Option<Job> {
        loop {
            match s.next(*now) {
                Next::Start(j) => return Some(j),
                Next::Wait(Some(at)) if at <= limit => *now = (*now).max(at),
                Next::Wait(_) => return None,
            }
        }
    }

    fn next_job_for(s: &mut Sched, now: &mut Instant, within: Duration) -> Option<Job> {
        let limit = *now + within;
        next_job(s, now, limit)
    }

    fn urls(s: &mut Sched, ih: &[u8; 20], now: Instant) -> Vec<String> {
        s.status(ih, now).0.into_iter().map(|t| t.url).collect()
    }

    #[test]
    fn tier_failover_and_move_to_front() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Sched::new(cfg(), Rng::seeded(1), t0);
        s.add(
            torrent(
                1,
                &[
                    &["http://a/announce", "http://b/announce"],
                    &["http://c/announce"],
                ],
                false,
            ),
            now,
        );
        let ih = [1u8; 20];
        let order = urls(&mut s, &ih, now);
        assert_eq!(order.len(), 3);
        assert_eq!(order[2], "http://c/announce");
        // The first of tier 0 fails, then the second, then tier 1 answers.
        let j = next_job(&mut s, &mut now, t0 + S).unwrap();
        assert_eq!(j.url, order[0]);
        assert_eq!(j.req.as_ref().unwrap().event, Event::Started);
        assert!(s.finish(j, fail(), now).is_none());
        let j = next_job(&mut s, &mut now, t0 + S).unwrap();
        assert_eq!(j.url, order[1]);
        s.finish(j, fail(), now);
        let j = next_job(&mut s, &mut now, t0 + S).unwrap();
        assert_eq!(j.url, "http://c/announce");
        let found = s.finish(j, ok(1800), now).unwrap();
        assert_eq!(found.tracker, "http://c/announce");
        // Only one tier is announced to: nothing else before the interval.
        assert!(next_job(&mut s, &mut now, t0 + Duration::from_secs(1000)).is_none());
        // After the back-off of tier 0 and by the next interval, tier 0 is tried again first;
        // its second tracker answers and moves to the front.
        let j = next_job(&mut s, &mut now, t0 + Duration::from_secs(1801)).unwrap();
        assert!(
            now >= t0 + Duration::from_secs(1620),
            "re-announced too early"
        );
        assert_eq!(j.url, order[0]);
        s.finish(j, fail(), now);
        let j = next_job_for(&mut s, &mut now, S).unwrap();
        assert_eq!(j.url, order[1]);
        assert_eq!(j.req.as_ref().unwrap().event, Event::Started);
        s.finish(j, ok(1800), now);
        let after = urls(&mut s, &ih, now);
        assert_eq!(
            after[0], order[1],
            "the tracker that answered is first in its tier"
        );
        assert_eq!(after[1], order[0]);
        let st = s.status(&ih, now).0;
        assert!(matches!(
            st[0].state,
            TrackerState::Ok {
                seeders: Some(3),
                leechers: Some(4),
                peers_received: 1
            }
        ));
        assert!(matches!(
            st[1].state,
            TrackerState::Failed { failures: 2, .. }
        ));
        assert!(matches!(st[2].state, TrackerState::Ok { .. }));
        assert!(st[0].next_announce.is_some());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut c = cfg();
        c.backoff_base = Duration::from_secs(30);
        c.backoff_max = Duration::from_secs(200);
        let mut s = Sched::new(c, Rng::seeded(2), t0);
        s.add(torrent(2, &[&["udp://a:1"]], false), now);
        let ih = [2u8; 20];
        let mut gaps = Vec::new();
        let mut last = None;
        for _ in 0..6 {
            let j = next_job(&mut s, &mut now, t0 + Duration::from_secs(10_000)).unwrap();
            if let Some(l) = last {
                gaps.push(now.duration_since(l).as_secs());
            }
            last = Some(now);
            s.finish(j, fail(), now);
            match &s.status(&ih, now).0[0].state {
                TrackerState::Failed { retry_at, .. } => assert!(retry_at.is_some()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(gaps, vec![30, 60, 120, 200, 200]);
        // A success resets it.
        let j = next_job(&mut s, &mut now, t0 + Duration::from_secs(10_000)).unwrap();
        s.finish(j, ok(600), now);
        let j = next_job(&mut s, &mut now, t0 + Duration::from_secs(10_000)).unwrap();
        s.finish(j, fail(), now);
        match &s.status(&ih, now).0[0].state {
            TrackerState::Failed {
                failures, retry_at, ..
            } => {
                assert_eq!(*failures, 1);
                assert_eq!(
                    retry_at.unwrap().duration_since(now),
                    Duration::from_secs(30)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_and_in_flight_bounds_with_spread_starts() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut c = cfg();
        c.rate = 20.0;
        c.max_in_flight = 4;
        let mut s = Sched::new(c, Rng::seeded(3), t0);
        for i in 0..200u8 {
            let mut t = torrent(0, &[&["http://a/announce"]], false);
            t.info_hash[0] = i;
            t.info_hash[1] = 1;
            s.add(t, now);
        }
        let mut starts = Vec::new();
        let mut inflight: VecDeque<(Instant, Job)> = VecDeque::new();
        let mut max_seen = 0;
        while starts.len() < 200 {
            match s.next(now) {
                Next::Start(j) => {
                    starts.push(now);
                    inflight.push_back((now + Duration::from_millis(120), j));
                    max_seen = max_seen.max(inflight.len());
                }
                Next::Wait(w) => {
                    // Complete the oldest request if it finishes before the wake-up.
                    let done_at = inflight.front().map(|(d, _)| *d);
                    match (w, done_at) {
                        (Some(at), Some(d)) if d < at => {
                            now = now.max(d);
                            let (_, j) = inflight.pop_front().unwrap();
                            s.finish(j, ok(1800), now);
                        }
                        (None, Some(d)) => {
                            now = now.max(d);
                            let (_, j) = inflight.pop_front().unwrap();
                            s.finish(j, ok(1800), now);
                        }
                        (Some(at), _) => now = now.max(at),
                        (None, None) => panic!("stuck"),
                    }
                }
            }
        }
        assert!(max_seen <= 4, "{max_seen} in flight");
        let span = starts.last().unwrap().duration_since(starts[0]);
        assert!(
            span >= Duration::from_secs_f64(199.0 / 20.0 - 0.01),
            "{span:?}"
        );
        // No window of one second holds more than rate (+1 for the bucket's first token).
        for (i, a) in starts.iter().enumerate() {
            let n = starts[i..]
                .iter()
                .take_while(|b| b.duration_since(*a) < S)
                .count();
            assert!(n <= 21, "{n} starts within 1 s");
        }
        assert!(span <= Duration::from_secs(20), "{span:?}");
    }

    #[test]
    fn all_tiers_and_private() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut c = cfg();
        c.announce_to_all_tiers = true;
        let mut s = Sched::new(c, Rng::seeded(4), t0);
        s.add(
            torrent(5, &[&["http://a/announce"], &["http://b/announce"]], false),
            now,
        );
        s.add(
            torrent(6, &[&["http://c/announce"], &["http://d/announce"]], true),
            now,
        );
        let mut by: HashMap<u8, Vec<String>> = HashMap::new();
        let mut jobs = Vec::new();
        while let Some(j) = next_job(&mut s, &mut now, t0 + S) {
            by.entry(j.info_hash[0]).or_default().push(j.url.clone());
            jobs.push(j);
        }
        assert_eq!(by[&5].len(), 2, "every tier announced to");
        assert_eq!(
            by[&6],
            vec!["http://c/announce".to_string()],
            "private: one at a time"
        );
        for j in jobs {
            s.finish(j, ok(1800), now);
        }
        assert!(next_job(&mut s, &mut now, t0 + Duration::from_secs(100)).is_none());
    }

    #[test]
    fn interval_jitter_min_interval_completed_and_tracker_id() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Sched::new(cfg(), Rng::seeded(5), t0);
        s.add(torrent(7, &[&["http://a/announce"]], false), now);
        let ih = [7u8; 20];
        let j = next_job(&mut s, &mut now, t0 + S).unwrap();
        assert_eq!(j.req.as_ref().unwrap().tracker_id, None);
        let p = (j.progress.as_ref().unwrap())();
        assert_eq!(p.uploaded, 7);
        let first = now;
        s.finish(
            j,
            Outcome::Announce(Ok(AnnounceResponse {
                interval: Duration::from_secs(1000),
                min_interval: Some(Duration::from_secs(300)),
                tracker_id: Some(b"tid".to_vec()),
                complete: None,
                incomplete: None,
                peers: vec![],
                warning: None,
            })),
            now,
        );
        // completed(): out at once (min interval bounds re-announces, not `completed`), with the
        // event and the tracker id.
        s.completed(&ih, now);
        let j = next_job(&mut s, &mut now, t0 + Duration::from_secs(2000)).unwrap();
        // (within the announce rate's token bucket, far below the 300 s min interval)
        let waited = now.duration_since(first);
        assert!(waited < Duration::from_secs(1), "{waited:?}");
        let req = j.req.clone().unwrap();
        assert_eq!(req.event, Event::Completed);
        assert_eq!(req.tracker_id.as_deref(), Some(&b"tid"[..]));
        let second = now;
        s.finish(j, ok(1000), now);
        let j = next_job(&mut s, &mut now, t0 + Duration::from_secs(5000)).unwrap();
        let gap = now.duration_since(second);
        assert!(
            gap <= Duration::from_secs(1000) && gap >= Duration::from_secs(900),
            "{gap:?}"
        );
        assert_eq!(j.req.as_ref().unwrap().event, Event::None);
        // The tracker id is kept when a response has none.
        assert_eq!(
            j.req.as_ref().unwrap().tracker_id.as_deref(),
            Some(&b"tid"[..])
        );
    }

    #[test]
    fn stops_only_to_trackers_announced_to() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Sched::new(cfg(), Rng::seeded(6), t0);
        s.add(
            torrent(
                8,
                &[&["http://dead/announce"], &["http://live/announce"]],
                false,
            ),
            now,
        );
        s.add(torrent(9, &[&["http://never/announce"]], false), now);
        let mut n = 0;
        while let Some(j) = next_job(&mut s, &mut now, t0 + S) {
            n += 1;
            let o = if j.url.contains("live") {
                ok(1800)
            } else if j.url.contains("dead") {
                fail()
            } else {
                // torrent 9: left in flight
                continue;
            };
            s.finish(j, o, now);
        }
        assert_eq!(n, 3);
        let (stops, progs) = s.drain_for_shutdown();
        let urls: Vec<&str> = stops.iter().map(|(j, _)| j.url.as_str()).collect();
        assert_eq!(urls, vec!["http://live/announce"]);
        assert_eq!(stops[0].0.req.as_ref().unwrap().event, Event::Stopped);
        assert_eq!(progs.len(), 1);
        assert!(matches!(s.next(now), Next::Wait(None)));
    }

    #[test]
    fn remove_queues_stops_and_late_started_is_stopped() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Sched::new(cfg(), Rng::seeded(7), t0);
        s.add(torrent(10, &[&["http://a/announce"]], false), now);
        let j = next_job(&mut s, &mut now, t0 + S).unwrap();
        // Removed while its `started` is in flight; the `started` then succeeds.
        let (_, stops) = s.remove(&[10u8; 20]).unwrap();
        assert!(stops.is_empty());
        s.finish(j, ok(1800), now);
        let j = next_job(&mut s, &mut now, t0 + S * 2).unwrap();
        assert_eq!(j.kind, JobKind::Stop);
        assert_eq!(j.req.as_ref().unwrap().event, Event::Stopped);
        s.finish(j, ok(1800), now);
        assert!(next_job(&mut s, &mut now, t0 + S * 10).is_none());
        // Removing one that announced queues its `stopped`.
        s.add(torrent(11, &[&["http://b/announce"]], false), now);
        let j = next_job_for(&mut s, &mut now, S).unwrap();
        s.finish(j, ok(1800), now);
        let (_, stops) = s.remove(&[11u8; 20]).unwrap();
        assert_eq!(stops.len(), 1);
        s.queue_stops(stops);
        let j = next_job_for(&mut s, &mut now, S).unwrap();
        assert_eq!(
            (j.kind, j.url.as_str()),
            (JobKind::Stop, "http://b/announce")
        );
    }

    #[test]
    fn bad_urls_duplicates_and_caps() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Sched::new(cfg(), Rng::seeded(8), t0);
        let many: Vec<String> = (0..100).map(|i| format!("http://t{i}/announce")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        s.add(
            torrent(
                12,
                &[&["wss://x/announce", "wss://x/announce", " "], &many],
                false,
            ),
            now,
        );
        let st = s.status(&[12u8; 20], now).0;
        assert_eq!(st.len(), MAX_TRACKERS_PER_TORRENT);
        assert!(matches!(
            &st[0].state,
            TrackerState::Failed {
                error: TrackerError::BadUrl(_),
                retry_at: None,
                ..
            }
        ));
        let j = next_job(&mut s, &mut now, t0 + S).unwrap();
        assert!(
            j.url.starts_with("http://t"),
            "the unusable tracker is skipped"
        );
    }

    #[test]
    fn status_queues_a_scrape_once() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut s = Sched::new(cfg(), Rng::seeded(9), t0);
        s.add(torrent(13, &[&["udp://a:1"]], false), now);
        let ih = [13u8; 20];
        assert!(!s.status(&ih, now).1, "nothing to scrape before an answer");
        let j = next_job(&mut s, &mut now, t0 + S).unwrap();
        s.finish(
            j,
            Outcome::Announce(Ok(AnnounceResponse {
                interval: Duration::from_secs(1800),
                min_interval: None,
                tracker_id: None,
                complete: None,
                incomplete: None,
                peers: vec![],
                warning: None,
            })),
            now,
        );
        assert!(s.status(&ih, now).1);
        assert!(!s.status(&ih, now).1, "already queued");
        let j = next_job_for(&mut s, &mut now, S).unwrap();
        assert!(matches!(j.kind, JobKind::Scrape { .. }));
        s.finish(
            j,
            Outcome::Scrape(Ok(ScrapeStats {
                complete: 9,
                incomplete: 8,
                downloaded: 1,
            })),
            now,
        );
        let st = s.status(&ih, now);
        assert!(!st.1, "figures are fresh");
        assert!(matches!(
            st.0[0].state,
            TrackerState::Ok {
                seeders: Some(9),
                leechers: Some(8),
                ..
            }
        ));
        now += SCRAPE_MIN_INTERVAL;
        assert!(
            s.status(&ih, now).1,
            "scraped again after {SCRAPE_MIN_INTERVAL:?}"
        );
    }

    #[test]
    fn bucket_paces() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10.0, t0);
        assert!(b.take(t0).is_ok());
        let at = b.take(t0).unwrap_err();
        assert!(at.duration_since(t0) >= Duration::from_millis(99));
        assert!(b.take(at).is_ok());
        let mut hi = Bucket::new(10_000.0, t0);
        let mut n = 0;
        while hi.take(t0 + Duration::from_secs(1)).is_ok() {
            n += 1;
        }
        assert_eq!(n, 100, "burst of 10 ms worth");
    }
}
