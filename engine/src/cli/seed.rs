//! `uring-bt seed`: the command that starts the seeding server.
//!
//! Parse and validate first, then build: load (or create) the torrents, check the data, build the
//! registry, bind one SO_REUSEPORT listener per shard, then hand over to the control plane
//! (`control::run`): it starts the shards under the supervisor, prints where we listen once they
//! serve, announces, dials, and stops cleanly on SIGINT/SIGTERM. Resume data is saved at the end.
//! The data plane is the shards (`server::shard`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use uring_bt_proto::metainfo::Metainfo;
use uring_bt_proto::session::SessionConfig;
use uring_bt_proto::wire::BLOCK_SIZE;
use uring_bt_storage::uring::MAX_OPEN_FILES;

use crate::cli::common::UsageError;
use crate::control::announce::{AnnounceTorrent, Announcer, AnnouncerConfig, Progress};
use crate::control::dialer::DialerConfig;
use crate::control::run::{Ended, ServerPlan};
use crate::control::status::human_bytes;
use crate::control::supervisor::Intensity;
use crate::control::tracker::ClientConfig;
use crate::server::affinity::{allowed_cpus, cpu_for_shard};
use crate::server::limits::{fd_budget, probe_io_uring, raise_nofile, MIN_OPEN_FILES};
use crate::server::registry::{hex, Registry, Torrent};
use crate::server::shard;
use crate::server::state::ShardConfig;
use crate::torrent::check::{check_or_resume, default_state_dir, save_resume};

/// `--send-path`: how blocks reach the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendPathArg {
    /// Read into the pool's registered buffers, then `writev` them.
    Copy,
    /// Splice page-cache pages to the socket through a pipe.
    Splice,
}

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
    /// Tracker to announce to, added to every torrent's own (repeatable; http://, https:// or
    /// udp://). Also written into a torrent made from PATH.
    #[arg(long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,
    /// Announce to no tracker (peers must find us by the magnet's x.pe= or be given our
    /// address).
    #[arg(long)]
    pub no_announce: bool,
    /// The IP address trackers should hand out for us (a server behind NAT); default: the one
    /// the tracker sees.
    #[arg(long, value_name = "IP")]
    pub announce_ip: Option<std::net::IpAddr>,
    /// The port trackers should hand out (a port forward); default: the listening port.
    #[arg(long, value_name = "PORT")]
    pub announce_port: Option<u16>,
    /// Most announces started per second (a server with thousands of torrents spreads them).
    #[arg(long, default_value_t = 20.0, value_name = "N")]
    pub announce_rate: f64,
    /// Seconds a UDP tracker has to answer before the first retransmission (BEP 15: 15; each
    /// retransmission waits twice as long as the one before).
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    pub udp_timeout: u64,
    /// Retransmissions to a UDP tracker before it counts as failed (at most 8).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub udp_retries: u32,
    /// Outgoing connections per torrent to peers from trackers (transmission, for one, never
    /// dials a loopback seeder: it must be dialed).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_dials: usize,
    /// Shard restarts allowed within --restart-window before the server gives up and exits 1.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_restarts: u32,
    /// Seconds over which --max-restarts is counted.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub restart_window: u64,
    /// Seconds a clean stop may take: sends in flight finish, `stopped` is announced.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub stop_timeout: u64,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "0.0.0.0:6881", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Shards (threads, one per core, each pinned): default, one per available core.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Open files per shard, 4 to 32768 (default: derived from RLIMIT_NOFILE, the shards and
    /// --max-peers).
    #[arg(long, value_name = "N")]
    pub max_open_files: Option<usize>,
    /// Connected peers in all (spread over shards).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_peers: usize,
    /// Connected peers per torrent (spread over shards).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_peers_per_torrent: usize,
    /// Peers unchoked at once per torrent, besides the optimistic unchoke.
    #[arg(long, default_value_t = uring_bt_proto::choker::DEFAULT_UPLOAD_SLOTS, value_name = "N")]
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
    /// How blocks reach the socket: `copy` reads them into the pool's registered buffers and
    /// sends those (the default: the cheaper path on this project's measurements); `splice`
    /// moves page-cache pages to the socket through a pipe, no copy in user space (io-wq
    /// workers do the splices). See docs/benchmarks.md, "Send paths".
    #[arg(long, value_enum, default_value_t = SendPathArg::Copy, value_name = "PATH")]
    pub send_path: SendPathArg,
    /// Pipes per shard for `--send-path splice` (two descriptors each; a batch holds one while
    /// it is sent).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub splice_pipes: usize,
    /// Trust the data instead of checking it first; each piece is then verified the first time it
    /// is served, and a piece that fails is never sent.
    #[arg(long)]
    pub skip_check: bool,
    /// Seconds a new connection has to complete its handshake.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub handshake_timeout: u64,
    /// Seconds of silence after which a peer is dropped.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Seconds a write to a peer may make no progress (no frame of 16 KiB written) before the
    /// peer is dropped: it stopped reading, and holds buffers.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub write_timeout: u64,
    /// Bytes of control messages (REJECT, HAVE, keep-alive...) queued for one peer above which
    /// we stop reading from it until they are written.
    #[arg(long, default_value_t = uring_bt_proto::session::DEFAULT_OUT_HIGH_WATER, value_name = "BYTES")]
    pub control_queue: usize,
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

