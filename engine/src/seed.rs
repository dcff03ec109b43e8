//! `uring-bt seed`: the seeding server's control plane.
//!
//! Parse and validate first, then build: load (or create) the torrents, check the data, build the
//! registry, bind one SO_REUSEPORT listener per shard, start the shards, then print where we
//! listen and report status until SIGINT/SIGTERM. The control plane is this thread, on an
//! ordinary current-thread tokio runtime; the data plane is the shards (see `shard.rs`).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::metainfo::Metainfo;
use crate::registry::{hex, Registry, Torrent};
use crate::shard::{self, ShardConfig};

/// Arguments of `uring-bt seed`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  uring-bt seed movie.torrent --data /srv/torrents
  uring-bt seed a.torrent b.torrent --data /srv/torrents --listen 0.0.0.0:6881 --shards 2
  uring-bt seed /srv/isos/debian.iso -o debian.torrent     (makes the torrent, then seeds it)")]
pub struct SeedArgs {
    /// .torrent files to seed (content at DATA/<name>), or ONE file or directory to make a torrent
    /// of and seed.
    #[arg(required = true, value_name = "TORRENT|PATH")]
    pub inputs: Vec<PathBuf>,
    /// Save directory: a torrent's content is at DATA/<name>, as other clients lay it out.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Where to write the torrent made from PATH (default: beside the data, PATH.torrent).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Tracker for a torrent made from PATH (repeatable).
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "0.0.0.0:6881", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Shards (threads, one per core, each pinned): default, one per available core.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Open files per shard (default: derived from RLIMIT_NOFILE, the shards and --max-peers).
    #[arg(long, value_name = "N")]
    pub max_open_files: Option<usize>,
    /// Connected peers in all (spread over shards).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_peers: usize,
    /// Connected peers per torrent (spread over shards).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_peers_per_torrent: usize,
    /// Peers unchoked at once per torrent, besides the optimistic unchoke.
    #[arg(long, default_value_t = crate::choker::DEFAULT_UPLOAD_SLOTS, value_name = "N")]
    pub upload_slots: usize,
    /// 16 KiB block buffers per shard (the memory the data plane may use for blocks).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub buffers: usize,
    /// Requests a peer may queue (advertised as `reqq`).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub reqq: u32,
    /// Blocks read and sent together per peer (one ring submit, one writev).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch: usize,
    /// Contiguous requested blocks of a batch read with one vectored read (1: a read per block).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub coalesce: usize,
    /// Trust the data instead of checking it first; each piece is then verified the first time it
    /// is served, and a piece that fails is never sent.
    #[arg(long)]
    pub skip_check: bool,
    /// Seconds a new connection has to complete its handshake.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub handshake_timeout: u64,
    /// Seconds of silence (or of a stalled write) after which a peer is dropped.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Where resume data lives (one file per torrent, named by info hash). Default:
    /// $XDG_STATE_HOME/uring-bt, else ~/.local/state/uring-bt.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Neither read nor write resume data: always check the data in full (or lazily with
    /// --skip-check).
    #[arg(long)]
    pub no_resume: bool,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Seconds between two status lines when stderr is not a terminal.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub status_interval: u64,
}

/// File descriptors kept aside for what is not a peer or a data file: stdio, the control plane's
/// runtime, per-shard rings, eventfds and listeners.
const FD_RESERVE_BASE: u64 = 24;
const FD_RESERVE_PER_SHARD: u64 = 8;

