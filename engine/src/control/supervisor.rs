//! An Erlang-style supervisor for the control plane: child specs with a restart policy, the
//! one-for-one strategy, and a restart intensity above which it gives up with a clear error.
//!
//! # Model
//! A child is whatever a [`ChildSpec::start`] closure starts: usually an OS thread (a shard, see
//! [`spawn_thread_child`]) or a task on another runtime. Each start gets an [`ExitNotice`], the
//! child's one way to say it ended ([`ExitNotice::exit`]); a notice dropped without a report
//! reports on its own (see [`ExitNotice`]). [`Supervisor::run`] waits for those reports on the
//! control plane's current-thread tokio runtime and restarts the child that ended, and only that
//! one (one-for-one), as its [`Restart`] policy says. The supervisor does not stop children: on
//! shutdown `run` returns and the children stop on the same shutdown signal, which their start
//! closures capture.
//!
//! # Restart intensity
//! Erlang's rule: more than [`Intensity::max_restarts`] restarts of any children within
//! [`Intensity::window`] and the supervisor gives up: `run` returns [`GaveUp`], whose `Display`
//! is the one line for the user, and the caller exits non-zero. A restart whose `start` returns
//! `Err` counts as a restart too, and is retried after a back-off of 100 ms, doubling up to
//! [`MAX_BACKOFF`], until it starts or the intensity gives up. Restarts older than the window are
//! forgotten (the history keeps at most `max_restarts + 1` instants).
//!
//! # The exit channel cannot lose a report or block
//! Reports travel on a bounded tokio mpsc of `2 x max_children` slots. Every [`ExitNotice`]
//! holds an [`OwnedPermit`] reserved when the child is started, so sending its one report needs
//! no free slot, never waits and never fails for capacity: it is a plain synchronous call that
//! works from any thread, inside a runtime or not. A child is restarted only after its report
//! was received, so each child holds at most one live notice; the other `max_children` slots
//! cover a notice left behind by a `start` that returned `Err` (its report is ignored as stale,
//! see the `token`s below). Should reserving ever fail anyway, that start fails and counts as a
//! restart. If the supervisor is gone, a report is dropped: nobody is left to act on it.
//!
//! # Panics
//! Every profile unwinds (the release profile switched from `panic = "abort"` for this; the cost
//! is in docs/benchmarks.md): a panicking child is caught ([`spawn_thread_child`], or the shard's
//! own `catch_unwind`) and reported as `Panicked`, and only that child is restarted.
//!
//! The supervisor is `!Send` (start closures need not be `Send`): run it on the control plane's
//! current-thread runtime with `block_on` or on a `LocalSet`, not with `tokio::spawn`.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::watch;
use tokio::time::Instant;

/// Children a supervisor made with [`Supervisor::new`] accepts.
pub const DEFAULT_MAX_CHILDREN: usize = 64;
/// First back-off after a failed restart; it doubles with each further failure in a row.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest back-off between two attempts to restart a child whose start fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// When a child that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Always restarted, whatever its exit.
    Permanent,
    /// Restarted only after an abnormal exit (`Failed` or `Panicked`).
    Transient,
    /// Never restarted.
    Temporary,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Normal,
    Failed(String),
    Panicked(String),
}

impl Exit {
    /// `Failed` or `Panicked`.
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, Exit::Normal)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Normal => f.write_str("ended normally"),
            Exit::Failed(e) => write!(f, "failed: {e}"),
            Exit::Panicked(m) => write!(f, "panicked: {m}"),
        }
    }
}

/// More than `max_restarts` restarts within `window`: give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    pub max_restarts: u32,
    pub window: Duration,
}

/// What to supervise: a name (for logs, the status line and [`GaveUp`]), a restart policy, and
/// how to start it. `start` is called at every (re)start with that run's [`ExitNotice`]; it
/// returns once the child is running (it does not wait for the child to end). `Err` means the
/// child did not start; a notice it dropped or kept in that case is ignored.
pub struct ChildSpec {
    pub name: String,
    pub restart: Restart,
    pub start: Box<dyn FnMut(ExitNotice) -> Result<(), String>>,
}

/// Identifies a child of one supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChildId(usize);

/// What goes on the exit channel: which child, which of its starts, how it ended.
struct ExitReport {
    child: usize,
    token: u64,
    exit: Exit,
}

