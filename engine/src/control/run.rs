//! The control plane of a running server: the supervisor and its shards, the announcer, the
//! dialer, the status line, and the clean stop. One current-thread tokio runtime on the main
//! thread; nothing here runs on a shard.
//!
//! ```text
//!  signals ──┐        ┌──────────── control plane (this module) ─────────────┐
//!            ▼        │ Supervisor ── start/restart ──► shard threads (N)     │
//!      stop / status  │ Announcer  ── FoundPeers ──► Dialer ── Dial ──► shard │
//!                     │ shards ── ShardEvent (bounded, try_send) ──► Dialer   │
//!                     └──────────────────────────────────────────────────────┘
//! ```
//!
//! Clean stop (SIGINT/SIGTERM): every shard is told to stop (no more accepts; sends in flight
//! get `grace` to finish; then its connections close), the announcer sends `stopped` to every
//! tracker it announced to (bounded by its `stop_timeout`), both at once; then the caller saves
//! resume data and prints the final lines. A second signal exits at once (code 130).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::control::announce::{Announcer, FoundPeers};
use crate::control::dialer::{Dialer, DialerConfig, ShardLinks};
use crate::control::status::StatusSampler;
use crate::control::supervisor::{ChildSpec, Exit, Intensity, Restart, Supervisor};
use crate::server::registry::Registry;
use crate::server::shard::{self, ShardExit};
use crate::server::state::{ShardCmd, ShardConfig, ShardEvent};

/// Capacity of each shard's command channel (dials queued for it).
pub const SHARD_COMMANDS: usize = 256;
/// Capacity of the shards' event channel to the control plane.
pub const SHARD_EVENTS: usize = 4096;
/// Capacity of the announcer's found-peers channel.
pub const FOUND_PEERS: usize = 256;

/// How long a starting shard may take to say it serves.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits for a starting shard's word on `ready`: it serves (`Ok`), it failed (its reason), its
/// thread ended without a word (a failure, said at once, not as a timeout), or no word within
/// `within`.
fn wait_ready(
    ready: &std::sync::mpsc::Receiver<Result<(), String>>,
    index: usize,
    within: Duration,
) -> Result<(), String> {
    use std::sync::mpsc::RecvTimeoutError;
    match ready.recv_timeout(within) {
        Ok(res) => res,
        Err(RecvTimeoutError::Disconnected) => Err(format!(
            "shard {index} failed to start: its thread ended before it served (see the lines \
             above)"
        )),
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "shard {index} did not start within {} s",
            within.as_secs_f64()
        )),
    }
}

/// What the control plane needs to run a server.
pub struct ServerPlan {
    pub registry: Arc<Registry>,
    /// One config per shard, and the listener bound for it at start-up.
    pub shards: Vec<(ShardConfig, TcpListener)>,
    /// The address the listeners share (a restarted shard binds it again).
    pub bound: SocketAddr,
    pub announcer: Option<Announcer>,
    pub dialer: DialerConfig,
    /// Our listening addresses as peers see them (never dialed).
    pub own: Vec<SocketAddr>,
    pub intensity: Intensity,
    /// How long sends in flight may take to finish at a clean stop.
    pub grace: Duration,
    pub status_interval: Duration,
    /// Printed on stdout once every shard serves (`listening:`, `info_hash:`, `magnet:`).
    pub ready_lines: Vec<String>,
    /// `uring-bt download`: the torrent to fetch and what to do when it is complete.
    pub download: Option<DownloadPlan>,
}

/// What `uring-bt download` asks of the control plane.
pub struct DownloadPlan {
    /// Registry index of the torrent.
    pub torrent: usize,
    /// Peers to dial at once (`--peer`, a magnet's `x.pe=`).
    pub peers: Vec<SocketAddr>,
    /// Keep seeding once complete (until a signal); otherwise stop cleanly then.
    pub seed_after: bool,
    /// How often a `progress:` line is printed on stdout.
    pub progress_interval: Duration,
    /// When the command started (for `secs=`).
    pub started: Instant,
    /// Printed when seeding begins (`seeding: ADDR`).
    pub seeding_line: String,
}

