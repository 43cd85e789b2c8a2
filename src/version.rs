//! PostgreSQL major versions and the differences between them that pgha must respect.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL major version: 9.5 and 9.6 carry a minor part, 10 and later do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgVersion {
    pub major: u32,
    pub minor: u32,
}

#[cfg(test)]
pub const OLDEST_SUPPORTED: PgVersion = PgVersion { major: 9, minor: 5 };
#[cfg(test)]
pub const NEWEST_SUPPORTED: PgVersion = PgVersion { major: 18, minor: 0 };

/// Every major version pgha supports, oldest first.
pub fn supported_versions() -> Vec<PgVersion> {
    let mut versions = vec![PgVersion::new(9, 5), PgVersion::new(9, 6)];
    versions.extend((10..=18).map(|major| PgVersion::new(major, 0)));
    versions
}

impl PgVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        PgVersion { major, minor }
    }

    const fn at_least(self, major: u32) -> bool {
        self.major >= major
    }

    /// 9.6 made `replica` the name; 9.5 only knows `hot_standby`.
    pub fn wal_level(self) -> &'static str {
        if self < PgVersion::new(9, 6) {
            "hot_standby"
        } else {
            "replica"
        }
    }

    /// SCRAM arrived in 10; 9.x can only store md5 hashes.
    pub fn has_scram(self) -> bool {
        self.at_least(10)
    }

    /// 12 removed recovery.conf: the server refuses to start when one is present.
    pub fn uses_recovery_conf(self) -> bool {
        !self.at_least(12)
    }

    /// 13 replaced `wal_keep_segments` with `wal_keep_size` and added `max_slot_wal_keep_size`.
    pub fn has_wal_keep_size(self) -> bool {
        self.at_least(13)
    }

    pub fn has_max_slot_wal_keep_size(self) -> bool {
        self.at_least(13)
    }

    /// 10 renamed pg_basebackup's `--xlog-method` to `--wal-method`.
    pub fn wal_method_flag(self) -> &'static str {
        if self.at_least(10) {
            "--wal-method"
        } else {
            "--xlog-method"
        }
    }

    /// `pg_promote()` exists from 12; older servers are promoted with pg_ctlcluster.
    pub fn has_pg_promote(self) -> bool {
        self.at_least(12)
    }

    /// 10 renamed the xlog functions and columns to wal/lsn.
    pub fn has_wal_names(self) -> bool {
        self.at_least(10)
    }

    /// `pg_basebackup --create-slot` arrived in 11.
    pub fn basebackup_can_create_slot(self) -> bool {
        self.at_least(11)
    }

    pub fn bin_dir(self) -> String {
        format!("/usr/lib/postgresql/{self}/bin")
    }

    /// From `server_version_num`, e.g. 90524 or 150018.
    pub fn from_version_num(num: u32) -> Self {
        if num >= 100_000 {
            PgVersion::new(num / 10_000, 0)
        } else {
            PgVersion::new(num / 10_000, (num / 100) % 100)
        }
    }

    pub fn is_supported(self) -> bool {
        supported_versions().contains(&self)
    }
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.major < 10 {
            write!(f, "{}.{}", self.major, self.minor)
        } else {
            write!(f, "{}", self.major)
        }
    }
}

impl FromStr for PgVersion {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || format!("{text:?} is not a PostgreSQL major version (expected 9.5, 9.6 or 10 to 18)");
        let version = match text.split_once('.') {
            Some((major, minor)) => {
                let major: u32 = major.parse().map_err(|_| expected())?;
                let minor: u32 = minor.parse().map_err(|_| expected())?;
                // "15.4" names a minor release of 15; only 9.x majors have two parts.
                if major >= 10 {
                    PgVersion::new(major, 0)
                } else {
                    PgVersion::new(major, minor)
                }
            }
            None => PgVersion::new(text.parse().map_err(|_| expected())?, 0),
        };
        if version.is_supported() {
            Ok(version)
        } else {
            Err(expected())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_numbering_schemes() {
        assert_eq!("9.5".parse::<PgVersion>().unwrap(), PgVersion::new(9, 5));
        assert_eq!("15".parse::<PgVersion>().unwrap(), PgVersion::new(15, 0));
        assert_eq!("15.4".parse::<PgVersion>().unwrap(), PgVersion::new(15, 0));
        assert_eq!(PgVersion::new(9, 6).to_string(), "9.6");
        assert_eq!(PgVersion::new(17, 0).to_string(), "17");
        assert!("9.4".parse::<PgVersion>().is_err());
        assert!("19".parse::<PgVersion>().is_err());
        assert!("nine".parse::<PgVersion>().is_err());
    }

    #[test]
    fn version_num_maps_to_major() {
        assert_eq!(PgVersion::from_version_num(90524), PgVersion::new(9, 5));
        assert_eq!(PgVersion::from_version_num(150018), PgVersion::new(15, 0));
    }

    #[test]
    fn ordering_follows_release_order() {
        let versions = supported_versions();
        assert_eq!(versions.first(), Some(&OLDEST_SUPPORTED));
        assert_eq!(versions.last(), Some(&NEWEST_SUPPORTED));
        assert!(versions.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(versions.len(), 11);
    }
}
