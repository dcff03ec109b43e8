//! `uring-bt bench`: measurements of this machine against its physical limits. Nothing here is
//! on the serving path; it drives the same storage ring the shards use.
//! - [`disk`]: block reads through the storage ring against tokio-uring, a bare ring, `pread`
//!   and `mmap`.
//! - [`hash`]: SHA-1 on one core and on all, single stream and sixteen lanes, beside
//!   `openssl speed`.
//! - [`net`]: the ceiling of the network send path (send, pread+send, batched, sendfile, a bare
//!   ring with registered buffers), sender and receiver CPU per GiB, beside `iperf3`.
//! - [`swarm`]: the real seeder (a child `uring-bt seed`) against K cheap peers of our own on
//!   loopback: aggregate MB/s, the seeder's CPU per GiB, peak RSS and descriptors, as ratios
//!   of bench net's ceiling and floor measured in the same invocation.
//!
//! With no subcommand, [`run_all`] runs hash, disk (as a child `uring-bt bench disk --json`,
//! one short round on a smaller file), net and a short swarm (8 peers, 2 x S seconds, on the
//! same file) in turn, progress on stderr, and prints one table: each figure beside the
//! machine's ceiling for it as the external tool measured it in the same run (`openssl speed`,
//! `iperf3`; for the disk, `bench disk`'s own bare ring: it runs no fio; for the swarm, bench
//! net's ceiling and floor).

pub mod disk;
pub mod hash;
pub mod net;
pub mod swarm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::UsageError;

/// Arguments of `uring-bt bench` with no subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchAllArgs {
    /// Seconds per measurement (0 < S <= 60): hash takes about 6 x S, disk 4 x S, net 7 x S,
    /// the swarm 2 x S plus a second of warm-up, plus making and warming the file (about 45 s
    /// in all at the default).
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Size in MiB of the file that disk and net read (1..=65536).
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// Directory for that file, in a scratch subdirectory removed afterwards: ext4, never tmpfs
    /// (default: /var/tmp).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print one JSON object (every part's own JSON and the table) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One line of the overview: our figure beside the machine's ceiling for it.
#[derive(Debug, Clone)]
struct Row {
    what: String,
    figure: Option<f64>,
    unit: &'static str,
    ceiling: Option<f64>,
    source: String,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.figure
            .zip(self.ceiling)
            .filter(|(_, c)| *c > 0.0)
            .map(|(f, c)| f / c)
    }
}

fn check_args(args: &BenchAllArgs) -> anyhow::Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= 60.0) {
        return Err(UsageError("--seconds must be in (0, 60]".into()).into());
    }
    if args.size_mib == 0 || args.size_mib > 1 << 16 {
        return Err(UsageError("--size-mib must be in 1..=65536".into()).into());
    }
    if let Some(d) = &args.dir {
        if !d.is_dir() {
            return Err(UsageError(format!("--dir {}: not a directory", d.display())).into());
        }
    }
    Ok(())
}

/// `uring-bt bench disk FILE --json`, one round, as a child of this binary.
fn disk_child(file: &Path, size_mib: u64, seconds: f64) -> Result<serde_json::Value, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find our binary: {e}"))?;
    let disk_seconds = 4.0 * seconds;
    let mut cmd = Command::new(exe);
    cmd.arg("bench")
        .arg("disk")
        .arg(file)
        .args(["--size-mib", &size_mib.to_string()])
        .args(["--seconds", &format!("{disk_seconds}")])
        .args(["--rounds", "1", "--json"]);
    // Making the file takes a while on a slow disk: allow for it.
    let timeout = Duration::from_secs_f64(disk_seconds + 120.0 + size_mib as f64 / 50.0);
    let (code, out) = hash::output_within(Stdio::inherit(), &mut cmd, timeout)?;
    if code != 0 {
        return Err(format!("bench disk exited with {code}"));
    }
    serde_json::from_str(out.trim()).map_err(|e| format!("bench disk printed no JSON: {e}"))
}

fn disk_mb(disk: &serde_json::Value, path: &str) -> Option<f64> {
    disk["runs"]
        .as_array()?
        .iter()
        .find(|r| r["path"] == path)?["mb_per_s"]
        .as_f64()
}

