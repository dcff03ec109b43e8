//! `uring-bt download`: fetch a torrent (a .torrent file or a magnet link) through the same
//! shards, session code and storage ring as seeding, then stop, or seed on with `--seed`.
//!
//! Parse and validate first; for a magnet link fetch the info dictionary over BEP 9 from the
//! peers it names (`x.pe=`) and `--peer` (checked against the info hash); check what is already
//! on disk (resume data, else every existing piece hashed on all cores); then hand over to the
//! control plane with a [`DownloadPlan`]: it dials the peers, announces (`left` > 0, then
//! `completed`), prints progress, and stops cleanly once complete unless `--seed`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use uring_bt_proto::metainfo::Metainfo;
use uring_bt_proto::session::SessionConfig;
use uring_bt_proto::wire::BLOCK_SIZE;

use crate::cli::common::UsageError;
use crate::control::announce::{AnnounceTorrent, Announcer, AnnouncerConfig, Progress};
use crate::control::dialer::DialerConfig;
use crate::control::run::{DownloadPlan, Ended, ServerPlan};
use crate::control::status::human_bytes;
use crate::control::supervisor::Intensity;
use crate::server::affinity::{allowed_cpus, cpu_for_shard};
use crate::server::download::DownloadConfig;
use crate::server::limits::{fd_budget, raise_nofile};
use crate::server::registry::{hex, Registry, Torrent};
use crate::server::shard;
use crate::server::state::ShardConfig;
use crate::torrent::check::{default_state_dir, save_download_resume};

/// Arguments of `uring-bt download`.
/// `--hash-lanes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashLanes {
    Auto,
    On,
    Off,
}

/// `--recv-path`: how PIECE payloads reach a pool buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvPathArg {
    /// Read into the connection's receive buffer, then copied into a pool buffer.
    Copy,
    /// Vectored reads that place each payload straight into a pool buffer.
    Direct,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  uring-bt download debian.torrent -o ~/Downloads
  uring-bt download debian.torrent -o /srv/data --seed          (seed on when complete)
  uring-bt download 'magnet:?xt=urn:btih:...&x.pe=192.0.2.7:6881' -o ~/Downloads
  uring-bt download a.torrent -o out --peer 192.0.2.7:6881 --no-announce")]
