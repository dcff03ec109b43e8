//! The soak test, short variant (CI): `benches/soak.py` against this build's `uring-bt seed`
//! for 40 s, with 120 hostile connections (REQUEST+CANCEL floods, stalled readers, interest
//! flips, slowloris, garbage, connect-and-close, strikes) beside honest python3-libtorrent
//! leechers, on loopback. The script samples the seeder's RSS and descriptors every 0.5 s and
//! exits non-zero when they grow, when an honest download fails or is corrupt, or when the
//! seeder does not stop cleanly; see its docstring for every bound. The long variant:
//! `scripts/soak --seconds 600 --hostile 2000` (release build).
//!
//! A missing python3-libtorrent fails this test (never a skip).

mod common;

use common::{require_libtorrent, run, PYTHON};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Bound on the whole script: the run, a last download, the seeder's stop.
const SOAK_TIMEOUT: Duration = Duration::from_secs(480);

#[test]
fn soak_short() {
    require_libtorrent();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest.join("../benches/soak.py");
    assert!(script.is_file(), "{} is missing", script.display());
    let mut cmd = Command::new(PYTHON);
    cmd.current_dir(manifest)
        .arg("../benches/soak.py")
        .args(["--binary", env!("CARGO_BIN_EXE_uring-bt")])
        .args(["--seconds", "40", "--hostile", "120", "--size-mib", "64"]);
    let start = std::time::Instant::now();
    let out = run("benches/soak.py", cmd, SOAK_TIMEOUT);
    println!("{}", out.stdout);
    eprintln!("{}", out.stderr);
    eprintln!("[soak_short] took {:.1} s", start.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "benches/soak.py failed ({}): see its FAIL lines above",
        out.status
    );
    assert!(
        out.stdout.lines().any(|l| l == "PASS"),
        "benches/soak.py exited 0 without its PASS line"
    );
}