fn rows(
    h: &hash::HashReport,
    disk: &Result<serde_json::Value, String>,
    n: &net::NetReport,
    sw: &Result<swarm::SwarmReport, String>,
) -> Vec<Row> {
    let mut out = Vec::new();
    for hash::HashRow {
        key,
        what,
        rate,
        openssl: theirs,
    } in h.rows()
    {
        let source = if key.ends_with("one_core") {
            "openssl speed -evp sha1".to_string()
        } else {
            format!("openssl speed -multi {} -evp sha1", h.threads)
        };
        out.push(Row {
            what: format!("SHA-1, {what}"),
            figure: rate.ok().map(|r| r.mb_per_s()),
            unit: "MB/s",
            ceiling: theirs.as_ref().ok().copied(),
            source,
        });
    }
    let ring = "raw ring, no runtime";
    let disk_source = "bare io_uring ring (bench disk's own; it runs no fio)";
    for (path, what) in [
        (
            "storage reg file+reg bufs",
            "disk 16 KiB reads, storage ring",
        ),
        ("pread", "disk 16 KiB reads, pread"),
    ] {
        let d = disk.as_ref().ok();
        out.push(Row {
            what: what.to_string(),
            figure: d.and_then(|d| disk_mb(d, path)),
            unit: "MB/s",
            ceiling: d.and_then(|d| disk_mb(d, ring)),
            source: disk_source.to_string(),
        });
    }
    let ip = n.iperf3.as_ref().ok();
    for p in &n.paths {
        out.push(Row {
            what: format!("net {}", p.path.what()),
            figure: p.ok().then(|| p.mb_per_s()),
            unit: "MB/s",
            ceiling: ip.map(|i| i.mb_per_s),
            source: "iperf3, 1 stream".into(),
        });
    }
    let floor = n.floor();
    out.push(Row {
        what: format!(
            "net floor, sender ({})",
            floor.map(|f| f.path.key()).unwrap_or("-")
        ),
        figure: floor.map(|f| f.send_cost_per_gib()),
        unit: "CPU-s/GiB",
        ceiling: ip.map(|i| i.sender_cpu_per_gib()),
        source: "iperf3 client CPU per GiB".into(),
    });
    let sw = sw.as_ref().ok();
    let peers = sw.map(|s| s.peers).unwrap_or(SWARM_PEERS);
    out.push(Row {
        what: format!("swarm, {peers} peers: uring-bt seed"),
        figure: sw.map(|s| s.mb_per_s()),
        unit: "MB/s",
        ceiling: n.ceiling().map(|c| c.mb_per_s()),
        source: "bench net's ceiling (best path)".into(),
    });
    out.push(Row {
        what: "swarm: seeder CPU (whole process)".into(),
        figure: sw.and_then(|s| s.seeder_cpu_per_gib()),
        unit: "CPU-s/GiB",
        ceiling: floor.map(|f| f.send_cost_per_gib()),
        source: "bench net's floor".into(),
    });
    out
}

/// Peers of the overview's swarm.
const SWARM_PEERS: usize = 8;

fn fmt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) if unit == "MB/s" => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.3} {unit}"),
        None => "-".into(),
    }
}

