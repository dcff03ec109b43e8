//! What every command shares: the error that carries an exit code ([`Fail`], [`UsageError`],
//! [`exit_code_for`]), stdout that stops quietly on a closed pipe ([`Out`]), notes on stderr,
//! the thread count, progress bars and loading a .torrent. The command files and the parser in
//! `cli/mod.rs` import this; it imports none of them.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uring_bt_proto::metainfo::{Metainfo, MetainfoError};

use crate::torrent::create::CreateError;

/// Marks an error as a usage or input error (exit code 2) when it travels inside an
/// `anyhow::Error` (for commands implemented elsewhere, e.g. `seed`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code for an error: 2 when any cause in its chain is an input error (a
/// [`UsageError`], a [`MetainfoError`], a [`CreateError`] about the input, a clap error), else 1.
pub fn exit_code_for(err: &anyhow::Error) -> u8 {
    let input = err.chain().any(|c| {
        c.is::<UsageError>()
            || c.is::<MetainfoError>()
            || c.is::<clap::Error>()
            || c.downcast_ref::<CreateError>()
                .is_some_and(CreateError::is_input_error)
    });
    if input {
        2
    } else {
        1
    }
}

/// A failed command: the error and its exit code.
pub struct Fail {
    pub code: u8,
    pub err: anyhow::Error,
}

impl Fail {
    pub fn input(err: impl Into<anyhow::Error>) -> Fail {
        Fail {
            code: 2,
            err: err.into(),
        }
    }
    pub fn work(err: impl Into<anyhow::Error>) -> Fail {
        Fail {
            code: 1,
            err: err.into(),
        }
    }
}

impl From<anyhow::Error> for Fail {
    fn from(err: anyhow::Error) -> Fail {
        Fail {
            code: exit_code_for(&err),
            err,
        }
    }
}

/// Stdout, where a closed pipe stops output quietly.
pub struct Out {
    inner: std::io::StdoutLock<'static>,
    closed: bool,
}

impl Out {
    pub fn new() -> Out {
        Out {
            inner: std::io::stdout().lock(),
            closed: false,
        }
    }

    pub fn line(&mut self, s: impl std::fmt::Display) -> Result<(), Fail> {
        if self.closed {
            return Ok(());
        }
        match writeln!(self.inner, "{s}") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(Fail::work(
                anyhow::Error::new(e).context("writing to stdout"),
            )),
        }
    }

    pub fn flush(&mut self) -> Result<(), Fail> {
        if self.closed {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Fail::work(
                anyhow::Error::new(e).context("writing to stdout"),
            )),
            _ => Ok(()),
        }
    }
}

/// Prints a line on stderr, ignoring errors (there is nowhere else to report them).
pub fn note(s: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{s}");
}

pub fn threads(n: Option<u32>) -> usize {
    match n {
        Some(n) => n as usize,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    }
}

/// A byte-count progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

pub fn load(path: &Path) -> Result<Metainfo, Fail> {
    crate::torrent::load::metainfo_from_file(path).map_err(|e| match e {
        MetainfoError::Io { .. } => Fail::input(e),
        e => Fail::input(anyhow::Error::new(e).context(path.display().to_string())),
    })
}

/// Checks each `--tracker` URL's scheme (http://, https:// or udp://): a usage error otherwise.
pub fn check_tracker_urls(urls: &[String]) -> Result<(), UsageError> {
    for url in urls {
        let ok = ["http://", "https://", "udp://"]
            .iter()
            .any(|p| url.len() > p.len() && url[..p.len()].eq_ignore_ascii_case(p));
        if !ok {
            return Err(UsageError(format!(
                "--tracker {url}: not an http://, https:// or udp:// URL"
            )));
        }
    }
    Ok(())
}

/// While alive (the data check at start, before the control plane takes the signals over):
/// SIGINT and SIGTERM end the process at once with one line on stderr and exit code 130 or
/// 143, instead of the default silent death by signal. The check only reads, and resume data
/// is replaced by a rename, so nothing is lost; the next start checks again. Dropping it
/// restores the default action.
pub struct StartupSignals {
    _private: (),
}

const STARTUP_STOP: &[u8] =
    b"\nstopped by a signal during the data check (it had written nothing; the next start checks again)\n";

extern "C" fn startup_signal(sig: libc::c_int) {
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the message is a static buffer.
    unsafe {
        libc::write(2, STARTUP_STOP.as_ptr().cast(), STARTUP_STOP.len());
        libc::_exit(128 + sig);
    }
}

impl StartupSignals {
    pub fn install() -> Self {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the handler only calls
            // async-signal-safe functions.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = startup_signal as *const () as usize;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        StartupSignals { _private: () }
    }
}

impl Drop for StartupSignals {
    fn drop(&mut self) {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restoring the default action; a zeroed sigaction with SIG_DFL is valid.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_classify_errors() {
        let e = anyhow::Error::new(UsageError("bad".into())).context("outer");
        assert_eq!(exit_code_for(&e), 2);
        let e = anyhow::Error::new(MetainfoError::NoData);
        assert_eq!(exit_code_for(&e), 2);
        let e = anyhow::anyhow!("disk on fire");
        assert_eq!(exit_code_for(&e), 1);
    }
}