/// How the server ended.
pub enum Ended {
    /// A signal asked for a stop and it completed.
    Stopped {
        stopped_sent: usize,
        stopped_acked: usize,
    },
    /// The supervisor gave up: the message for the user.
    GaveUp(String),
    /// The download failed (a full or failing disk): the message for the user.
    DownloadFailed(String),
}

/// Shard threads alive, and a wake when one ends.
#[derive(Default)]
struct Alive {
    n: AtomicUsize,
    ended: tokio::sync::Notify,
}

/// Starts the shards under the supervisor and runs the control plane until a signal (clean
/// stop) or until the supervisor gives up.
pub async fn run(plan: ServerPlan) -> anyhow::Result<Ended> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    crate::control::supervisor::install_panic_hook();

    // io_uring refused (sysctl, seccomp) or no locked memory for a ring: one clear line, before
    // any shard tries (`seed` asked already, before its data check; the answer is kept).
    crate::server::limits::probe_io_uring().map_err(anyhow::Error::msg)?;

    let n = plan.shards.len();
    let (events_tx, mut events_rx) = tokio::sync::mpsc::channel::<ShardEvent>(SHARD_EVENTS);
    let (found_tx, mut found_rx) = tokio::sync::mpsc::channel::<FoundPeers>(FOUND_PEERS);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let alive = Arc::new(Alive::default());
    let restarts: Rc<RefCell<Vec<u32>>> = Rc::new(RefCell::new(vec![0; n]));
    let links: ShardLinks = Rc::new(RefCell::new(Vec::with_capacity(n)));
    {
        let mut l = links.borrow_mut();
        for _ in 0..n {
            // Placeholders until each shard starts (a send to them fails: the dialer retries).
            let (tx, _) = tokio::sync::mpsc::channel(1);
            l.push(tx);
        }
    }

    let mut supervisor = Supervisor::with_max_children(plan.intensity, n + 4);
    for (index, (cfg, listener)) in plan.shards.into_iter().enumerate() {
        let mut first = Some(listener);
        let registry = plan.registry.clone();
        let links = links.clone();
        let events = events_tx.clone();
        let alive = alive.clone();
        let restarts = restarts.clone();
        let bound = plan.bound;
        let started = Cell::new(false);
        let spec = ChildSpec {
            name: format!("shard {index}"),
            restart: Restart::Transient,
            start: Box::new(move |notice| {
                let listener = match first.take() {
                    Some(l) => l,
                    // A restart: join the other shards' port again (SO_REUSEPORT).
                    None => shard::bind_listeners(bound, 1)
                        .map_err(|e| format!("shard {index}: cannot listen on {bound}: {e}"))?
                        .0
                        .pop()
                        .ok_or_else(|| format!("shard {index}: no listener"))?,
                };
                if started.replace(true) {
                    restarts.borrow_mut()[index] += 1;
                }
                let (tx, rx) = tokio::sync::mpsc::channel(SHARD_COMMANDS);
                let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
                let alive2 = alive.clone();
                alive.n.fetch_add(1, Ordering::SeqCst);
                let on_exit = Box::new(move |exit: ShardExit| {
                    alive2.n.fetch_sub(1, Ordering::SeqCst);
                    alive2.ended.notify_one();
                    notice.exit(match exit {
                        ShardExit::Stopped => Exit::Normal,
                        ShardExit::Failed(e) => Exit::Failed(e),
                        ShardExit::Panicked(e) => Exit::Panicked(e),
                    });
                });
                shard::spawn(
                    cfg.clone(),
                    registry.clone(),
                    listener,
                    rx,
                    Some(events.clone()),
                    ready_tx,
                    on_exit,
                )
                .map_err(|e| format!("shard {index}: cannot start its thread: {e}"))?;
                wait_ready(&ready_rx, index, SHARD_START_TIMEOUT)?;
                links.borrow_mut()[index] = tx;
                Ok(())
            }),
        };
        supervisor.start_child(spec).map_err(anyhow::Error::msg)?;
    }
    drop(events_tx);
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for l in &plan.ready_lines {
            let _ = writeln!(out, "{l}");
        }
        let _ = out.flush();
    }

    let mut dialer = Dialer::new(plan.dialer, links.clone(), plan.own);
    for t in plan.registry.torrents().iter() {
        dialer.add_torrent(t.info_hash, t.index);
        if let Some(d) = t.download.as_ref().filter(|d| d.is_active()) {
            dialer.set_home(t.index, d.home_shard);
        }
    }
    let mut dl_state = plan.download.as_ref().map(|d| {
        let torrent = plan.registry.torrents().get(d.torrent).cloned();
        // On a terminal: a progress bar (bytes, rate, ETA, peers) instead of the status line.
        let bar = (std::io::stderr().is_terminal()).then(|| {
            let total = torrent.as_ref().map_or(0, |t| t.layout.total_length());
            let pb = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:25} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            ) {
                pb.set_style(style);
            }
            pb
        });
        DownloadWatch {
            reported: false,
            failed: false,
            last: (Instant::now(), u64::MAX),
            torrent,
            bar,
            lines: !std::io::stdout().is_terminal(),
        }
    });
    if let Some(d) = &plan.download {
        if let Some(t) = plan.registry.torrents().get(d.torrent) {
            if !d.peers.is_empty() {
                dialer.on_found(
                    FoundPeers {
                        info_hash: t.info_hash,
                        tracker: "--peer".into(),
                        peers: d.peers.clone(),
                    },
                    Instant::now(),
                );
                dialer.tick(Instant::now());
            }
        }
    }
    // Completion is noticed within 100 ms; progress lines are printed every interval.
    let mut progress_iv = tokio::time::interval(
        plan.download
            .as_ref()
            .map_or(Duration::from_secs(3600), |d| {
                d.progress_interval.min(Duration::from_millis(100))
            }),
    );
    progress_iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let announcer = plan.announcer;
    // A panic inside the announcer's loop is contained: the announcer is gone (logged), the
    // shards keep serving. (Each announce already runs as a task of its own, whose panic only
    // fails that request.)
    let announce_run = async {
        match &announcer {
            Some(a) => {
                let run = a.run(found_tx, shutdown_rx.clone());
                let mut run = std::pin::pin!(run);
                let res = std::future::poll_fn(|cx| {
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run.as_mut().poll(cx)
                    })) {
                        Ok(p) => p.map(Ok),
                        Err(payload) => std::task::Poll::Ready(Err(
                            crate::control::supervisor::panic_message(payload.as_ref()),
                        )),
                    }
                })
                .await;
                match res {
                    Ok(report) => Some(report),
                    Err(msg) => {
                        eprintln!(
                            "error: the announcer panicked ({msg}); serving goes on without it"
                        );
                        None
                    }
                }
            }
            None => {
                drop(found_tx);
                None
            }
        }
    };
    let mut announce_run = std::pin::pin!(announce_run);
    let tty = std::io::stderr().is_terminal();
    let period = if tty {
        Duration::from_secs(1)
    } else {
        plan.status_interval
    };
    let mut status_iv = tokio::time::interval(period);
    status_iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    status_iv.tick().await;
    let mut dial_iv = tokio::time::interval(Duration::from_secs(1));
    dial_iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = StatusSampler::default();
    // Files of unservable pieces, looked at again (a restored file is served again).
    let mut rescan_iv = tokio::time::interval(crate::server::registry::RESCAN);
    rescan_iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // The announcer's run ends only after the shutdown below; kept in case it ends early.
    let mut ann_done = None;
    let mut download_failed: Option<String> = None;
    let gave_up = {
        let sup = supervisor.run(shutdown_rx.clone());
        let mut sup = std::pin::pin!(sup);
        loop {
            tokio::select! {
                res = &mut sup => {
                    if let Err(g) = res {
                        break Some(g.to_string());
                    }
                    break None;
                }
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                r = &mut announce_run, if ann_done.is_none() => {
                    ann_done = Some(r);
                }
                Some(f) = found_rx.recv() => dialer.on_found(f, Instant::now()),
                Some(e) = events_rx.recv() => dialer.on_event(e, Instant::now()),
                _ = dial_iv.tick() => {
                    dialer.tick(Instant::now());
                }
                _ = rescan_iv.tick() => {
                    for t in plan.registry.torrents().iter() {
                        t.recheck_failed(crate::server::registry::RESCAN_FILES);
                    }
                }
                _ = progress_iv.tick(), if dl_state.is_some() => {
                    if let (Some(w), Some(d)) = (dl_state.as_mut(), plan.download.as_ref()) {
                        match w.step(d, announcer.as_ref()) {
                            Step::Go => {}
                            Step::Done => break None,
                            Step::Failed(msg) => {
                                download_failed = Some(msg);
                                break None;
                            }
                        }
                    }
                }
                _ = status_iv.tick(), if !(tty && dl_state.as_ref().is_some_and(|w| !w.reported)) => {
                    let line = sampler.line(&plan.registry, announcer.as_ref(), &restarts.borrow());
                    if tty {
                        eprint!("\r\x1b[2K{line}");
                    } else {
                        eprintln!("status: {line}");
                    }
                }
            }
        }
    };
    if tty {
        eprintln!();
    }
    if let Some(msg) = &gave_up {
        eprintln!("error: {msg}");
    }

    // The stop: shards and announcer at once; a second signal exits at once.
    let _ = shutdown_tx.send(true);
    // A queue full of dials must not lose the stop: wait (briefly) for room.
    let senders: Vec<_> = links.borrow().iter().cloned().collect();
    for tx in senders {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            tx.send(ShardCmd::Stop { grace: plan.grace }),
        )
        .await;
    }
    let shards_done = async {
        let until = tokio::time::Instant::now() + plan.grace + Duration::from_secs(5);
        while alive.n.load(Ordering::SeqCst) > 0 {
            if tokio::time::timeout_at(until, alive.ended.notified())
                .await
                .is_err()
            {
                tracing::warn!("shards still running after the stop's wait");
                break;
            }
        }
    };
    let stop = async {
        let ann = async {
            match ann_done.take() {
                Some(r) => r,
                None => announce_run.await,
            }
        };
        let (_, r) = tokio::join!(shards_done, ann);
        r
    };
    let report = tokio::select! {
        r = stop => r,
        _ = term.recv() => std::process::exit(130),
        _ = int.recv() => std::process::exit(130),
    };
    if let Some(msg) = gave_up {
        return Ok(Ended::GaveUp(msg));
    }
    if let Some(msg) = download_failed {
        return Ok(Ended::DownloadFailed(msg));
    }
    let (sent, acked) = report.map_or((0, 0), |r| (r.sent, r.acknowledged));
    Ok(Ended::Stopped {
        stopped_sent: sent,
        stopped_acked: acked,
    })
}