/// A child's way to report its end: call [`ExitNotice::exit`] once when it ends. `Send`: give
/// it to the child's thread.
///
/// Dropped without `exit` having been called, it reports on its own: `Panicked` with the panic
/// message when the thread is panicking (the message is the one the panic hook that
/// [`Supervisor::new`] installs recorded for this thread; "panic message unavailable" when
/// another hook replaced it), else `Failed("ended without reporting")`.
pub struct ExitNotice {
    inner: Option<NoticeInner>,
}

struct NoticeInner {
    permit: OwnedPermit<ExitReport>,
    child: usize,
    token: u64,
}

impl ExitNotice {
    /// Reports how the child ended. Never blocks, never fails (see the module's docs).
    pub fn exit(mut self, exit: Exit) {
        self.send(exit);
    }

    /// The child this notice belongs to.
    pub fn child(&self) -> Option<ChildId> {
        self.inner.as_ref().map(|i| ChildId(i.child))
    }

    fn send(&mut self, exit: Exit) {
        if let Some(inner) = self.inner.take() {
            inner.permit.send(ExitReport {
                child: inner.child,
                token: inner.token,
                exit,
            });
        }
    }
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        if self.inner.is_none() {
            return;
        }
        let exit = if std::thread::panicking() {
            Exit::Panicked(
                LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| "panic message unavailable".to_string()),
            )
        } else {
            Exit::Failed("ended without reporting".to_string())
        };
        self.send(exit);
    }
}

impl fmt::Debug for ExitNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExitNotice")
            .field("child", &self.child())
            .finish()
    }
}

thread_local! {
    /// The message of the panic this thread is unwinding from, set by our panic hook.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static PANIC_HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that records each panic's message and location for
/// the panicking thread, so an [`ExitNotice`] dropped while unwinding can report it, then runs
/// the hook that was there before (the default one prints the panic as usual).
pub fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let mut msg = panic_message(info.payload());
            if let Some(loc) = info.location() {
                msg = format!("{msg} at {}:{}", loc.file(), loc.line());
            }
            // try_with: a panic while the thread-local is being destroyed has nowhere to go.
            let _ = LAST_PANIC.try_with(|p| *p.borrow_mut() = Some(msg));
            previous(info);
        }));
    });
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// Runs `f` on a new thread called `name` and reports its end on `notice`: `Normal` for
/// `Ok(())`, `Failed` for `Err`, `Panicked` with the message for a panic (caught with
/// `catch_unwind`; with `panic = "abort"` the process ends instead). If the thread cannot be
/// spawned, the error is returned and the notice, dropped, reports `Failed`; a `start` closure
/// returns that error as its own, so the supervisor counts a failed start and ignores the notice.
pub fn spawn_thread_child<F>(
    name: impl Into<String>,
    notice: ExitNotice,
    f: F,
) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let exit = match panic::catch_unwind(AssertUnwindSafe(f)) {
                Ok(Ok(())) => Exit::Normal,
                Ok(Err(e)) => Exit::Failed(e),
                Err(payload) => Exit::Panicked(panic_message(&*payload)),
            };
            notice.exit(exit);
        })
}

/// The supervisor gave up: a child needed more restarts than the intensity allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    /// The child whose restart went over the limit.
    pub child: String,
    /// Restarts within the window, the refused one included (`max_restarts + 1`).
    pub restarts: u32,
    pub window: Duration,
    /// How that child last ended (or why its last start failed).
    pub last_exit: Exit,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up restarting `{}`: it would be the {} restart within {:?}, more than the {} \
             allowed; its last exit: {}",
            self.child,
            ordinal(self.restarts),
            self.window,
            self.restarts.saturating_sub(1),
            self.last_exit
        )
    }
}

impl std::error::Error for GaveUp {}

fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Restart instants within the window, at most `max_restarts + 1` of them.
#[derive(Debug)]
struct RestartHistory {
    intensity: Intensity,
    at: VecDeque<Instant>,
}

impl RestartHistory {
    fn new(intensity: Intensity) -> Self {
        let cap = usize::try_from(intensity.max_restarts)
            .unwrap_or(usize::MAX)
            .saturating_add(1)
            .min(1024);
        RestartHistory {
            intensity,
            at: VecDeque::with_capacity(cap),
        }
    }