/// Runs `uring-bt bench` with no subcommand.
pub fn run_all(args: BenchAllArgs) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let started = Instant::now();
    let say = |m: &str| {
        eprintln!("bench [{:5.1} s] {m}", started.elapsed().as_secs_f64());
    };
    let secs = args.seconds;

    say("1/4 hash: SHA-1 beside openssl speed");
    let hash_args = hash::BenchHashArgs {
        seconds: secs,
        threads: None,
        json: args.json,
    };
    let h = hash::measure(&hash_args, &say).context("bench hash")?;

    let parent = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let scratch = net::ScratchDir::new(&parent)?;
    let file = scratch.path().join("data.bin");
    say(&format!(
        "2/4 disk: bench disk {} --size-mib {} --seconds {} --rounds 1",
        file.display(),
        args.size_mib,
        4.0 * secs
    ));
    let disk = disk_child(&file, args.size_mib, secs);
    if let Err(e) = &disk {
        say(&format!("disk: {e}"));
    }
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(args.size_mib << 20) {
        disk::ensure_file(&file, args.size_mib << 20)?;
    }

    say("3/4 net: send paths beside iperf3");
    let net_args = net::BenchNetArgs {
        seconds: secs,
        block: 16_384,
        streams: None,
        dir: None,
        size_mib: args.size_mib,
        json: args.json,
        serve: None,
        to: None,
    };
    let n = net::measure(&net_args, Some(&file), &say).context("bench net")?;

    let swarm_args = swarm::BenchSwarmArgs {
        peers: SWARM_PEERS,
        size_mib: args.size_mib,
        duration: 2.0 * secs,
        warmup: 1.0,
        pipeline: 128,
        sample_every: 64,
        net_seconds: secs,
        dir: args.dir.clone(),
        send_path: crate::cli::seed::SendPathArg::Copy,
        against: None,
        torrent: None,
        data: None,
        seeder_pid: None,
        no_net: false,
        json: args.json,
    };
    say(&format!(
        "4/4 swarm: uring-bt seed and {SWARM_PEERS} peers of our own, {:.1} s",
        swarm_args.duration
    ));
    // A wrong block fails the whole run, as it fails `bench swarm`; other failures (the
    // seeder would not start) are reported in the table.
    let sw = swarm::measure(
        &swarm_args,
        Some(&file),
        Some(swarm::NetFigures::of(&n)),
        &say,
    );
    let sw = match sw {
        Err(e) if e.chain().any(|c| c.is::<swarm::WrongBlock>()) => {
            return Err(e.context("bench swarm"))
        }
        r => r.map_err(|e| format!("{e:#}")),
    };
    if let Err(e) = &sw {
        say(&format!("swarm: {e}"));
    }
    drop(scratch);
    let total = started.elapsed().as_secs_f64();
    say("done");

    let table = rows(&h, &disk, &n, &sw);
    let text = if args.json {
        let t: Vec<_> = table
            .iter()
            .map(|r| {
                serde_json::json!({
                    "what": r.what, "figure": r.figure, "unit": r.unit,
                    "ceiling": r.ceiling, "ceiling_source": r.source, "ratio": r.ratio(),
                })
            })
            .collect();
        let disk_json = match &disk {
            Ok(v) => v.clone(),
            Err(e) => serde_json::json!({ "error": e }),
        };
        let swarm_json = match &sw {
            // Bench net's own JSON is under "net" already.
            Ok(s) => {
                let mut v = s.json();
                if let Some(m) = v.as_object_mut() {
                    m.remove("net");
                }
                v
            }
            Err(e) => serde_json::json!({ "error": e }),
        };
        let v = serde_json::json!({
            "seconds_per_measurement": secs, "seconds_total": total,
            "hash": h.json(), "disk": disk_json, "net": n.json(), "swarm": swarm_json,
            "table": t,
        });
        format!("{v}\n")
    } else {
        let mut s = format!(
            "uring-bt bench: {:.0} s, {:.1} s per measurement, {} thread(s)/stream(s)\n\
             {:<44} {:>16} {:>16} {:>6}  ceiling measured by\n",
            total, secs, h.threads, "what", "figure", "ceiling", "ratio"
        );
        for r in &table {
            s.push_str(&format!(
                "{:<44} {:>16} {:>16} {:>6}  {}\n",
                r.what,
                fmt(r.figure, r.unit),
                fmt(r.ceiling, r.unit),
                r.ratio().map(|q| format!("{q:.2}")).unwrap_or("-".into()),
                r.source
            ));
        }
        if let Err(e) = &disk {
            s.push_str(&format!("disk: {e}\n"));
        }
        if let Err(e) = &n.iperf3 {
            s.push_str(&format!("iperf3: {e}\n"));
        }
        if let Err(e) = &sw {
            s.push_str(&format!("swarm: {e}\n"));
        }
        s
    };
    hash::print_stdout(&text)
}