/// The control plane's view of a download: progress lines, completion, failure.
struct DownloadWatch {
    reported: bool,
    failed: bool,
    /// When and at how many bytes the last progress line was printed (for its rate).
    last: (Instant, u64),
    torrent: Option<Arc<crate::server::registry::Torrent>>,
    /// The progress bar on a terminal.
    bar: Option<indicatif::ProgressBar>,
    /// Print `progress:` lines (stdout is not a terminal).
    lines: bool,
}

enum Step {
    Go,
    /// Complete, and not seeding on: stop cleanly.
    Done,
    Failed(String),
}

impl DownloadWatch {
    fn step(&mut self, plan: &DownloadPlan, announcer: Option<&Announcer>) -> Step {
        use std::io::Write;
        if self.reported {
            // Complete and seeding on: nothing more to watch.
            return Step::Go;
        }
        let Some(t) = self.torrent.clone() else {
            return Step::Failed("the torrent is not in the registry".into());
        };
        let Some(d) = &t.download else {
            return Step::Failed("the torrent is not being downloaded".into());
        };
        let n = t.layout.num_pieces();
        let have = t.have.count();
        let bytes: u64 = (0..n)
            .filter(|&p| t.have.get(p))
            .map(|p| u64::from(t.layout.piece_size(p)))
            .sum();
        let downloaded = d.downloaded.load(Ordering::Relaxed);
        let now = Instant::now();
        let complete = d.completed_at.lock().ok().and_then(|c| *c);
        let dt = now.saturating_duration_since(self.last.0).as_secs_f64();
        if complete.is_none()
            && !self.failed
            && d.fatal.lock().map_or(true, |f| f.is_none())
            && now.saturating_duration_since(self.last.0) < plan.progress_interval
            && self.last.1 != u64::MAX
        {
            // Not a progress line's turn: only completion and failure are watched.
            return Step::Go;
        }
        let rate = if dt > 0.0 {
            (downloaded.saturating_sub(self.last.1) as f64 / dt) as u64
        } else {
            0
        };
        self.last = (now, downloaded);
        let peers = t.stats.peers.load(Ordering::Relaxed);
        let mut out = std::io::stdout().lock();
        if !self.reported {
            if self.lines {
                let _ = writeln!(
                    out,
                    "progress: have={have} of={n} bytes={bytes} downloaded={downloaded} rate={rate} peers={peers}"
                );
            }
            if let Some(pb) = &self.bar {
                pb.set_position(bytes);
                pb.set_message(format!("{peers} peer(s)"));
            }
        }
        if let (Some(at), false) = (complete, self.reported) {
            self.reported = true;
            if let Some(pb) = self.bar.take() {
                pb.finish_and_clear();
            }
            let secs = at.saturating_duration_since(plan.started).as_secs_f64();
            let _ = writeln!(
                out,
                "complete: pieces={n} bytes={} secs={secs:.3} downloaded={downloaded} resumed={} partial={} wasted={}",
                t.layout.total_length(),
                d.resumed,
                d.restored.load(Ordering::Relaxed),
                d.wasted.load(Ordering::Relaxed)
            );
            if let Ok(recs) = d.peers.lock() {
                let mut v: Vec<_> = recs.iter().collect();
                v.sort_by_key(|(a, _)| **a);
                for (addr, r) in v {
                    let _ = writeln!(
                        out,
                        "peer: addr={addr} client={} downloaded={} pieces={} hashfails={} banned={}",
                        if r.client.is_empty() { "?" } else { &r.client },
                        r.downloaded,
                        r.pieces,
                        r.hash_failures,
                        u8::from(r.banned)
                    );
                }
            }
            if let Some(a) = announcer {
                a.completed(&t.info_hash);
            }
            if plan.seed_after {
                let _ = writeln!(out, "{}", plan.seeding_line);
            }
            let _ = out.flush();
            return if plan.seed_after {
                Step::Go
            } else {
                Step::Done
            };
        }
        let _ = out.flush();
        if !self.failed {
            if let Some(msg) = d.fatal.lock().ok().and_then(|f| f.clone()) {
                self.failed = true;
                eprintln!("error: {msg}");
                if !plan.seed_after {
                    return Step::Failed(msg);
                }
            }
        }
        Step::Go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_that_ends_without_a_word_failed_it_did_not_time_out() {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        drop(tx);
        let t0 = Instant::now();
        let e = wait_ready(&rx, 3, Duration::from_secs(30)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "said at once");
        assert!(e.starts_with("shard 3 failed to start"), "{e}");
        assert!(!e.contains("within"), "{e}");
    }

    #[test]
    fn a_shard_that_says_nothing_times_out_and_a_reason_is_passed_on() {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let e = wait_ready(&rx, 1, Duration::from_millis(50)).unwrap_err();
        assert_eq!(e, "shard 1 did not start within 0.05 s");
        tx.send(Err("shard 1: cannot make an io_uring (...)".into()))
            .unwrap();
        assert_eq!(
            wait_ready(&rx, 1, Duration::from_secs(1)),
            Err("shard 1: cannot make an io_uring (...)".into())
        );
        tx.send(Ok(())).unwrap();
        assert_eq!(wait_ready(&rx, 1, Duration::from_secs(1)), Ok(()));
        drop(tx);
    }
}
