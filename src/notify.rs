//! What systemd hears from a run, through sd_notify: progress (`STATUS=`, shown by `systemctl
//! status`), more time while the run makes progress (`EXTEND_TIMEOUT_USEC=`) and the end of the
//! work (`READY=1`, which a `Type=notify` unit waits for). Outside systemd it does nothing.

use std::time::Duration;

/// How long a run may go without a sign of progress before its unit's start timeout may end
/// it: every status extends the timeout by this much, so a long clone that keeps copying is
/// never killed, and one that hangs is, after this window.
pub const PROGRESS_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The last status sent stays visible after the unit finished. Each one is also progress.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status), extend(PROGRESS_WINDOW)]);
}

/// Progress without a new status: a wait that pgha itself bounds (streaming, a server starting).
pub fn notify_progress() {
    let _ = sd_notify::notify(false, &[extend(PROGRESS_WINDOW)]);
}

/// The work is done: a `Type=notify` unit becomes active (and a run that exits 0 without it fails).
pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

fn extend(window: Duration) -> sd_notify::NotifyState<'static> {
    sd_notify::NotifyState::ExtendTimeoutUsec(u32::try_from(window.as_micros()).unwrap_or(u32::MAX))
}