    /// Records a restart at `now`; `Err(count)` (restarts within the window, this one included)
    /// when that is more than allowed.
    fn record(&mut self, now: Instant) -> Result<(), u32> {
        while let Some(&first) = self.at.front() {
            if now.saturating_duration_since(first) >= self.intensity.window {
                self.at.pop_front();
            } else {
                break;
            }
        }
        self.at.push_back(now);
        let count = u32::try_from(self.at.len()).unwrap_or(u32::MAX);
        if count > self.intensity.max_restarts {
            return Err(count);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Its start failed: try again at this instant.
    RetryAt(Instant),
    /// Ended and not to be restarted.
    Stopped,
}

struct Child {
    name: String,
    restart: Restart,
    start: Box<dyn FnMut(ExitNotice) -> Result<(), String>>,
    /// The token of the notice of its current run: reports with another token are stale.
    token: u64,
    state: State,
    restarts: u32,
    /// Failed starts in a row (sets the back-off).
    failed_starts: u32,
    last_exit: Option<Exit>,
}

/// A child's state, for the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    pub name: String,
    /// False once it ended for good, or while it waits to be restarted.
    pub running: bool,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
}

/// Supervises children one-for-one (see the module's docs).
pub struct Supervisor {
    history: RestartHistory,
    children: Vec<Child>,
    max_children: usize,
    tx: mpsc::Sender<ExitReport>,
    rx: mpsc::Receiver<ExitReport>,
    next_token: u64,
}

impl Supervisor {
    /// A supervisor of at most [`DEFAULT_MAX_CHILDREN`] children. Installs the panic hook of
    /// [`install_panic_hook`].
    pub fn new(intensity: Intensity) -> Self {
        Self::with_max_children(intensity, DEFAULT_MAX_CHILDREN)
    }

    /// A supervisor of at most `max_children` children (the exit channel has
    /// `2 x max_children` slots).
    pub fn with_max_children(intensity: Intensity, max_children: usize) -> Self {
        install_panic_hook();
        let max_children = max_children.max(1);
        let (tx, rx) = mpsc::channel(max_children.saturating_mul(2));
        Supervisor {
            history: RestartHistory::new(intensity),
            children: Vec::new(),
            max_children,
            tx,
            rx,
            next_token: 0,
        }
    }

    /// Starts a child and supervises it from now on (its exits are handled by [`Supervisor::run`]).
    /// `Err` when its first start fails (the child is not added) or the supervisor is full.
    pub fn start_child(&mut self, spec: ChildSpec) -> Result<ChildId, String> {
        if self.children.len() >= self.max_children {
            return Err(format!(
                "cannot supervise `{}`: already {} children, the most this supervisor takes",
                spec.name, self.max_children
            ));
        }
        let id = self.children.len();
        self.children.push(Child {
            name: spec.name,
            restart: spec.restart,
            start: spec.start,
            token: 0,
            state: State::Stopped,
            restarts: 0,
            failed_starts: 0,
            last_exit: None,
        });
        if let Err(e) = self.start(id) {
            let child = self.children.pop();
            let name = child.map(|c| c.name).unwrap_or_default();
            return Err(format!("`{name}` did not start: {e}"));
        }
        Ok(ChildId(id))
    }

    /// Calls the child's `start` with a fresh notice; on success it is `Running`.
    fn start(&mut self, id: usize) -> Result<(), String> {
        let token = self.next_token;
        self.next_token += 1;
        let Some(child) = self.children.get_mut(id) else {
            return Err("no such child".to_string());
        };
        // A new token first: whatever the previous run's notice still says is stale from now.
        child.token = token;
        let permit = self
            .tx
            .clone()
            .try_reserve_owned()
            .map_err(|_| "the exit channel is full (starts that failed kept their notices)")?;
        let notice = ExitNotice {
            inner: Some(NoticeInner {
                permit,
                child: id,
                token,
            }),
        };
        (child.start)(notice)?;
        child.state = State::Running;
        Ok(())
    }

    /// Supervises until `shutdown` is true (or its sender is gone): `Ok`. `Err` when the restart
    /// intensity is exceeded; the children are left as they are (the caller shuts down).
    pub async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), GaveUp> {
        loop {
            if *shutdown.borrow_and_update() {
                return Ok(());
            }
            let retry = self
                .children
                .iter()
                .filter_map(|c| match c.state {
                    State::RetryAt(at) => Some(at),
                    _ => None,
                })
                .min();
            tokio::select! {
                // Shutdown first, so a child that keeps failing cannot delay it (it is bounded by
                // the intensity anyway); then reports, then due retries.
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                Some(report) = self.rx.recv() => self.on_exit(report)?,
                () = sleep_until_some(retry) => self.retry_due()?,
            }
        }
    }