/// Our peer id: Azureus style `-UB0100-` and 12 random alphanumerics.
pub(crate) fn make_peer_id() -> [u8; 20] {
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

/// A usage or input error: exit code 2 (see `cli::exit_code_for`).
fn usage(msg: impl std::fmt::Display) -> anyhow::Error {
    UsageError(msg.to_string()).into()
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
        let data = args.data.clone().ok_or_else(|| {
            usage("--data DIR is required with .torrent files (the content is at DIR/<name>)")
        })?;
        if !data.is_dir() {
            return Err(usage(format_args!(
                "--data {}: not a directory",
                data.display()
            )));
        }
        let mut out = Vec::new();
        for p in &args.inputs {
            let meta = crate::torrent::load::metainfo_from_file(p)
                .with_context(|| format!("cannot load {}", p.display()))?;
            out.push(Loaded {
                meta,
                root: data.clone(),
            });
        }
        return Ok(out);
    }
    if args.inputs.len() != 1 {
        return Err(usage(
            "give either .torrent files, or one file or directory to make a torrent of",
        ));
    }
    let path = &args.inputs[0];
    let path = path
        .canonicalize()
        .map_err(|e| usage(format_args!("cannot seed {}: {e}", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| usage("cannot seed a path without a name"))?
        .to_os_string();
    let root = path
        .parent()
        .ok_or_else(|| usage("cannot seed a path without a parent directory"))?
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
    let opts = crate::torrent::create::CreateOptions {
        trackers: args.trackers.iter().map(|t| vec![t.clone()]).collect(),
        threads: cores,
        ..crate::torrent::create::CreateOptions::default()
    };
    let source = crate::torrent::create::Source::scan(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let created = crate::torrent::create::build(&source, &opts, &|_| {})
        .with_context(|| format!("cannot make a torrent of {}", path.display()))?;
    std::fs::write(&output, &created.bytes)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let meta = created.metainfo;
    eprintln!("wrote {}", output.display());
    Ok(vec![Loaded { meta, root }])
}

/// Runs `uring-bt seed`.
pub fn run(args: SeedArgs) -> anyhow::Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = args.shards.unwrap_or(cores);
    if shards == 0 || shards > 256 {
        return Err(usage("--shards must be between 1 and 256"));
    }
    if args.buffers == 0 || args.buffers > 16384 {
        return Err(usage(
            "--buffers must be between 1 and 16384 (io_uring registers at most 16384)",
        ));
    }
    if args.upload_slots == 0 {
        return Err(usage("--upload-slots must be at least 1"));
    }
    if let Some(f) = args.max_open_files {
        if !(MIN_OPEN_FILES..=MAX_OPEN_FILES).contains(&f) {
            return Err(usage(format_args!(
                "--max-open-files must be between {MIN_OPEN_FILES} and {MAX_OPEN_FILES} (the \
                 storage ring registers at most {MAX_OPEN_FILES} files per shard)"
            )));
        }
    }
    if args.reqq == 0 || args.reqq > 100_000 {
        return Err(usage("--reqq must be between 1 and 100000"));
    }
    if args.batch == 0 || args.batch > 64 {
        return Err(usage("--batch must be between 1 and 64"));
    }
    if args.splice_pipes == 0 || args.splice_pipes > 1024 {
        return Err(usage("--splice-pipes must be between 1 and 1024"));
    }
    if args.coalesce == 0 || args.coalesce > 64 {
        return Err(usage("--coalesce must be between 1 and 64"));
    }
    if args.control_queue < 64 || args.control_queue > 16 << 20 {
        return Err(usage(
            "--control-queue must be between 64 and 16777216 bytes",
        ));
    }
    if args.write_timeout == 0 || args.write_timeout > 3600 {
        return Err(usage("--write-timeout must be between 1 and 3600 seconds"));
    }
    if !(0.1..=10_000.0).contains(&args.announce_rate) {
        return Err(usage("--announce-rate must be between 0.1 and 10000"));
    }
    if args.max_restarts > 1000 || args.restart_window == 0 || args.restart_window > 86_400 {
        return Err(usage(
            "--max-restarts must be at most 1000 and --restart-window between 1 and 86400",
        ));
    }
    if args.udp_timeout == 0 || args.udp_timeout > 60 || args.udp_retries > 8 {
        return Err(usage(
            "--udp-timeout must be between 1 and 60 seconds and --udp-retries at most 8",
        ));
    }
    if args.stop_timeout > 600 {
        return Err(usage("--stop-timeout must be at most 600 seconds"));
    }
    crate::cli::common::check_tracker_urls(&args.trackers)?;
    let nofile = raise_nofile();
    // Refusing --shards/--max-open-files under the open-file limit is a usage error too.
    // The splice path's pipes take two descriptors each, off the top.
    let pipe_fds = match args.send_path {
        SendPathArg::Copy => 0,
        SendPathArg::Splice => 2 * args.splice_pipes as u64 * shards as u64,
    };
    let (max_peers, files_per_shard) = fd_budget(
        nofile.saturating_sub(pipe_fds),
        shards,
        args.max_peers,
        args.max_open_files,
        1,
    )
    .map_err(|e| usage(format_args!("{e:#}")))?;
    // io_uring refused, or no locked memory for a ring: say so now, not after the data check.
    probe_io_uring().map_err(anyhow::Error::msg)?;
    // The CPUs shards are pinned to: those this process may use (`taskset`, a cgroup cpuset),
    // read here on the main thread before any shard starts; shard i takes the i-th of them.
    let allowed = if args.no_pin {
        Vec::new()
    } else {
        allowed_cpus().unwrap_or_else(|e| {
            tracing::warn!("cannot read this process's CPU affinity ({e}): shards run unpinned");
            Vec::new()
        })
    };

    let loaded = load_inputs(&args)?;
    // A port another server holds: said now, not after the data check.
    shard::port_taken(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let state_dir = if args.no_resume {
        None
    } else {
        Some(match &args.state_dir {
            Some(d) => d.clone(),
            None => default_state_dir()?,
        })
    };
    let registry = Registry::new();
    let startup = crate::cli::common::StartupSignals::install();
    for (i, l) in loaded.iter().enumerate() {
        let verified = if args.skip_check {
            false
        } else {
            check_or_resume(&l.meta, &l.root, state_dir.as_deref(), cores)?
        };
        if !verified && !args.skip_check {
            return Ok(ExitCode::from(1));
        }
        let mut t = Torrent::new_seed(
            i,
            l.meta.info_hash,
            l.meta.name.clone(),
            Arc::new(l.meta.layout()),
            l.root.clone(),
            l.meta.pieces.clone().into(),
            verified,
        );
        t.private = l.meta.private;
        // BEP 9: what a magnet link's client asks for; never for a private torrent (BEP 27).
        if !l.meta.private {
            t.metadata = Some(Arc::from(l.meta.info_bytes.as_slice()));
        }
        // What the pieces were verified against (checked above, or lazily when served).
        t.stamp_files();
        registry.add(t).map_err(anyhow::Error::msg)?;
    }
    drop(startup);
    let registry = Arc::new(registry);

    let (listeners, bound) = shard::bind_listeners_exclusive(args.listen, shards)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let peer_id = make_peer_id();
    // Registered buffers are charged to RLIMIT_MEMLOCK without CAP_IPC_LOCK: raise it to the hard
    // limit and size the pools to what it allows, saying so once when that is less.
    let buffers = uring_bt_storage::pool::pool_size_for_this_process(
        args.buffers,
        BLOCK_SIZE as usize,
        shards,
    );
    if buffers < args.buffers {
        eprintln!(
            "warning: --buffers {} lowered to {buffers} per shard by RLIMIT_MEMLOCK (raise it with \
             `ulimit -l` or grant CAP_IPC_LOCK)",
            args.buffers
        );
    }
    let mut session = SessionConfig::new(peer_id, 0, args.reqq);
    session.handshake_timeout = Duration::from_secs(args.handshake_timeout.max(1));
    session.idle_timeout = Duration::from_secs(args.idle_timeout.max(1));
    session.write_timeout = Duration::from_secs(args.write_timeout);
    session.out_high_water = args.control_queue;
    // Two batches: the one being sent and the one read ahead.
    session.max_in_flight = 2 * args.batch as u32;
    let per_shard = |n: usize| n.div_ceil(shards).max(1);
    let mut shard_plans = Vec::with_capacity(shards);
    for (index, listener) in listeners.into_iter().enumerate() {
        let cfg = ShardConfig {
            index,
            pin_cpu: cpu_for_shard(&allowed, index),
            max_peers: per_shard(max_peers),
            max_peers_per_torrent: per_shard(args.max_peers_per_torrent.min(max_peers)),
            buffers,
            max_open_files: files_per_shard,
            upload_slots: per_shard(args.upload_slots),
            session: SessionConfig {
                listen_port: bound.port(),
                ..session.clone()
            },
            ring_entries: 256,
            batch: args.batch,
            coalesce: args.coalesce,
            max_half_open: 16,
            splice_pipes: match args.send_path {
                SendPathArg::Copy => 0,
                SendPathArg::Splice => args.splice_pipes,
            },
            download: Default::default(),
        };
        shard_plans.push((cfg, listener));
    }

    // What peers are told: the listening address, or --announce-ip/--announce-port.
    let public_port = args.announce_port.unwrap_or(bound.port());
    let public = match (args.announce_ip, bound.ip().is_unspecified()) {
        (Some(ip), _) => Some(SocketAddr::new(ip, public_port)),
        (None, false) => Some(SocketAddr::new(bound.ip(), public_port)),
        (None, true) => None,
    };
    let mut own = vec![bound];
    own.extend(public);
    let magnet_peers: Vec<SocketAddr> = public.into_iter().collect();
    // Each torrent's trackers: its own tiers, then each --tracker not already in them as a
    // tier of its own (BEP 12).
    let tiers_of = |meta: &Metainfo| -> Vec<Vec<String>> {
        let mut tiers = meta.trackers.clone();
        for url in &args.trackers {
            if !tiers.iter().flatten().any(|u| u == url) {
                tiers.push(vec![url.clone()]);
            }
        }
        tiers.retain(|t| !t.is_empty());
        tiers
    };
    // A magnet link with neither a tracker nor our address finds nobody (no DHT yet): say so.
    if magnet_peers.is_empty() {
        for l in &loaded {
            if tiers_of(&l.meta).is_empty() {
                eprintln!(
                    "note: {}: its magnet link has no tracker and no address (listening on \
                     {bound}): pass --tracker URL, or --announce-ip IP for x.pe=, so that a \
                     client with only the link can find this seeder",
                    l.meta.name
                );
            }
        }
    }
    // Printed once the shards serve: `listening:` means ready.
    let mut ready_lines = vec![format!(
        "listening: {bound} ({shards} shard(s), {buffers} buffers and {files_per_shard} open files each, {max_peers} peers max)"
    )];
    for t in registry.torrents().iter() {
        let meta = &loaded[t.index].meta;
        let mut m = meta.clone();
        m.trackers = tiers_of(meta);
        ready_lines.push(format!("info_hash: {} {}", hex(&t.info_hash), t.name));
        ready_lines.push(format!("magnet: {}", m.magnet(&magnet_peers)));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control-plane runtime")?;
    let stop_timeout = Duration::from_secs(args.stop_timeout);
    let ended = rt.block_on(async {
        let announcer = if args.no_announce {
            None
        } else {
            let cfg = AnnouncerConfig {
                peer_id,
                port: public_port,
                ip: args.announce_ip,
                rate: args.announce_rate,
                stop_timeout,
                ..AnnouncerConfig::new(peer_id, public_port)
            };
            let cfg = AnnouncerConfig {
                client: ClientConfig {
                    udp_base_timeout: Duration::from_secs(args.udp_timeout),
                    udp_max_retransmit: args.udp_retries,
                    local_ip: Some(bound.ip()).filter(|ip| !ip.is_unspecified()),
                    ..cfg.client.clone()
                },
                ..cfg
            };
            let a = Announcer::new(cfg).context("cannot start the tracker client")?;
            let mut any = false;
            for t in registry.torrents().iter() {
                let tiers = tiers_of(&loaded[t.index].meta);
                if tiers.is_empty() {
                    continue;
                }
                any = true;
                let torrent = t.clone();
                a.add(AnnounceTorrent {
                    info_hash: t.info_hash,
                    name: t.name.clone(),
                    tiers,
                    private: t.private,
                    progress: Box::new(move || Progress {
                        uploaded: torrent.stats.uploaded.load(Ordering::Relaxed),
                        downloaded: 0,
                        // Seeding: what we lack is what failed (0 for a healthy seed).
                        left: u64::from(torrent.unavailable())
                            .saturating_mul(u64::from(torrent.layout.piece_length()))
                            .min(torrent.layout.total_length()),
                    }),
                });
            }
            any.then_some(a)
        };
        // The parsed torrents (raw info bytes, piece hashes again) are not needed while
        // serving: the registry holds what the shards use.
        drop(loaded);
        crate::control::run::run(ServerPlan {
            registry: registry.clone(),
            shards: shard_plans,
            bound,
            announcer,
            dialer: DialerConfig {
                max_per_torrent: args.max_dials,
                ..DialerConfig::default()
            },
            own,
            intensity: Intensity {
                max_restarts: args.max_restarts,
                window: Duration::from_secs(args.restart_window),
            },
            grace: stop_timeout,
            status_interval: Duration::from_secs(args.status_interval.max(1)),
            ready_lines,
            download: None,
        })
        .await
    })?;
    if let Some(dir) = &state_dir {
        for t in registry.torrents().iter() {
            save_resume(t.info_hash, &t.layout, &t.root, &t.resume_bitfield(), dir);
        }
    }
    let sum = |f: fn(&crate::server::registry::TorrentStats) -> u64| -> u64 {
        registry.torrents().iter().map(|t| f(&t.stats)).sum()
    };
    let total = sum(|s| s.uploaded.load(Ordering::Relaxed));
    let peers = sum(|s| s.peers_total.load(Ordering::Relaxed));
    let dropped = sum(|s| s.peers_dropped.load(Ordering::Relaxed));
    eprintln!("{}", registry.server.summary());
    match ended {
        Ended::GaveUp(msg) | Ended::DownloadFailed(msg) => {
            eprintln!(
                "stopped: {} served to {peers} peers; gave up: {msg}",
                human_bytes(total)
            );
            Ok(ExitCode::from(1))
        }
        Ended::Stopped {
            stopped_sent,
            stopped_acked,
        } => {
            eprintln!(
                "stopped: {} served to {peers} peers; {dropped} dropped for misbehaving; \
                 `stopped` announced to {stopped_acked} of {stopped_sent} tracker(s)",
                human_bytes(total)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_shape() {
        let id = make_peer_id();
        assert_eq!(&id[..8], b"-UB0100-");
        assert!(id[8..].iter().all(|c| c.is_ascii_alphanumeric()));
    }
}