/// Splits the descriptor budget: `(max_peers, max_open_files_per_shard)`. Peers and files share
/// what RLIMIT_NOFILE leaves after the reserve; files get at least 4 per shard.
pub fn fd_budget(
    nofile: u64,
    shards: usize,
    max_peers: usize,
    files: Option<usize>,
) -> anyhow::Result<(usize, usize)> {
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_SHARD * shards as u64;
    let Some(budget) = nofile
        .checked_sub(reserve)
        .filter(|&b| b >= 8 * shards as u64)
    else {
        bail!(
            "the open-file limit ({nofile}) is too low for {shards} shard(s): raise `ulimit -n` \
             to at least {}",
            reserve + 8 * shards as u64
        );
    };
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let files_total = match files {
        Some(f) => f.saturating_mul(shards),
        None => (budget / 2).min(1024 * shards),
    };
    if files_total >= budget {
        bail!(
            "--max-open-files {} x {shards} shard(s) leaves no descriptors for peers under the \
             open-file limit {nofile}",
            files.unwrap_or(0)
        );
    }
    let peers = max_peers.min(budget - files_total).max(1);
    Ok((peers, (files_total / shards).max(4)))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Our peer id: Azureus style `-UB0100-` and 12 random alphanumerics.
fn make_peer_id() -> [u8; 20] {
    let mut id = *b"-UB0100-000000000000";
    let mut rnd = [0u8; 12];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut rnd))
        .is_ok();
    if !ok {
        // Fall back to time and pid: unique enough for a peer id.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        rnd.copy_from_slice(&t.to_le_bytes()[..12]);
    }
    const ALNUM: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    for (d, r) in id[8..].iter_mut().zip(rnd) {
        *d = ALNUM[r as usize % ALNUM.len()];
    }
    id
}

/// One torrent to seed, after loading.
struct Loaded {
    meta: Metainfo,
    root: PathBuf,
}

fn is_torrent_file(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("torrent"))
}

/// Loads the torrents named on the command line, or makes one from PATH.
fn load_inputs(args: &SeedArgs) -> anyhow::Result<Vec<Loaded>> {
    let all_torrents = args.inputs.iter().all(|p| is_torrent_file(p));
    if all_torrents {
        let data = args
            .data
            .clone()
            .context("--data DIR is required with .torrent files (the content is at DIR/<name>)")?;
        if !data.is_dir() {
            bail!("--data {}: not a directory", data.display());
        }
        let mut out = Vec::new();
        for p in &args.inputs {
            let meta =
                Metainfo::from_file(p).with_context(|| format!("cannot load {}", p.display()))?;
            out.push(Loaded {
                meta,
                root: data.clone(),
            });
        }
        return Ok(out);
    }
    if args.inputs.len() != 1 {
        bail!("give either .torrent files, or one file or directory to make a torrent of");
    }
    let path = &args.inputs[0];
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot seed {}", path.display()))?;
    let name = path
        .file_name()
        .context("cannot seed a path without a name")?
        .to_os_string();
    let root = path
        .parent()
        .context("cannot seed a path without a parent directory")?
        .to_path_buf();
    let output = match &args.output {
        Some(o) => o.clone(),
        None => {
            let mut n = name.clone();
            n.push(".torrent");
            root.join(n)
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = crate::create::CreateOptions {
        trackers: args.trackers.iter().map(|t| vec![t.clone()]).collect(),
        threads: cores,
        ..crate::create::CreateOptions::default()
    };
    let source = crate::create::Source::scan(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let created = crate::create::build(&source, &opts, &|_| {})
        .with_context(|| format!("cannot make a torrent of {}", path.display()))?;
    std::fs::write(&output, &created.bytes)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let meta = created.metainfo;
    eprintln!("wrote {}", output.display());
    Ok(vec![Loaded { meta, root }])
}

/// Checks every piece on all cores; returns the bad piece indices.
fn check_data(l: &Loaded, threads: usize) -> anyhow::Result<Vec<u32>> {
    let layout = l.meta.layout();
    let results = uring_bt_storage::hash::hash_pieces(&layout, &l.root, threads, &|_| {});
    let mut bad = Vec::new();
    let mut first_err = None;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(h) if Some(h) == l.meta.pieces.get(i) => {}
            Ok(_) => bad.push(i as u32),
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e.to_string());
                }
                bad.push(i as u32);
            }
        }
    }
    if let Some(e) = first_err {
        eprintln!("warning: {}: {e}", l.meta.name);
    }
    Ok(bad)
}

/// `$XDG_STATE_HOME/uring-bt`, else `~/.local/state/uring-bt`.
fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("uring-bt"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("no HOME: pass --state-dir DIR or --no-resume")?;
    Ok(PathBuf::from(home).join(".local/state/uring-bt"))
}