    fn on_exit(&mut self, report: ExitReport) -> Result<(), GaveUp> {
        let Some(child) = self.children.get_mut(report.child) else {
            return Ok(());
        };
        if child.token != report.token || child.state != State::Running {
            tracing::debug!(child = %child.name, exit = %report.exit, "stale exit report ignored");
            return Ok(());
        }
        let restart = match child.restart {
            Restart::Permanent => true,
            Restart::Transient => report.exit.is_abnormal(),
            Restart::Temporary => false,
        };
        if report.exit.is_abnormal() {
            tracing::warn!(child = %child.name, exit = %report.exit, restart, "child ended");
        } else {
            tracing::info!(child = %child.name, restart, "child ended normally");
        }
        child.last_exit = Some(report.exit);
        child.state = State::Stopped;
        if restart {
            self.restart(report.child)?;
        }
        Ok(())
    }

    /// Restarts every child whose back-off is over.
    fn retry_due(&mut self) -> Result<(), GaveUp> {
        let now = Instant::now();
        for id in 0..self.children.len() {
            if matches!(self.children[id].state, State::RetryAt(at) if at <= now) {
                self.restart(id)?;
            }
        }
        Ok(())
    }

    /// One restart of child `id`: counted against the intensity, then attempted; a failed
    /// attempt is retried after the back-off.
    fn restart(&mut self, id: usize) -> Result<(), GaveUp> {
        let now = Instant::now();
        if let Err(count) = self.history.record(now) {
            let child = &self.children[id];
            let gave_up = GaveUp {
                child: child.name.clone(),
                restarts: count,
                window: self.history.intensity.window,
                last_exit: child.last_exit.clone().unwrap_or(Exit::Normal),
            };
            tracing::error!("{gave_up}");
            return Err(gave_up);
        }
        self.children[id].restarts += 1;
        match self.start(id) {
            Ok(()) => {
                let child = &mut self.children[id];
                child.failed_starts = 0;
                tracing::info!(child = %child.name, restarts = child.restarts, "child restarted");
            }
            Err(e) => {
                let child = &mut self.children[id];
                child.failed_starts = child.failed_starts.saturating_add(1);
                let wait = backoff(child.failed_starts);
                tracing::warn!(child = %child.name, error = %e, retry_in = ?wait, "restart failed");
                child.last_exit = Some(Exit::Failed(format!("restart failed: {e}")));
                // The back-off counts from the failure.
                child.state = State::RetryAt(Instant::now() + wait);
            }
        }
        Ok(())
    }

    /// Restarts per child so far, in the order they were added (for the status line).
    pub fn restarts(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .map(|c| (c.name.clone(), c.restarts))
            .collect()
    }

    /// Every child's state, in the order they were added.
    pub fn children(&self) -> Vec<ChildStatus> {
        self.children
            .iter()
            .map(|c| ChildStatus {
                name: c.name.clone(),
                running: c.state == State::Running,
                restarts: c.restarts,
                last_exit: c.last_exit.clone(),
            })
            .collect()
    }
}

