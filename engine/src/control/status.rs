//! The status line: sampled from the registry's counters every period (live on a terminal,
//! a line every few seconds otherwise) until SIGINT or SIGTERM.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::server::registry::Registry;

/// Status lines until SIGINT or SIGTERM.
pub async fn control_loop(
    registry: Arc<Registry>,
    period: Duration,
    tty: bool,
) -> anyhow::Result<()> {
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
                    if let Some(err) = t.error() {
                        line.push_str(&format!(
                            ", ERROR {err} ({} of {} pieces unavailable)",
                            t.unavailable(),
                            t.layout.num_pieces()
                        ));
                    }
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
    fn human() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