/// Checks a torrent's data before serving it: skipped when its resume data matches (same
/// torrent, every file's size and mtime unchanged, every piece complete); otherwise a full
/// check on all cores, whose result is saved as resume data. Returns whether every piece is good
/// (having printed why not).
fn check_or_resume(l: &Loaded, state_dir: Option<&Path>, cores: usize) -> anyhow::Result<bool> {
    use uring_bt_storage::resume;
    let layout = l.meta.layout();
    let resume_path = state_dir.map(|d| d.join(format!("{}.resume", hex(&l.meta.info_hash))));
    if let Some(path) = &resume_path {
        let plan = resume::plan(path, &l.meta.info_hash, &layout, &l.root);
        let n = layout.num_pieces();
        let complete = (0..n).all(|p| resume::bit(&plan.have, p));
        match &plan.full_check_reason {
            None if plan.recheck.is_empty() && complete => {
                eprintln!(
                    "{}: resume data matches ({}): check skipped",
                    l.meta.name,
                    path.display()
                );
                return Ok(true);
            }
            None => eprintln!(
                "{}: {} piece(s) changed since the resume data was written: checking",
                l.meta.name,
                plan.recheck.len()
            ),
            Some(reason) => tracing::debug!("{}: full check: {reason}", l.meta.name),
        }
    }
    let started = Instant::now();
    let bad = check_data(l, cores)?;
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().take(10).map(|p| p.to_string()).collect();
        eprintln!(
            "error: {}: {} of {} pieces are bad or missing (first: {}); fix the data under {}, \
             or pass --skip-check to serve the good ones",
            l.meta.name,
            bad.len(),
            l.meta.pieces.len(),
            shown.join(", "),
            l.root.display()
        );
        return Ok(false);
    }
    eprintln!(
        "checked {}: {} pieces good in {:.2} s",
        l.meta.name,
        l.meta.pieces.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &resume_path {
        let have = crate::registry::AtomicBits::new(layout.num_pieces(), true).to_bytes();
        let data = resume::snapshot(l.meta.info_hash, &layout, &l.root, &have);
        let saved = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| resume::save(path, &data));
        if let Err(e) = saved {
            eprintln!("warning: cannot write resume data {}: {e}", path.display());
        }
    }
    Ok(true)
}