/// The wait before attempt `failed + 1` after `failed` failed starts in a row: 100 ms, 200 ms,
/// 400 ms, ... up to [`MAX_BACKOFF`].
fn backoff(failed: u32) -> Duration {
    let shift = failed.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
    use tokio::time::timeout;

    /// What a scripted child does at one start.
    #[derive(Debug, Clone)]
    enum Step {
        /// Its thread panics.
        Panic(&'static str),
        /// Its thread returns `Err`.
        Fail(&'static str),
        /// Its thread returns `Ok`.
        Normal,
        /// `start` returns `Err`.
        StartErr(&'static str),
        /// Runs until the test ends it through the notice it keeps.
        Hold,
    }

    /// A child that follows `steps` (then holds), sends its start number and instant on the
    /// returned channel, and keeps held notices in `held`.
    struct Scripted {
        starts: UnboundedReceiver<(u32, std::time::Instant)>,
        held: Arc<Mutex<Vec<ExitNotice>>>,
    }

    impl Scripted {
        /// Waits (5 s at most) for start number `n`; returns its instant.
        async fn start_number(&mut self, n: u32) -> std::time::Instant {
            timeout(Duration::from_secs(5), async {
                loop {
                    let (i, at) = self.starts.recv().await.expect("child spec dropped");
                    if i >= n {
                        assert_eq!(i, n, "missed a start");
                        return at;
                    }
                }
            })
            .await
            .expect("the child was not started in time")
        }

        /// Ends the run held the longest with `exit`.
        fn end_held(&self, exit: Exit) {
            let notice = self.held.lock().unwrap().remove(0);
            notice.exit(exit);
        }
    }

    fn scripted(name: &str, restart: Restart, steps: Vec<Step>) -> (ChildSpec, Scripted) {
        let (tx, rx) = unbounded_channel();
        let held = Arc::new(Mutex::new(Vec::new()));
        let held2 = held.clone();
        let mut steps: VecDeque<Step> = steps.into();
        let mut n = 0;
        let thread_name = name.to_string();
        let spec = ChildSpec {
            name: name.to_string(),
            restart,
            start: Box::new(move |notice| {
                n += 1;
                let _ = tx.send((n, std::time::Instant::now()));
                type Body = Box<dyn FnOnce() -> Result<(), String> + Send>;
                let body: Body = match steps.pop_front().unwrap_or(Step::Hold) {
                    Step::Panic(m) => Box::new(move || panic!("{m}")),
                    Step::Fail(m) => Box::new(move || Err(m.to_string())),
                    Step::Normal => Box::new(|| Ok(())),
                    Step::StartErr(e) => return Err(e.to_string()),
                    Step::Hold => {
                        held2.lock().unwrap().push(notice);
                        return Ok(());
                    }
                };
                spawn_thread_child(thread_name.clone(), notice, body)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        };
        (spec, Scripted { starts: rx, held })
    }

    const LOOSE: Intensity = Intensity {
        max_restarts: 100,
        window: Duration::from_secs(60),
    };

    /// Runs the supervisor until `driver` returns, then shuts it down; returns run's result.
    async fn supervise(
        sup: &mut Supervisor,
        driver: impl std::future::Future<Output = ()>,
    ) -> Result<(), GaveUp> {
        let (stop, shutdown) = watch::channel(false);
        let drive = async {
            driver.await;
            stop.send(true).unwrap();
        };
        let (res, ()) = tokio::join!(sup.run(shutdown), drive);
        res
    }

    /// Lets the supervisor handle whatever the children reported (they are threads).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    #[test]
    fn exit_notice_is_send() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<ExitNotice>();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn permanent_restarted_after_normal_exit_and_after_panic() {
        let mut sup = Supervisor::new(LOOSE);
        let (spec, mut child) = scripted(
            "perm",
            Restart::Permanent,
            vec![Step::Normal, Step::Panic("boom")],
        );
        let id = sup.start_child(spec).unwrap();
        assert_eq!(id, ChildId(0));
        let res = supervise(&mut sup, async {
            child.start_number(3).await;
        })
        .await;
        assert_eq!(res, Ok(()));
        assert_eq!(sup.restarts(), vec![("perm".to_string(), 2)]);
        let status = &sup.children()[0];
        assert!(status.running);
        assert!(
            matches!(&status.last_exit, Some(Exit::Panicked(m)) if m == "boom"),
            "{status:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn transient_restarted_after_failure_not_after_normal_exit() {
        let mut sup = Supervisor::new(LOOSE);
        let (spec, mut child) = scripted(
            "trans",
            Restart::Transient,
            vec![Step::Fail("disk gone"), Step::Normal],
        );
        sup.start_child(spec).unwrap();
        let res = supervise(&mut sup, async {
            child.start_number(2).await;
            settle().await;
        })
        .await;
        assert_eq!(res, Ok(()));
        assert!(child.starts.try_recv().is_err(), "restarted after Normal");
        assert_eq!(sup.restarts(), vec![("trans".to_string(), 1)]);
        let status = &sup.children()[0];
        assert!(!status.running);
        assert_eq!(status.last_exit, Some(Exit::Normal));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn transient_restarted_after_panic() {
        let mut sup = Supervisor::new(LOOSE);
        let (spec, mut child) = scripted("trans", Restart::Transient, vec![Step::Panic("oops")]);
        sup.start_child(spec).unwrap();
        let res = supervise(&mut sup, async {
            child.start_number(2).await;
        })
        .await;
        assert_eq!(res, Ok(()));
        assert_eq!(sup.restarts(), vec![("trans".to_string(), 1)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn temporary_never_restarted() {
        let mut sup = Supervisor::new(LOOSE);
        let (spec_a, mut a) = scripted("temp-fail", Restart::Temporary, vec![Step::Fail("x")]);
        let (spec_b, mut b) = scripted("temp-panic", Restart::Temporary, vec![Step::Panic("y")]);
        let (spec_c, mut c) = scripted("temp-normal", Restart::Temporary, vec![Step::Normal]);
        sup.start_child(spec_a).unwrap();
        sup.start_child(spec_b).unwrap();
        sup.start_child(spec_c).unwrap();
        let res = supervise(&mut sup, async {
            for child in [&mut a, &mut b, &mut c] {
                child.start_number(1).await;
            }
            settle().await;
        })
        .await;
        assert_eq!(res, Ok(()));
        for child in [&mut a, &mut b, &mut c] {
            assert!(
                child.starts.try_recv().is_err(),
                "a temporary child restarted"
            );
        }
        let status = sup.children();
        assert!(status.iter().all(|s| !s.running && s.restarts == 0));
        assert_eq!(status[0].last_exit, Some(Exit::Failed("x".to_string())));
        assert_eq!(status[1].last_exit, Some(Exit::Panicked("y".to_string())));
        assert_eq!(status[2].last_exit, Some(Exit::Normal));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_for_one_leaves_the_others_alone() {
        let mut sup = Supervisor::new(LOOSE);
        let (spec_a, mut a) = scripted("a", Restart::Permanent, vec![Step::Panic("a down")]);
        let (spec_b, mut b) = scripted("b", Restart::Permanent, vec![]);
        sup.start_child(spec_a).unwrap();
        sup.start_child(spec_b).unwrap();
        let res = supervise(&mut sup, async {
            a.start_number(2).await;
            b.start_number(1).await;
            settle().await;
        })
        .await;
        assert_eq!(res, Ok(()));
        assert!(b.starts.try_recv().is_err(), "b was restarted with a");
        assert_eq!(
            sup.restarts(),
            vec![("a".to_string(), 1), ("b".to_string(), 0)]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn intensity_exceeded_gives_up_naming_the_child() {
        let intensity = Intensity {
            max_restarts: 3,
            window: Duration::from_secs(60),
        };
        let mut sup = Supervisor::new(intensity);
        let (spec_ok, _ok) = scripted("steady", Restart::Permanent, vec![]);
        let (spec, _child) = scripted("crashy", Restart::Permanent, vec![Step::Panic("bad"); 10]);
        sup.start_child(spec_ok).unwrap();
        sup.start_child(spec).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let res = timeout(Duration::from_secs(5), sup.run(shutdown))
            .await
            .expect("did not give up");
        let err = res.unwrap_err();
        assert_eq!(
            err,
            GaveUp {
                child: "crashy".to_string(),
                restarts: 4,
                window: Duration::from_secs(60),
                last_exit: Exit::Panicked("bad".to_string()),
            }
        );
        let line = err.to_string();
        assert!(line.contains("`crashy`"), "{line}");
        assert!(line.contains("4th restart within 60s"), "{line}");
        assert!(line.contains("panicked: bad"), "{line}");
        assert!(!line.contains('\n'));
        assert_eq!(
            sup.restarts(),
            vec![("steady".to_string(), 0), ("crashy".to_string(), 3)]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn restarts_outside_the_window_do_not_count() {
        let intensity = Intensity {
            max_restarts: 1,
            window: Duration::from_millis(300),
        };
        let mut sup = Supervisor::new(intensity);
        let (spec, mut child) = scripted("slow-crasher", Restart::Permanent, vec![]);
        sup.start_child(spec).unwrap();
        let res = supervise(&mut sup, async {
            child.start_number(1).await;
            child.end_held(Exit::Failed("one".into()));
            child.start_number(2).await;
            // The first restart leaves the window before the second one.
            tokio::time::sleep(Duration::from_millis(600)).await;
            child.end_held(Exit::Failed("two".into()));
            child.start_number(3).await;
        })
        .await;
        assert_eq!(res, Ok(()));
        assert_eq!(sup.restarts(), vec![("slow-crasher".to_string(), 2)]);

        // The same two failures within the window: the second restart is one too many.
        let mut sup = Supervisor::new(intensity);
        let (spec, mut child) = scripted("fast-crasher", Restart::Permanent, vec![]);
        sup.start_child(spec).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let drive = async {
            child.start_number(1).await;
            child.end_held(Exit::Failed("one".into()));
            child.start_number(2).await;
            child.end_held(Exit::Failed("two".into()));
        };
        let (res, ()) = tokio::join!(sup.run(shutdown), drive);
        let err = res.unwrap_err();
        assert_eq!(err.child, "fast-crasher");
        assert_eq!(err.last_exit, Exit::Failed("two".to_string()));
    }

    #[test]
    fn restart_history_forgets_old_restarts() {
        let mut h = RestartHistory::new(Intensity {
            max_restarts: 2,
            window: Duration::from_secs(10),
        });
        let t = Instant::now();
        assert_eq!(h.record(t), Ok(()));
        assert_eq!(h.record(t + Duration::from_secs(5)), Ok(()));
        assert_eq!(h.record(t + Duration::from_secs(9)), Err(3));
        // t and t+5 leave the window at t+10 and t+15.
        let mut h = RestartHistory::new(Intensity {
            max_restarts: 2,
            window: Duration::from_secs(10),
        });
        assert_eq!(h.record(t), Ok(()));
        assert_eq!(h.record(t + Duration::from_secs(5)), Ok(()));
        assert_eq!(h.record(t + Duration::from_secs(10)), Ok(()));
        assert_eq!(h.record(t + Duration::from_secs(16)), Ok(()));
        assert_eq!(h.record(t + Duration::from_secs(17)), Err(3));
        assert!(h.at.len() <= 3);
        // No restart allowed at all.
        let mut h = RestartHistory::new(Intensity {
            max_restarts: 0,
            window: Duration::from_secs(1),
        });
        assert_eq!(h.record(t), Err(1));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn failed_restarts_count_and_back_off() {
        let mut sup = Supervisor::new(LOOSE);
        let (spec, mut child) = scripted(
            "flaky",
            Restart::Permanent,
            vec![Step::Fail("x"), Step::StartErr("no"), Step::StartErr("no")],
        );
        sup.start_child(spec).unwrap();
        let mut at = Vec::new();
        let res = supervise(&mut sup, async {
            for n in 1..=4 {
                at.push(child.start_number(n).await);
            }
        })
        .await;
        assert_eq!(res, Ok(()));
        // Restart 1 fails at once; 2 comes 100 ms later and fails; 3, 200 ms after that, starts.
        assert!(at[2] - at[1] >= FIRST_BACKOFF, "{:?}", at[2] - at[1]);
        assert!(at[3] - at[2] >= 2 * FIRST_BACKOFF, "{:?}", at[3] - at[2]);
        assert_eq!(sup.restarts(), vec![("flaky".to_string(), 3)]);
        assert!(sup.children()[0].running);
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_start_that_keeps_failing_gives_up() {
        let intensity = Intensity {
            max_restarts: 2,
            window: Duration::from_secs(60),
        };
        let mut sup = Supervisor::new(intensity);
        let mut steps = vec![Step::Fail("crashed")];
        steps.extend(std::iter::repeat_n(Step::StartErr("port in use"), 10));
        let (spec, _child) = scripted("listener", Restart::Permanent, steps);
        sup.start_child(spec).unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let err = timeout(Duration::from_secs(5), sup.run(shutdown))
            .await
            .expect("did not give up")
            .unwrap_err();
        assert_eq!(err.child, "listener");
        assert_eq!(err.restarts, 3);
        assert_eq!(
            err.last_exit,
            Exit::Failed("restart failed: port in use".to_string())
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_returns_ok() {
        let mut sup = Supervisor::new(LOOSE);
        let (spec, mut child) = scripted("idle", Restart::Permanent, vec![]);
        sup.start_child(spec).unwrap();
        let (stop, shutdown) = watch::channel(false);
        let drive = async {
            child.start_number(1).await;
            stop.send(true).unwrap();
        };
        let (res, ()) = timeout(Duration::from_secs(5), async {
            tokio::join!(sup.run(shutdown), drive)
        })
        .await
        .expect("run did not return on shutdown");
        assert_eq!(res, Ok(()));
        // Already shut down: returns at once. Sender gone: too.
        let (stop, shutdown) = watch::channel(true);
        assert_eq!(sup.run(shutdown).await, Ok(()));
        drop(stop);
        let (stop, shutdown) = watch::channel(false);
        drop(stop);
        assert_eq!(sup.run(shutdown).await, Ok(()));
        assert_eq!(sup.restarts(), vec![("idle".to_string(), 0)]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropped_notice_reports_panic_or_failure() {
        let mut sup = Supervisor::new(LOOSE);
        let (stash_tx, stash_rx) = std::sync::mpsc::channel::<ExitNotice>();
        let mut starts = 0;
        sup.start_child(ChildSpec {
            name: "raw".to_string(),
            restart: Restart::Transient,
            start: Box::new(move |notice| {
                starts += 1;
                match starts {
                    // A thread that panics holding its notice, without catch_unwind.
                    1 => {
                        std::thread::spawn(move || {
                            let _notice = notice;
                            panic!("raw thread down");
                        });
                    }
                    // The notice goes to the test, which drops it without a report.
                    _ => stash_tx.send(notice).unwrap(),
                }
                Ok(())
            }),
        })
        .unwrap();
        let res = supervise(&mut sup, async {
            let notice = timeout(Duration::from_secs(5), async {
                loop {
                    if let Ok(n) = stash_rx.try_recv() {
                        return n;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("not restarted after the panic");
            drop(notice);
            settle().await;
        })
        .await;
        assert_eq!(res, Ok(()));
        assert_eq!(sup.restarts(), vec![("raw".to_string(), 2)]);
        assert_eq!(
            sup.children()[0].last_exit,
            Some(Exit::Failed("ended without reporting".to_string()))
        );
    }

    #[test]
    fn dropped_notice_while_panicking_carries_the_message() {
        install_panic_hook();
        let (tx, mut rx) = mpsc::channel(1);
        let permit = tx.try_reserve_owned().unwrap();
        let notice = ExitNotice {
            inner: Some(NoticeInner {
                permit,
                child: 0,
                token: 7,
            }),
        };
        let joined = std::thread::spawn(move || {
            let _notice = notice;
            panic!("the message {}", 42);
        })
        .join();
        assert!(joined.is_err());
        let report = rx.try_recv().unwrap();
        assert_eq!(report.token, 7);
        match report.exit {
            Exit::Panicked(m) => {
                assert!(m.starts_with("the message 42 at "), "{m}");
                assert!(m.contains("supervisor.rs"), "{m}");
            }
            other => panic!("not a panic report: {other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn start_child_refusals() {
        let mut sup = Supervisor::with_max_children(LOOSE, 1);
        let (bad, _b) = scripted("bad", Restart::Permanent, vec![Step::StartErr("no config")]);
        let err = sup.start_child(bad).unwrap_err();
        assert!(err.contains("`bad` did not start: no config"), "{err}");
        assert!(sup.restarts().is_empty());
        let (one, _one) = scripted("one", Restart::Permanent, vec![]);
        assert_eq!(sup.start_child(one), Ok(ChildId(0)));
        let (two, _two) = scripted("two", Restart::Permanent, vec![]);
        let err = sup.start_child(two).unwrap_err();
        assert!(
            err.contains("`two`") && err.contains("already 1 children"),
            "{err}"
        );
        assert_eq!(sup.restarts(), vec![("one".to_string(), 0)]);
    }

    #[test]
    fn panic_message_and_thread_child() {
        assert_eq!(panic_message(&"static"), "static");
        assert_eq!(panic_message(&String::from("owned")), "owned");
        assert_eq!(panic_message(&42u32), "panic with a non-string payload");
        let (tx, mut rx) = mpsc::channel(3);
        let notice = || ExitNotice {
            inner: Some(NoticeInner {
                permit: tx.clone().try_reserve_owned().unwrap(),
                child: 0,
                token: 0,
            }),
        };
        let handles = [
            spawn_thread_child("t-ok", notice(), || Ok(())).unwrap(),
            spawn_thread_child("t-err", notice(), || Err("nope".into())).unwrap(),
            spawn_thread_child("t-panic", notice(), || panic!("{}", "formatted")).unwrap(),
        ];
        for h in handles {
            assert!(h.join().is_ok(), "the panic escaped catch_unwind");
        }
        let mut exits: Vec<String> = (0..3)
            .map(|_| rx.try_recv().unwrap().exit.to_string())
            .collect();
        exits.sort();
        assert_eq!(
            exits,
            vec!["ended normally", "failed: nope", "panicked: formatted"]
        );
    }
}
