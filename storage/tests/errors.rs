//! Acceptance: short-file, missing-file, read-only-directory and full-disk cases each give their
//! typed error. The read-only and full-disk cases mount a small tmpfs, which needs root: a plain
//! `cargo test` lists them as ignored (with that reason), `scripts/test` runs them as root with
//! `--include-ignored`, and there they fail, not skip, if the mount is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;

use common::*;
use uring_bt_storage::layout::Layout;
use uring_bt_storage::pool::BufPool;
use uring_bt_storage::store::{BlockStore, ErrorAction, StorageError};
use uring_bt_storage::uring::{UringConfig, UringStore};

struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, opts: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "mount -t tmpfs -o {opts} failed (these tests need root)"
        );
        Mount(at.to_path_buf())
    }

    fn remount_ro(&self) {
        let st = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..50 {
            if Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn store(pool: &Rc<BufPool>) -> Rc<UringStore> {
    UringStore::new(UringConfig::default(), Rc::clone(pool)).unwrap()
}

#[test]
fn short_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Arc::new(
        Layout::new(vec![fe("s/short", 40_000), fe("s/missing", 10_000)], 16_384).unwrap(),
    );
    std::fs::create_dir_all(dir.path().join("s")).unwrap();
    std::fs::write(dir.path().join("s/short"), vec![1u8; 20_000]).unwrap();
    tokio_uring::start(async {
        let pool = BufPool::new(2, 16_384).unwrap();
        let st = store(&pool);
        let t = st.add_torrent(Arc::clone(&layout), dir.path().to_path_buf(), false);
        // Inside the existing part: fine.
        let (r, buf) = st.read_block(t, 0, 0, 16_384, pool.take().await).await;
        r.unwrap();
        assert!(buf.block().iter().all(|&b| b == 1));
        drop(buf);
        // Crossing the end of the short file: a partial read, then EOF.
        let (r, _) = st.read_block(t, 1, 0, 16_384, pool.take().await).await;
        match r {
            Err(e @ StorageError::FileTooShort { .. }) => {
                assert_eq!(e.action(), ErrorAction::PauseTorrent);
                let StorageError::FileTooShort {
                    path,
                    expected,
                    actual,
                } = e
                else {
                    unreachable!()
                };
                assert!(path.ends_with("s/short"));
                assert_eq!((expected, actual), (40_000, 20_000));
            }
            other => panic!("want FileTooShort, got {other:?}"),
        }
        // Piece 2 starts in the short file's missing tail.
        let (r, _) = st.read_block(t, 2, 0, 100, pool.take().await).await;
        assert!(matches!(r, Err(StorageError::FileTooShort { .. })), "{r:?}");
        // Last piece lies in the missing file.
        let last = layout.num_pieces() - 1;
        let (r, _) = st.read_block(t, last, 0, 10, pool.take().await).await;
        match r {
            Err(StorageError::FileMissing { path }) => assert!(path.ends_with("s/missing")),
            other => panic!("want FileMissing, got {other:?}"),
        }
        assert!(st.hash_piece(t, last).await.is_err());
        assert_eq!(pool.available(), 2);
    });
}

#[test]
#[ignore = "needs root to mount a tmpfs: scripts/test runs it (cargo test -- --include-ignored)"]
fn read_only_directory() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("ro");
    let m = Mount::tmpfs(&mnt, "size=1m");
    let layout = Arc::new(Layout::new(vec![fe("r/exists", 100), fe("r/new", 100)], 100).unwrap());
    std::fs::create_dir_all(mnt.join("r")).unwrap();
    std::fs::write(mnt.join("r/exists"), [5u8; 100]).unwrap();
    m.remount_ro();
    tokio_uring::start(async {
        let pool = BufPool::new(2, 16_384).unwrap();
        let st = store(&pool);
        let w = st.add_torrent(Arc::clone(&layout), mnt.clone(), true);
        for piece in [0, 1] {
            let mut buf = pool.take().await;
            buf.fill_block(&[9u8; 100]);
            let (r, _) = st.write_block(w, piece, 0, buf).await;
            match r {
                Err(StorageError::ReadOnly { path }) => assert!(path.starts_with(&mnt)),
                other => panic!("piece {piece}: want ReadOnly, got {other:?}"),
            }
        }
        // Seeding from a read-only directory still works.
        let ro = st.add_torrent(Arc::clone(&layout), mnt.clone(), false);
        let (r, buf) = st.read_block(ro, 0, 0, 100, pool.take().await).await;
        r.unwrap();
        assert_eq!(buf.block(), &[5u8; 100]);
    });
    drop(m);
}

#[test]
#[ignore = "needs root to mount a tmpfs: scripts/test runs it (cargo test -- --include-ignored)"]
fn full_disk() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("full");
    let m = Mount::tmpfs(&mnt, "size=1m");
    // 4 MiB of data onto a 1 MiB file system.
    let layout = Arc::new(Layout::new(vec![fe("f/big", 4 << 20)], 1 << 18).unwrap());
    let got = tokio_uring::start(async {
        let pool = BufPool::new(4, 16_384).unwrap();
        let st = store(&pool);
        let t = st.add_torrent(Arc::clone(&layout), mnt.clone(), true);
        let mut written = 0u64;
        for (p, b, n) in all_blocks(&layout, 16_384) {
            let mut buf = pool.take().await;
            buf.fill_block(&expected(&layout, p, b, n));
            let (r, _) = st.write_block(t, p, b, buf).await;
            match r {
                Ok(()) => written += u64::from(n),
                Err(e) => return (written, e),
            }
        }
        panic!("wrote all 4 MiB onto a 1 MiB tmpfs");
    });
    let (written, e) = got;
    assert!(written <= 1 << 20, "{written}");
    match e {
        StorageError::NoSpace { ref path } => assert!(path.ends_with("f/big")),
        ref other => panic!("want NoSpace, got {other:?}"),
    }
    assert_eq!(e.action(), ErrorAction::PauseTorrent);
    drop(m);
}
