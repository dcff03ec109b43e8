//! The status line: sampled from the registry's counters, the announcer and the dialer every
//! period (live on a terminal, a line every few seconds otherwise). The loop that prints it is
//! the control plane's (`control::run`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::control::announce::{Announcer, TrackerState};
use crate::server::registry::Registry;

/// Rates need the previous sample: one per torrent.
pub struct StatusSampler {
    last: Vec<u64>,
    last_at: Instant,
}

impl Default for StatusSampler {
    fn default() -> Self {
        StatusSampler {
            last: Vec::new(),
            last_at: Instant::now(),
        }
    }
}

impl StatusSampler {
    /// One line for every torrent: peers (by source), upload rate and total, its error if any,
    /// and each tracker's state; then the shards' restarts when there were any.
    pub fn line(
        &mut self,
        registry: &Arc<Registry>,
        announcer: Option<&Announcer>,
        restarts: &[u32],
    ) -> String {
        let dt = self.last_at.elapsed().as_secs_f64().max(1e-3);
        self.last_at = Instant::now();
        let torrents = registry.torrents();
        self.last.resize(torrents.len(), 0);
        let mut line = String::new();
        for (t, prev) in torrents.iter().zip(self.last.iter_mut()) {
            let up = t.stats.uploaded.load(Ordering::Relaxed);
            let rate = up.saturating_sub(*prev) as f64 / dt;
            *prev = up;
            if !line.is_empty() {
                line.push_str(" | ");
            }
            let peers = t.stats.peers.load(Ordering::Relaxed);
            let dialed = t.stats.peers_dialed.load(Ordering::Relaxed).min(peers);
            line.push_str(&format!(
                "{}: {} peers ({} in, {} dialed), {}/s, {} served",
                t.name,
                peers,
                peers - dialed,
                dialed,
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
            if let Some(a) = announcer {
                for tr in a.status(&t.info_hash) {
                    line.push_str(&format!("; {} ", tr.url));
                    match &tr.state {
                        TrackerState::NotYet => line.push_str("not yet"),
                        TrackerState::Updating => line.push_str("announcing"),
                        TrackerState::Ok {
                            seeders, leechers, ..
                        } => {
                            line.push_str("ok");
                            if let (Some(s), Some(l)) = (seeders, leechers) {
                                line.push_str(&format!(" ({s} seeders, {l} leechers)"));
                            }
                        }
                        TrackerState::Failed { error, .. } => {
                            line.push_str(&format!("error: {error}"));
                        }
                    }
                }
            }
        }
        if restarts.len() > 1 {
            let by_shard: Vec<usize> = registry
                .server
                .shard_peers
                .iter()
                .take(restarts.len())
                .map(|n| n.load(Ordering::Relaxed))
                .collect();
            line.push_str(&format!(" | peers by shard {by_shard:?}"));
        }
        let total: u32 = restarts.iter().sum();
        if total > 0 {
            line.push_str(&format!(" | shard restarts {restarts:?}"));
        }
        line
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