pub struct DownloadArgs {
    /// A .torrent file, or a magnet link (its metadata is fetched from the peers it names and
    /// from --peer).
    #[arg(value_name = "TORRENT|MAGNET")]
    pub input: String,
    /// Save directory: the content goes to DIR/<name>, as other clients lay it out.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// A peer to connect to (repeatable).
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    pub peers: Vec<SocketAddr>,
    /// Keep seeding once the download is complete (until SIGINT/SIGTERM).
    #[arg(long)]
    pub seed: bool,
    /// Tracker to announce to besides the torrent's own (repeatable).
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// Announce to no tracker: peers only from --peer and the magnet link.
    #[arg(long)]
    pub no_announce: bool,
    /// The IP address trackers should hand out for us.
    #[arg(long, value_name = "IP")]
    pub announce_ip: Option<std::net::IpAddr>,
    /// Address to listen on (peers connect to us too); port 0 picks a free port.
    #[arg(long, default_value = "0.0.0.0:6881", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Connected peers in all.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub max_peers: usize,
    /// Download rate limit in bytes per second (suffixes k, M, G: powers of 1024).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub max_download_rate: Option<u64>,
    /// Peers unchoked at once (uploading to them), besides the optimistic unchoke; the choker
    /// rotates them every 10 s and the optimistic slot every 30 s.
    #[arg(long, default_value_t = uring_bt_proto::choker::DEFAULT_UPLOAD_SLOTS, value_name = "N")]
    pub upload_slots: usize,
    /// Outgoing connections to peers from trackers.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_dials: usize,
    /// Shards (threads). The download itself runs on one shard; the others serve uploads.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// 16 KiB block buffers per shard (received blocks wait in them for their write).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub buffers: usize,
    /// Seconds without a requested block before a peer counts as snubbing us.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub snub_timeout: u64,
    /// Hash received pieces sixteen at once (blocks of sixteen pieces requested interleaved,
    /// hashed together as they arrive): `auto` (the default) does so where the CPU has
    /// AVX-512, `on` always (without AVX-512 the sixteen are hashed one after another), `off`
    /// never. Measured on an AVX-512 machine: 1 GiB from libtorrent took 1.2 CPU-s with lanes
    /// and 1.4 without; on one without AVX-512, `on` ran slower.
    #[arg(long, value_enum, default_value_t = HashLanes::Auto, value_name = "WHEN")]
    pub hash_lanes: HashLanes,
    /// How PIECE payloads reach the pool buffers they are hashed and written from: `copy`
    /// (the default: read with the rest of the stream, then copied) or `direct` (vectored
    /// reads that put up to four payloads straight into pool buffers, their headers into the
    /// receive buffer; one more descriptor per peer). Measured here (loopback, 1 GiB from
    /// aria2, six rounds each in two orders): `direct` less user time, more system time, in
    /// all within the noise (-7% and +6%), so `copy` stays the default.
    #[arg(long, value_enum, default_value_t = RecvPathArg::Copy, value_name = "PATH")]
    pub recv_path: RecvPathArg,
    /// Seconds between two progress lines (fractions allowed).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub status_interval: f64,
    /// Where resume data lives (default: $XDG_STATE_HOME/uring-bt, else
    /// ~/.local/state/uring-bt).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Allocate the files to their full size before downloading (fallocate): a full disk is
    /// found at once, and writes cost less CPU (on ext4 here about a third); otherwise files
    /// are sparse and grow as pieces arrive.
    #[arg(long)]
    pub preallocate: bool,
    /// Neither read nor write resume data (the data on disk is checked in full at start).
    #[arg(long)]
    pub no_resume: bool,
    /// Seconds to wait for the metadata of a magnet link.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub metadata_timeout: u64,
    /// Seconds a clean stop may take.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub stop_timeout: u64,
    /// Do not pin shard threads to cores.
    #[arg(long)]
    pub no_pin: bool,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s}: not a rate (bytes per second, e.g. 500k or 10M)"))?;
    if !(v.is_finite() && v >= 1.0) {
        return Err(format!("{s}: the rate must be at least 1 byte per second"));
    }
    Ok((v * mult as f64) as u64)
}

fn usage(msg: impl std::fmt::Display) -> anyhow::Error {
    UsageError(msg.to_string()).into()
}

/// The torrent to download and the peers its link names.
async fn resolve_input(
    args: &DownloadArgs,
    peer_id: [u8; 20],
    port: u16,
) -> anyhow::Result<(Metainfo, Vec<SocketAddr>)> {
    if !args.input.starts_with("magnet:") {
        let path = PathBuf::from(&args.input);
        let meta = crate::torrent::load::metainfo_from_file(&path)
            .with_context(|| format!("cannot load {}", path.display()))?;
        return Ok((meta, Vec::new()));
    }
    let magnet =
        uring_bt_proto::magnet::parse(&args.input).map_err(|e| usage(format_args!("{e}")))?;
    let mut peers = magnet.peers.clone();
    for p in &args.peers {
        if !peers.contains(p) {
            peers.push(*p);
        }
    }
    if peers.is_empty() {
        return Err(usage(
            "this magnet link names no peer (x.pe=): give one with --peer ADDR:PORT (trackers \
             and the DHT are not asked for metadata yet)",
        ));
    }
    eprintln!(
        "fetching the metadata of {} from {} peer(s)",
        hex(&magnet.info_hash),
        peers.len()
    );
    let cfg = crate::control::metadata::FetchConfig {
        total_timeout: Duration::from_secs(args.metadata_timeout.max(1)),
        bind_ip: Some(args.listen.ip()).filter(|ip| !ip.is_unspecified()),
        ..crate::control::metadata::FetchConfig::new(peer_id, port)
    };
    let fetched =
        crate::control::metadata::fetch_metadata(magnet.info_hash, peers.clone(), &cfg, None)
            .await
            .context("cannot get the torrent's metadata")?;
    eprintln!(
        "metadata: {} bytes from {}",
        fetched.info.len(),
        fetched.from
    );
    let mut bytes = Vec::with_capacity(fetched.info.len() + 16);
    bytes.extend_from_slice(b"d4:info");
    bytes.extend_from_slice(&fetched.info);
    bytes.push(b'e');
    let mut meta = Metainfo::from_bytes(&bytes).context("the metadata is not a valid torrent")?;
    if meta.info_hash != magnet.info_hash {
        anyhow::bail!("the metadata does not match the magnet link's info hash");
    }
    meta.trackers = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
    Ok((meta, peers))
}