/// Runs `uring-bt seed`.
pub fn run(args: SeedArgs) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = args.shards.unwrap_or(cores);
    if shards == 0 || shards > 256 {
        bail!("--shards must be between 1 and 256");
    }
    if args.buffers == 0 || args.buffers > 16384 {
        bail!("--buffers must be between 1 and 16384 (io_uring registers at most 16384)");
    }
    if args.upload_slots == 0 {
        bail!("--upload-slots must be at least 1");
    }
    if args.reqq == 0 || args.reqq > 100_000 {
        bail!("--reqq must be between 1 and 100000");
    }
    if args.batch == 0 || args.batch > 64 {
        bail!("--batch must be between 1 and 64");
    }
    if args.coalesce == 0 || args.coalesce > 64 {
        bail!("--coalesce must be between 1 and 64");
    }
    let nofile = raise_nofile();
    let (max_peers, files_per_shard) =
        fd_budget(nofile, shards, args.max_peers, args.max_open_files)?;

    let loaded = load_inputs(&args)?;
    let state_dir = if args.no_resume {
        None
    } else {
        Some(match &args.state_dir {
            Some(d) => d.clone(),
            None => default_state_dir()?,
        })
    };
    let mut registry = Registry::new();
    for (i, l) in loaded.iter().enumerate() {
        let verified = if args.skip_check {
            false
        } else {
            check_or_resume(l, state_dir.as_deref(), cores)?
        };
        if !verified && !args.skip_check {
            return Ok(ExitCode::from(1));
        }
        let t = Torrent::new_seed(
            i,
            l.meta.info_hash,
            l.meta.name.clone(),
            Arc::new(l.meta.layout()),
            l.root.clone(),
            l.meta.pieces.clone().into(),
            verified,
        );
        registry.add(t).map_err(anyhow::Error::msg)?;
    }
    let registry = Arc::new(registry);

    let (listeners, bound) = shard::bind_listeners(args.listen, shards)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let peer_id = make_peer_id();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(shards);
    let per_shard = |n: usize| n.div_ceil(shards).max(1);
    for (index, listener) in listeners.into_iter().enumerate() {
        let cfg = ShardConfig {
            index,
            pin_cpu: (!args.no_pin).then_some(index % cores),
            max_peers: per_shard(max_peers),
            max_peers_per_torrent: per_shard(args.max_peers_per_torrent.min(max_peers)),
            buffers: args.buffers,
            max_open_files: files_per_shard,
            upload_slots: per_shard(args.upload_slots),
            reqq: args.reqq,
            handshake_timeout: Duration::from_secs(args.handshake_timeout.max(1)),
            idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
            ring_entries: 256,
            peer_id,
            listen_port: bound.port(),
            batch: args.batch,
            coalesce: args.coalesce,
        };
        shard::spawn(cfg, registry.clone(), listener, ready_tx.clone())
            .context("cannot start a shard thread")?;
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("a shard did not start within 30 s"),
        }
    }

    let peers: Vec<SocketAddr> = if bound.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![bound]
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "listening: {bound} ({shards} shard(s), {} buffers and {files_per_shard} open files each, {max_peers} peers max)",
            args.buffers
        );
        for t in registry.torrents() {
            let meta = &loaded[t.index].meta;
            let _ = writeln!(out, "info_hash: {} {}", hex(&t.info_hash), t.name);
            let _ = writeln!(out, "magnet: {}", meta.magnet(&peers));
        }
        let _ = out.flush();
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    let tty = std::io::stderr().is_terminal();
    let period = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(args.status_interval.max(1))
    };
    rt.block_on(control_loop(registry.clone(), period, tty))?;
    let sum = |f: fn(&crate::registry::TorrentStats) -> u64| -> u64 {
        registry.torrents().iter().map(|t| f(&t.stats)).sum()
    };
    let total = sum(|s| s.uploaded.load(Ordering::Relaxed));
    let peers = sum(|s| s.peers_total.load(Ordering::Relaxed));
    let dropped = sum(|s| s.peers_dropped.load(Ordering::Relaxed));
    if tty {
        eprintln!();
    }
    eprintln!(
        "stopped: {} served to {peers} peers; {dropped} dropped for misbehaving",
        human_bytes(total)
    );
    Ok(ExitCode::SUCCESS)
}

/// Status lines until SIGINT or SIGTERM.
async fn control_loop(registry: Arc<Registry>, period: Duration, tty: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut iv = tokio::time::interval(period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    iv.tick().await;
    let mut last: Vec<u64> = vec![0; registry.torrents().len()];
    let mut last_at = Instant::now();
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = iv.tick() => {
                let dt = last_at.elapsed().as_secs_f64().max(1e-3);
                last_at = Instant::now();
                let mut line = String::new();
                for (t, prev) in registry.torrents().iter().zip(last.iter_mut()) {
                    let up = t.stats.uploaded.load(Ordering::Relaxed);
                    let rate = (up - *prev) as f64 / dt;
                    *prev = up;
                    if !line.is_empty() {
                        line.push_str(" | ");
                    }
                    line.push_str(&format!(
                        "{}: {} peers, {}/s, {} served",
                        t.name,
                        t.stats.peers.load(Ordering::Relaxed),
                        human_bytes(rate as u64),
                        human_bytes(up)
                    ));
                }
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("status: {line}");
                }
            }
        }
    }
}

/// Bytes in binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_budget_splits_and_refuses() {
        // 128 descriptors, 2 shards: reserve 40, 88 left: 44 for files (22 per shard), 44 peers.
        assert_eq!(fd_budget(128, 2, 512, None).unwrap(), (44, 22));
        assert_eq!(fd_budget(128, 2, 10, None).unwrap(), (10, 22));
        assert!(fd_budget(40, 2, 10, None).is_err());
        assert!(fd_budget(128, 1, 10, Some(200)).is_err());
        assert_eq!(fd_budget(1 << 20, 2, 512, None).unwrap(), (512, 1024));
    }

    #[test]
    fn peer_id_shape() {
        let id = make_peer_id();
        assert_eq!(&id[..8], b"-UB0100-");
        assert!(id[8..].iter().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
