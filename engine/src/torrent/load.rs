//! Reading a .torrent file from disk. The parsing and validation are `uring-bt-proto`'s
//! (`Metainfo::from_bytes`); this adds the file and its size cap.

use std::io::Read;
use std::path::Path;

use uring_bt_proto::metainfo::{Metainfo, MetainfoError, MAX_TORRENT_SIZE};

/// Reads and parses a .torrent file; refuses files over [`MAX_TORRENT_SIZE`] without reading
/// them whole.
pub fn metainfo_from_file(path: &Path) -> Result<Metainfo, MetainfoError> {
    let io = |source| MetainfoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    // Read one byte past the limit to tell "at the limit" from "over it".
    file.take(MAX_TORRENT_SIZE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() > MAX_TORRENT_SIZE {
        let size = std::fs::metadata(path)
            .map(|m| m.len())
            .unwrap_or(buf.len() as u64);
        return Err(MetainfoError::TooLarge {
            size,
            limit: MAX_TORRENT_SIZE,
        });
    }
    Metainfo::from_bytes(&buf)
}
