//! How far behind a standby is, the limits that judge it, and the monitoring-plugin states.

use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::replication::{Lsn, Progress, Receiver, WalSender};
use crate::size::{format_bytes, parse_bytes, ANY_UNIT};

/// How far a standby is behind, as `pgha status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Lag {
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

/// Lag of a walsender's standby: bytes from its replay position to the primary's WAL, and time
/// from replay_lag, which is 0 once everything is replayed (an idle primary keeps an old value).
pub fn sender_lag(sender: &WalSender, current: Option<Lsn>) -> Lag {
    let bytes = match (current, sender.replay) {
        (Some(current), Some(replay)) => Some(current.bytes_after(replay)),
        _ => None,
    };
    let seconds = if bytes == Some(0) { Some(0.0) } else { sender.replay_lag_seconds };
    Lag { bytes, seconds }
}

/// Lag of this standby: bytes from replay to the newest WAL it knows the primary has, and time
/// since the last replayed commit, except that caught-up means 0 whatever that timestamp says.
pub fn standby_lag(progress: &Progress, receiver: Option<&Receiver>) -> Lag {
    let newest = [progress.receive, receiver.and_then(|r| r.latest_end)].into_iter().flatten().max();
    match (newest, progress.replay) {
        (Some(newest), Some(replay)) if replay >= newest => Lag { bytes: Some(0), seconds: Some(0.0) },
        (Some(newest), Some(replay)) => {
            Lag { bytes: Some(newest.bytes_after(replay)), seconds: progress.seconds_since_replayed_commit }
        }
        _ => Lag { bytes: None, seconds: progress.seconds_since_replayed_commit },
    }
}

/// A lag threshold: bytes ("16MB", "1GB", "500kB", "8192") or time ("30s", "5min").
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LagLimit {
    Bytes(u64),
    Time(Duration),
}

impl FromStr for LagLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected =
            || format!("{text:?} is not a lag limit: expected bytes such as \"16MB\" or a duration such as \"30s\"");
        if let Some(bytes) = parse_bytes(text, &ANY_UNIT) {
            return Ok(LagLimit::Bytes(bytes));
        }
        let trimmed = text.trim();
        if trimmed.starts_with(|c: char| c.is_ascii_digit()) {
            if let Ok(duration) = humantime::parse_duration(trimmed) {
                return Ok(LagLimit::Time(duration));
            }
        }
        Err(expected())
    }
}

impl fmt::Display for LagLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LagLimit::Bytes(bytes) => f.write_str(&format_bytes(*bytes)),
            LagLimit::Time(duration) => write!(f, "{}", humantime::format_duration(*duration)),
        }
    }
}

impl LagLimit {
    pub fn exceeded_by(self, lag: Lag) -> bool {
        match self {
            LagLimit::Bytes(limit) => lag.bytes.is_some_and(|bytes| bytes > limit),
            LagLimit::Time(limit) => lag.seconds.is_some_and(|seconds| seconds > limit.as_secs_f64()),
        }
    }
}

/// Monitoring-plugin states, ordered so the worst wins; the discriminant is the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Health {
    pub fn exit_code(self) -> i32 {
        self as i32
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Warning => "WARNING",
            Health::Critical => "CRITICAL",
            Health::Unknown => "UNKNOWN",
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn idle_standby_has_no_lag_whatever_the_replay_timestamp() {
        let progress =
            Progress { receive: Some(Lsn(100)), replay: Some(Lsn(100)), seconds_since_replayed_commit: Some(86400.0) };
        assert_eq!(standby_lag(&progress, None), Lag { bytes: Some(0), seconds: Some(0.0) });
        let behind = Progress { replay: Some(Lsn(40)), ..progress };
        assert_eq!(standby_lag(&behind, None), Lag { bytes: Some(60), seconds: Some(86400.0) });
    }

    #[test]
    fn caught_up_sender_has_no_lag_even_with_a_stale_replay_lag() {
        let sender = WalSender {
            client_addr: None,
            application_name: "x".into(),
            state: "streaming".into(),
            sync_state: "async".into(),
            sent: Some(Lsn(10)),
            write: Some(Lsn(10)),
            flush: Some(Lsn(10)),
            replay: Some(Lsn(10)),
            replay_lag_seconds: Some(42.0),
        };
        assert_eq!(sender_lag(&sender, Some(Lsn(10))), Lag { bytes: Some(0), seconds: Some(0.0) });
        assert_eq!(sender_lag(&sender, Some(Lsn(30))).bytes, Some(20));
    }

    #[test]
    fn lag_limits_take_bytes_or_time() {
        assert_eq!("16MB".parse::<LagLimit>().unwrap(), LagLimit::Bytes(16 << 20));
        assert_eq!("8192".parse::<LagLimit>().unwrap(), LagLimit::Bytes(8192));
        assert_eq!("30s".parse::<LagLimit>().unwrap(), LagLimit::Time(Duration::from_secs(30)));
        assert_eq!("5min".parse::<LagLimit>().unwrap(), LagLimit::Time(Duration::from_secs(300)));
        assert!("lots".parse::<LagLimit>().is_err());
        let lag = Lag { bytes: Some(2 << 20), seconds: Some(3.0) };
        assert!(LagLimit::Bytes(1 << 20).exceeded_by(lag));
        assert!(!LagLimit::Time(Duration::from_secs(5)).exceeded_by(lag));
    }
}
