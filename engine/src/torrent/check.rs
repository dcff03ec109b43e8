//! The start-up check before seeding: every piece hashed on all cores, skipped when the
//! torrent's resume data still matches the files (same torrent, sizes and mtimes unchanged,
//! every piece complete); a full check's result is saved as resume data.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use uring_bt_proto::metainfo::{hex, Metainfo};

/// Checks every piece on all cores; returns the bad piece indices.
fn check_data(meta: &Metainfo, root: &Path, threads: usize) -> anyhow::Result<Vec<u32>> {
    let layout = meta.layout();
    let results = uring_bt_storage::hash::hash_pieces(&layout, root, threads, &|_| {});
    let mut bad = Vec::new();
    let mut first_err = None;
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(h) if Some(h) == meta.pieces.get(i) => {}
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
        eprintln!("warning: {}: {e}", meta.name);
    }
    Ok(bad)
}

/// `$XDG_STATE_HOME/uring-bt`, else `~/.local/state/uring-bt`.
pub fn default_state_dir() -> anyhow::Result<PathBuf> {
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
pub fn check_or_resume(
    meta: &Metainfo,
    root: &Path,
    state_dir: Option<&Path>,
    cores: usize,
) -> anyhow::Result<bool> {
    use uring_bt_storage::resume;
    let layout = meta.layout();
    let resume_path = state_dir.map(|d| d.join(format!("{}.resume", hex(&meta.info_hash))));
    if let Some(path) = &resume_path {
        let plan = resume::plan(path, &meta.info_hash, &layout, root);
        let n = layout.num_pieces();
        let complete = (0..n).all(|p| resume::bit(&plan.have, p));
        match &plan.full_check_reason {
            None if plan.recheck.is_empty() && complete => {
                eprintln!(
                    "{}: resume data matches ({}): check skipped",
                    meta.name,
                    path.display()
                );
                return Ok(true);
            }
            None => eprintln!(
                "{}: {} piece(s) changed since the resume data was written: checking",
                meta.name,
                plan.recheck.len()
            ),
            Some(reason) => tracing::debug!("{}: full check: {reason}", meta.name),
        }
    }
    let started = Instant::now();
    let bad = check_data(meta, root, cores)?;
    if !bad.is_empty() {
        let shown: Vec<String> = bad.iter().take(10).map(|p| p.to_string()).collect();
        eprintln!(
            "error: {}: {} of {} pieces are bad or missing (first: {}); fix the data under {}, \
             or pass --skip-check to serve the good ones",
            meta.name,
            bad.len(),
            meta.pieces.len(),
            shown.join(", "),
            root.display()
        );
        return Ok(false);
    }
    eprintln!(
        "checked {}: {} pieces good in {:.2} s",
        meta.name,
        meta.pieces.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &resume_path {
        let have = uring_bt_proto::peer::full_bitfield(layout.num_pieces());
        let data = resume::snapshot(meta.info_hash, &layout, root, &have);
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

/// Saves a download's resume data at a stop: the pieces verified, and the pieces in progress
/// with their written blocks.
pub fn save_download_resume(
    info_hash: [u8; 20],
    layout: &uring_bt_storage::layout::Layout,
    root: &Path,
    have: &[u8],
    partials: Vec<(u32, Vec<u8>)>,
    state_dir: &Path,
) {
    use uring_bt_storage::resume;
    let path = state_dir.join(format!("{}.resume", hex(&info_hash)));
    let mut data = resume::snapshot(info_hash, layout, root, have);
    data.partials = partials;
    let saved = std::fs::create_dir_all(state_dir).and_then(|()| resume::save(&path, &data));
    if let Err(e) = saved {
        eprintln!("warning: cannot write resume data {}: {e}", path.display());
    }
}

/// Saves resume data for a torrent at a stop: `have` is what may be trusted next time (see
/// `Torrent::resume_bitfield`). Errors are reported, not fatal: the next start checks instead.
pub fn save_resume(
    info_hash: [u8; 20],
    layout: &uring_bt_storage::layout::Layout,
    root: &Path,
    have: &[u8],
    state_dir: &Path,
) {
    use uring_bt_storage::resume;
    let path = state_dir.join(format!("{}.resume", hex(&info_hash)));
    let data = resume::snapshot(info_hash, layout, root, have);
    let saved = std::fs::create_dir_all(state_dir).and_then(|()| resume::save(&path, &data));
    if let Err(e) = saved {
        eprintln!("warning: cannot write resume data {}: {e}", path.display());
    }
}

/// Before downloading: which pieces are on disk already (BEP 3 bitfield). The resume data is
/// trusted when it matches the files (same torrent, sizes and mtimes unchanged); otherwise every
/// piece of the files that exist is hashed on all cores (a missing or short file's pieces are
/// simply missing: nothing to report). A download killed without saving its resume data thus
/// loses only the pieces that were in flight: the check finds every piece completely written.
pub fn check_for_download(
    meta: &Metainfo,
    root: &Path,
    state_dir: Option<&Path>,
    cores: usize,
) -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
    use uring_bt_storage::resume;
    let layout = meta.layout();
    let n = layout.num_pieces();
    if let Some(dir) = state_dir {
        let path = dir.join(format!("{}.resume", hex(&meta.info_hash)));
        let plan = resume::plan(&path, &meta.info_hash, &layout, root);
        if plan.full_check_reason.is_none() && plan.recheck.is_empty() {
            eprintln!(
                "{}: resume data matches ({}): check skipped",
                meta.name,
                path.display()
            );
            return (plan.have, plan.partials);
        }
    }
    let started = Instant::now();
    let mut have = vec![0u8; (n as usize).div_ceil(8)];
    let any_file = layout
        .files()
        .iter()
        .any(|f| !f.padding && root.join(&f.path).exists());
    if !any_file {
        return (have, Vec::new());
    }
    let results = uring_bt_storage::hash::hash_pieces(&layout, root, cores, &|_| {});
    let mut good = 0u32;
    for (i, r) in results.iter().enumerate() {
        if matches!(r, Ok(h) if Some(h) == meta.pieces.get(i)) {
            have[i / 8] |= 0x80 >> (i % 8);
            good += 1;
        }
    }
    eprintln!(
        "checked {}: {good} of {n} pieces on disk in {:.2} s",
        meta.name,
        started.elapsed().as_secs_f64()
    );
    (have, Vec::new())
}