/// Runs `uring-bt download`.
pub fn run(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = args.shards.unwrap_or(cores);
    if shards == 0 || shards > 256 {
        return Err(usage("--shards must be between 1 and 256"));
    }
    if args.buffers < 8 || args.buffers > 16384 {
        return Err(usage("--buffers must be between 8 and 16384"));
    }
    if !(0.05..=3600.0).contains(&args.status_interval) {
        return Err(usage(
            "--status-interval must be between 0.05 and 3600 seconds",
        ));
    }
    if args.snub_timeout == 0 || args.snub_timeout > 3600 {
        return Err(usage("--snub-timeout must be between 1 and 3600 seconds"));
    }
    if args.upload_slots == 0 {
        return Err(usage("--upload-slots must be at least 1"));
    }
    if args.max_peers == 0 {
        return Err(usage("--max-peers must be at least 1"));
    }
    if args.stop_timeout > 600 {
        return Err(usage("--stop-timeout must be at most 600 seconds"));
    }
    crate::cli::common::check_tracker_urls(&args.trackers)?;
    let nofile = raise_nofile();
    let (max_peers, files_per_shard) = fd_budget(
        nofile,
        shards,
        args.max_peers,
        None,
        if args.recv_path == RecvPathArg::Direct {
            2
        } else {
            1
        },
    )
    .map_err(|e| usage(format_args!("{e:#}")))?;
    let allowed = if args.no_pin {
        Vec::new()
    } else {
        allowed_cpus().unwrap_or_default()
    };
    let peer_id = crate::cli::seed::make_peer_id();
    // Listen first: the port goes into our handshakes and announces.
    let (listeners, bound) = shard::bind_listeners_exclusive(args.listen, shards)
        .with_context(|| format!("cannot listen on {}", args.listen))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    let (meta, link_peers) = rt.block_on(resolve_input(&args, peer_id, bound.port()))?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let root = args.output.clone();
    let state_dir = if args.no_resume {
        None
    } else {
        Some(match &args.state_dir {
            Some(d) => d.clone(),
            None => default_state_dir()?,
        })
    };
    let startup = crate::cli::common::StartupSignals::install();
    let (have, partials) =
        crate::torrent::check::check_for_download(&meta, &root, state_dir.as_deref(), cores);
    drop(startup);
    // Files of zero length have no piece to bring them into being: create them now (and every
    // file, allocated in full, with --preallocate).
    let bytes = uring_bt_storage::files::prepare_files(&root, &meta.layout(), args.preallocate)
        .with_context(|| format!("cannot create {} under {}", meta.name, root.display()))?;
    if args.preallocate {
        eprintln!(
            "{}: {} allocated under {}",
            meta.name,
            human_bytes(bytes),
            root.display()
        );
    }
    let home = 0usize;
    let mut t = Torrent::new_download(
        0,
        meta.info_hash,
        meta.name.clone(),
        Arc::new(meta.layout()),
        root.clone(),
        meta.pieces.clone().into(),
        &have,
        home,
    );
    t.private = meta.private;
    if !meta.private {
        t.metadata = Some(Arc::from(meta.info_bytes.as_slice()));
    }
    if let Some(d) = &t.download {
        if let Ok(mut p) = d.partials.lock() {
            *p = partials;
        }
    }
    let n = t.layout.num_pieces();
    let resumed = t.have.count();
    eprintln!(
        "{}: {resumed} of {n} pieces already on disk under {}",
        meta.name,
        root.display()
    );
    let registry = Registry::new();
    let torrent = registry.add(t).map_err(anyhow::Error::msg)?;
    if resumed == n {
        // Nothing to fetch: complete already.
        if let Some(d) = &torrent.download {
            if let Ok(mut c) = d.completed_at.lock() {
                *c = Some(Instant::now());
            }
        }
        torrent.stamp_files();
    }
    let registry = Arc::new(registry);

    let buffers = uring_bt_storage::pool::pool_size_for_this_process(
        args.buffers,
        BLOCK_SIZE as usize,
        shards,
    );
    let mut session = SessionConfig::new(peer_id, bound.port(), 2000);
    session.max_in_flight = 64;
    let per_shard = |x: usize| x.div_ceil(shards).max(1);
    let mut shard_plans = Vec::with_capacity(shards);
    for (index, listener) in listeners.into_iter().enumerate() {
        let cfg = ShardConfig {
            index,
            pin_cpu: cpu_for_shard(&allowed, index),
            // The home shard holds the download's connections: give it the whole budget.
            max_peers: if index == home {
                max_peers
            } else {
                per_shard(max_peers)
            },
            max_peers_per_torrent: if index == home {
                max_peers
            } else {
                per_shard(max_peers)
            },
            buffers,
            max_open_files: files_per_shard,
            upload_slots: args.upload_slots.div_ceil(shards).max(1),
            session: session.clone(),
            ring_entries: 256,
            batch: 32,
            coalesce: 32,
            max_half_open: 16,
            splice_pipes: 0,
            download: DownloadConfig {
                snub_timeout: Duration::from_secs(args.snub_timeout),
                max_rate: args.max_download_rate,
                hash_lanes: match args.hash_lanes {
                    HashLanes::Auto => uring_bt_storage::sha1x16::available(),
                    HashLanes::On => true,
                    HashLanes::Off => false,
                },
                recv_direct: args.recv_path == RecvPathArg::Direct,
                ..DownloadConfig::default()
            },
        };
        shard_plans.push((cfg, listener));
    }
    let public = args
        .announce_ip
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .or(Some(bound).filter(|b| !b.ip().is_unspecified()));
    let mut own = vec![bound];
    own.extend(public);
    let mut tiers = meta.trackers.clone();
    for url in &args.trackers {
        if !tiers.iter().flatten().any(|u| u == url) {
            tiers.push(vec![url.clone()]);
        }
    }
    tiers.retain(|t| !t.is_empty());
    let mut peers = link_peers;
    for p in &args.peers {
        if !peers.contains(p) {
            peers.push(*p);
        }
    }
    if peers.is_empty() && (tiers.is_empty() || args.no_announce) {
        eprintln!(
            "note: no --peer and no tracker: only peers that connect to us ({bound}) can help"
        );
    }
    let ready_lines = vec![
        format!("listening: {bound}"),
        format!("info_hash: {} {}", hex(&torrent.info_hash), torrent.name),
    ];
    let stop_timeout = Duration::from_secs(args.stop_timeout);
    let ended = rt.block_on(async {
        let announcer = if args.no_announce || tiers.is_empty() {
            None
        } else {
            let base = AnnouncerConfig::new(peer_id, bound.port());
            let cfg = AnnouncerConfig {
                ip: args.announce_ip,
                stop_timeout,
                client: crate::control::tracker::ClientConfig {
                    // Announces leave from the listening address: a tracker that ignores
                    // `ip=` (opentracker) then hands out the address we listen on.
                    local_ip: Some(bound.ip()).filter(|ip| !ip.is_unspecified()),
                    ..base.client.clone()
                },
                ..base
            };
            let a = Announcer::new(cfg).context("cannot start the tracker client")?;
            let t2 = torrent.clone();
            a.add(AnnounceTorrent {
                info_hash: torrent.info_hash,
                name: torrent.name.clone(),
                tiers: tiers.clone(),
                private: torrent.private,
                progress: Box::new(move || {
                    let missing: u64 = (0..t2.layout.num_pieces())
                        .filter(|&p| !t2.have.get(p))
                        .map(|p| u64::from(t2.layout.piece_size(p)))
                        .sum();
                    Progress {
                        uploaded: t2.stats.uploaded.load(Ordering::Relaxed),
                        downloaded: t2
                            .download
                            .as_ref()
                            .map_or(0, |d| d.downloaded.load(Ordering::Relaxed)),
                        left: missing,
                    }
                }),
            });
            Some(a)
        };
        crate::control::run::run(ServerPlan {
            registry: registry.clone(),
            shards: shard_plans,
            bound,
            announcer,
            dialer: DialerConfig {
                max_per_torrent: args.max_dials,
                // A peer that dropped us (a seeder still checking its data, a restart) is
                // tried again soon and not forgotten: a download has few sources.
                retry_base: Duration::from_secs(2),
                retry_max: Duration::from_secs(30),
                max_failures: 1000,
                ..DialerConfig::default()
            },
            own,
            intensity: Intensity {
                max_restarts: 5,
                window: Duration::from_secs(60),
            },
            grace: stop_timeout,
            status_interval: Duration::from_secs(5),
            ready_lines,
            download: Some(DownloadPlan {
                torrent: torrent.index,
                peers,
                seed_after: args.seed,
                progress_interval: Duration::from_secs_f64(args.status_interval),
                started,
                seeding_line: format!("seeding: {bound}"),
            }),
        })
        .await
    })?;
    // Writes have completed (the shards are stopped): what is verified may be trusted next time.
    if let Some(dir) = &state_dir {
        let partials = torrent
            .download
            .as_ref()
            .and_then(|d| d.partials.lock().ok().map(|p| p.clone()))
            .unwrap_or_default();
        save_download_resume(
            torrent.info_hash,
            &torrent.layout,
            &torrent.root,
            &torrent.verified.to_bytes(),
            partials,
            dir,
        );
    }
    let complete = torrent.have.all();
    let got = torrent
        .download
        .as_ref()
        .map_or(0, |d| d.downloaded.load(Ordering::Relaxed));
    let up = torrent.stats.uploaded.load(Ordering::Relaxed);
    let _ = std::io::stderr().is_terminal();
    match ended {
        Ended::GaveUp(msg) | Ended::DownloadFailed(msg) => {
            eprintln!(
                "stopped: {} of {n} pieces; {} received, {} sent; {msg}",
                torrent.have.count(),
                human_bytes(got),
                human_bytes(up)
            );
            Ok(ExitCode::from(1))
        }
        Ended::Stopped { .. } if complete => {
            eprintln!(
                "done: {} complete under {}; {} received, {} sent",
                torrent.name,
                root.display(),
                human_bytes(got),
                human_bytes(up)
            );
            Ok(ExitCode::SUCCESS)
        }
        Ended::Stopped { .. } => {
            eprintln!(
                "stopped before complete: {} of {n} pieces (resume data saved; run again to go on)",
                torrent.have.count()
            );
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("500k"), Ok(500 << 10));
        assert_eq!(parse_rate("2M"), Ok(2 << 20));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-5k").is_err());
    }
}
