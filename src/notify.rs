//! Progress for `systemctl status`, through sd_notify. Outside systemd it does nothing.

/// The last status sent stays visible after the unit finished.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}
