//! Who is the primary now. pgha.conf lists the members of one replication set (`[primary]
//! address`, the first primary, and `[standby] addresses`); which of them is primary at this
//! moment is asked of the members themselves, so a promote, a switchover or a rejoin needs no edit
//! of any host's pgha.conf.
//!
//! A member counts as the primary when it is writable and holds the set's system identifier.
//! Timeline numbers repeat across forks (two independent promotes both reach timeline 2), so
//! "newer" is decided on timeline histories: a writable member is stale when its whole history is
//! the first part of another writable member's history. Two writable members neither of which
//! descends from the other are a split brain, and pgha refuses to pick one.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::debian::Cluster;
use crate::replication::Lsn;
use crate::tools::psql::{classify_failure, query, query_bool, ConnectionFailure, Target};
use crate::upstream::{replication_target, sql_target};
use crate::version::PgVersion;

/// Whether a server accepts writes: every member is asked this, 9.5 to 18.
pub const WRITABLE_SQL: &str = "SELECT NOT pg_is_in_recovery()";

/// How long one member gets to answer: a member that is down must not hold up a decision the
/// others can make.
pub const MEMBER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a timeline began: the parent timeline and the WAL position where it was left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub parent: u32,
    pub switch_point: Lsn,
}

/// A timeline and every switch that led to it, oldest first (PostgreSQL's NNNNNNNN.history file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineHistory {
    pub timeline: u32,
    pub switches: Vec<TimelineSwitch>,
}

impl TimelineHistory {
    /// Timeline 1 has no history file.
    pub fn first() -> TimelineHistory {
        TimelineHistory { timeline: 1, switches: Vec::new() }
    }

    /// Whether `self` continues `older`: older's timeline is one of self's ancestors, reached
    /// through the very same switches. A diverged old primary still counts as older: what it wrote
    /// after the switch point is what pg_rewind takes back.
    pub fn descends_from(&self, older: &TimelineHistory) -> bool {
        if self.timeline == older.timeline {
            return false;
        }
        let position = older.switches.len();
        self.switches.get(position).is_some_and(|switch| switch.parent == older.timeline)
            && self.switches[..position] == older.switches[..]
    }
}

/// Parses a timeline history file: "parentTLI<TAB>switchpoint<TAB>reason" per line, comments
/// and blank lines ignored.
pub fn parse_history(timeline: u32, text: &str) -> Result<TimelineHistory> {
    let mut switches = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(parent), Some(point)) = (fields.next(), fields.next()) else {
            bail!("timeline {timeline} history: unexpected line {line:?}");
        };
        let parent: u32 = parent.parse().with_context(|| format!("timeline {timeline} history: line {line:?}"))?;
        let switch_point: Lsn =
            point.parse().map_err(|error: String| anyhow::anyhow!("timeline {timeline} history: {error}"))?;
        switches.push(TimelineSwitch { parent, switch_point });
    }
    if switches.last().is_some_and(|switch| switch.parent >= timeline) {
        bail!("timeline {timeline} history ends with a switch from a later timeline: {switches:?}");
    }
    Ok(TimelineHistory { timeline, switches })
}

/// What one member said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    pub address: IpAddr,
    pub writable: bool,
    pub system_identifier: String,
    pub history: TimelineHistory,
}

/// The answer of one member, or why there was none.
#[derive(Clone, Debug)]
pub enum Probe {
    Answered(MemberState),
    NoAnswer { failure: ConnectionFailure, message: String },
}

/// Every member's answer, in pgha.conf's order.
#[derive(Clone, Debug)]
pub struct Survey {
    pub probes: Vec<(IpAddr, Probe)>,
}

impl Survey {
    pub fn answers(&self) -> Vec<MemberState> {
        self.probes
            .iter()
            .filter_map(|(_, probe)| match probe {
                Probe::Answered(state) => Some(state.clone()),
                Probe::NoAnswer { .. } => None,
            })
            .collect()
    }

    /// Whether `address` shows it belongs to the set: it left timeline 1 (a promote) or another
    /// member that answered holds its system.
    pub fn joined(&self, address: IpAddr) -> bool {
        let answers = self.answers();
        let Some(own) = answers.iter().find(|state| state.address == address) else { return false };
        own.history.timeline > 1
            || answers.iter().any(|other| other.address != address && other.system_identifier == own.system_identifier)
    }

    /// One line per member for an error or a log.
    pub fn describe(&self) -> String {
        self.probes
            .iter()
            .map(|(address, probe)| match probe {
                Probe::Answered(state) => format!(
                    "{address}: {} on timeline {}, system {}",
                    if state.writable { "writable" } else { "in recovery" },
                    state.history.timeline,
                    state.system_identifier
                ),
                Probe::NoAnswer { message, .. } => {
                    format!("{address}: no answer ({})", message.lines().last().unwrap_or("").trim())
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Who the members say is primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// One writable member that every other writable member's history leads to. `stale` are
    /// writable members it has left behind (an old primary that came back).
    Primary { address: IpAddr, stale: Vec<IpAddr> },
    /// No member that answered is writable with the set's system identifier.
    NoPrimary,
    /// Writable members on forked histories: nothing tells which one holds the real data.
    SplitBrain(Vec<IpAddr>),
}

/// The rule, pure: among the writable members of system `system` (or, when the caller has no
/// copy of the set yet, of the system most members hold, the first primary's on a tie), the one
/// all other writable members are stale against.
pub fn decide(answers: &[MemberState], system: Option<&str>, first_primary: IpAddr) -> Verdict {
    let system = match system {
        Some(system) => system.to_string(),
        None => match majority_system(answers, first_primary) {
            Some(system) => system,
            None => return Verdict::NoPrimary,
        },
    };
    let writable: Vec<&MemberState> =
        answers.iter().filter(|state| state.writable && state.system_identifier == system).collect();
    let newest: Vec<&MemberState> = writable
        .iter()
        .copied()
        .filter(|candidate| !writable.iter().any(|other| other.history.descends_from(&candidate.history)))
        .collect();
    match newest.as_slice() {
        [] => Verdict::NoPrimary,
        [primary] => Verdict::Primary {
            address: primary.address,
            stale: writable
                .iter()
                .filter(|state| state.address != primary.address)
                .map(|state| state.address)
                .collect(),
        },
        several => Verdict::SplitBrain(several.iter().map(|state| state.address).collect()),
    }
}

/// The system identifier most members hold (a fresh initdb on a member that was never cloned
/// holds its own); on a tie the first primary's, and None when it did not answer.
fn majority_system(answers: &[MemberState], first_primary: IpAddr) -> Option<String> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for state in answers {
        match counts.iter_mut().find(|(system, _)| *system == state.system_identifier) {
            Some((_, count)) => *count += 1,
            None => counts.push((&state.system_identifier, 1)),
        }
    }
    counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    match counts.as_slice() {
        [] => None,
        [(system, _)] => Some(system.to_string()),
        [(system, first), (_, second), ..] if first > second => Some(system.to_string()),
        _ => answers.iter().find(|state| state.address == first_primary).map(|state| state.system_identifier.clone()),
    }
}

/// Asks every member but `skip` (this host, whose own cluster the caller reads locally), in
/// parallel, each bounded by MEMBER_CONNECT_TIMEOUT.
pub fn survey(config: &Config, passfile: &Path, version: PgVersion, skip: Option<IpAddr>) -> Survey {
    let addresses: Vec<IpAddr> = config.node_addresses().into_iter().filter(|address| Some(*address) != skip).collect();
    let probes = std::thread::scope(|scope| {
        let handles: Vec<_> = addresses
            .iter()
            .map(|address| scope.spawn(move || (*address, probe(config, *address, passfile, version))))
            .collect();
        handles.into_iter().map(|handle| handle.join().expect("a member probe panicked")).collect()
    });
    Survey { probes }
}

/// One member over the network: writable or not (SQL), system identifier and timeline
/// (IDENTIFY_SYSTEM), and the timeline's history (TIMELINE_HISTORY) when it is writable.
pub fn probe(config: &Config, address: IpAddr, passfile: &Path, version: PgVersion) -> Probe {
    let bounded = |target: Target| match target {
        // libpq takes the last of a repeated keyword.
        Target::Remote { conninfo } => {
            Target::Remote { conninfo: format!("{conninfo} connect_timeout={}", MEMBER_CONNECT_TIMEOUT.as_secs()) }
        }
        local => local,
    };
    let no_answer = |error: anyhow::Error| {
        let message = format!("{error:#}");
        Probe::NoAnswer { failure: classify_failure(&message), message }
    };
    let replication = bounded(replication_target(config, address, passfile, version));
    let identify = match query(&replication, "IDENTIFY_SYSTEM") {
        Ok(rows) => rows,
        Err(error) => return no_answer(error),
    };
    let (system_identifier, timeline) = match parse_identify_system(&identify) {
        Ok(answer) => answer,
        Err(error) => return no_answer(error),
    };
    let writable = match query_bool(&bounded(sql_target(config, address, passfile, version)), WRITABLE_SQL) {
        Ok(writable) => writable,
        Err(error) => return no_answer(error),
    };
    let history = if writable && timeline > 1 {
        match query(&replication, &format!("TIMELINE_HISTORY {timeline}"))
            .and_then(|rows| parse_timeline_history_answer(timeline, &rows))
        {
            Ok(history) => history,
            Err(error) => return no_answer(error),
        }
    } else {
        TimelineHistory { timeline, switches: Vec::new() }
    };
    Probe::Answered(MemberState { address, writable, system_identifier, history })
}

/// IDENTIFY_SYSTEM's row: systemid, timeline, xlogpos, dbname.
pub fn parse_identify_system(rows: &[Vec<String>]) -> Result<(String, u32)> {
    match rows.first().map(Vec::as_slice) {
        Some([system, timeline, ..]) if !system.is_empty() => {
            Ok((system.clone(), timeline.parse().with_context(|| format!("IDENTIFY_SYSTEM timeline {timeline:?}"))?))
        }
        _ => bail!("unexpected IDENTIFY_SYSTEM answer {rows:?}"),
    }
}

/// TIMELINE_HISTORY's row: the file name and the file's content.
pub fn parse_timeline_history_answer(timeline: u32, rows: &[Vec<String>]) -> Result<TimelineHistory> {
    match rows.first().map(Vec::as_slice) {
        Some([_, content]) => parse_history(timeline, content),
        _ => bail!("unexpected TIMELINE_HISTORY answer {rows:?}"),
    }
}

/// The history of the local data directory's timeline, from its own WAL directory. The directory belongs to postgres: read through a
/// handle, never following a link.
pub fn local_history(cluster: &Cluster, timeline: u32) -> Result<TimelineHistory> {
    if timeline <= 1 {
        return Ok(TimelineHistory::first());
    }
    let wal = if cluster.version.has_wal_names() { "pg_wal" } else { "pg_xlog" };
    let path = cluster.data_dir.join(wal).join(format!("{timeline:08X}.history"));
    let text = crate::files::secure::read_text_capped(&path, 1 << 20)?
        .with_context(|| format!("{} is missing: the timeline's history is unknown", path.display()))?;
    parse_history(timeline, &text)
}

/// This host's own cluster as a member: what pg_control says (system, timeline) and, when the
/// server answers, whether it is writable; `None` for writable means it is down or serves no one.
#[derive(Clone, Debug)]
pub struct LocalMember {
    pub state: MemberState,
    /// Whether the server runs and answered the question.
    pub answered: bool,
}

/// Reads the local cluster: a running server answers for itself (IDENTIFY_SYSTEM and
/// pg_is_in_recovery over its socket); for one that is down or serves no one, pg_control tells the
/// system and timeline, and it counts as writable when nothing in its data directory would start
/// it in recovery: that is what it would become at its next start.
pub fn local_member(cluster: &Cluster, address: IpAddr) -> Result<LocalMember> {
    let local = Target::local(cluster);
    let answer = query_bool(&local, WRITABLE_SQL).and_then(|writable| {
        let (system_identifier, timeline) =
            parse_identify_system(&query(&local_replication(cluster), "IDENTIFY_SYSTEM")?)?;
        Ok((writable, system_identifier, timeline))
    });
    let (writable, system_identifier, timeline, answered) = match answer {
        Ok((writable, system_identifier, timeline)) => (writable, system_identifier, timeline, true),
        Err(_) => {
            let control = crate::tools::pg_controldata::read(cluster.version, &cluster.data_dir)?;
            let writable = !crate::files::datadir::starts_in_recovery(cluster)?;
            (writable, control.system_identifier, control.timeline, false)
        }
    };
    let history = local_history(cluster, timeline)?;
    Ok(LocalMember { state: MemberState { address, writable, system_identifier, history }, answered })
}

/// A physical replication connection to the local cluster over its socket, as postgres (Debian's
/// pg_hba.conf lets postgres in by peer authentication).
fn local_replication(cluster: &Cluster) -> Target {
    Target::Remote {
        conninfo: format!(
            "host={} port={} dbname=replication replication=true connect_timeout=10",
            crate::quote::conninfo_quote(&cluster.socket_dir.display().to_string()),
            cluster.port
        ),
    }
}

/// Asks every member this host can reach, this host's own cluster read locally, and applies the
/// rule. Never fails: a member that cannot be asked is a `Probe::NoAnswer`.
pub fn ask(
    config: &Config,
    cluster: &Cluster,
    passfile: &Path,
    own_address: IpAddr,
    system: Option<&str>,
) -> (Verdict, Survey) {
    let mut survey = survey(config, passfile, cluster.version, Some(own_address));
    match local_member(cluster, own_address) {
        Ok(local) if local.answered || local.state.writable => {
            survey.probes.insert(0, (own_address, Probe::Answered(local.state)));
        }
        Ok(_) => {}
        Err(error) => log::warn!("cannot tell what cluster {} is: {error:#}", cluster.id()),
    }
    (decide(&survey.answers(), system, config.primary.address), survey)
}

/// Who is primary, for a command that acts on it. An error says why no primary can be named.
pub fn find_primary(
    config: &Config,
    cluster: &Cluster,
    passfile: &Path,
    own_address: IpAddr,
    system: Option<&str>,
) -> Result<(IpAddr, Survey)> {
    let (verdict, survey) = ask(config, cluster, passfile, own_address, system);
    primary_of(verdict, survey, &config.path)
}

/// The primary a verdict names, or the error a command reports.
pub fn primary_of(verdict: Verdict, survey: Survey, config_path: &Path) -> Result<(IpAddr, Survey)> {
    match verdict {
        Verdict::Primary { address, stale } => {
            for address in stale {
                log::warn!(
                    "{address} is writable on a timeline the primary has left: an old primary; run `pgha rejoin` there"
                );
            }
            Ok((address, survey))
        }
        Verdict::NoPrimary => {
            bail!("no member of {} answers as a writable primary:\n{}", config_path.display(), survey.describe())
        }
        Verdict::SplitBrain(addresses) => bail!(
            "split brain: {} are all writable on forked timelines; pgha will not pick one. Keep the one whose \
             data is right, then `pgha rejoin` on each other one:\n{}",
            addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(" and "),
            survey.describe()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    fn history(timeline: u32, switches: &[(u32, &str)]) -> TimelineHistory {
        TimelineHistory {
            timeline,
            switches: switches
                .iter()
                .map(|(parent, point)| TimelineSwitch { parent: *parent, switch_point: lsn(point) })
                .collect(),
        }
    }

    fn member(last_octet: u8, writable: bool, history: TimelineHistory) -> MemberState {
        MemberState {
            address: IpAddr::from([10, 0, 0, last_octet]),
            writable,
            system_identifier: "7712526787470903064".into(),
            history,
        }
    }

    #[test]
    fn parses_a_history_file_saved_from_postgresql_15() {
        // TIMELINE_HISTORY 2 on a promoted PostgreSQL 15 standby.
        let text = "1\t0/15008080\tno recovery target specified\n\n";
        assert_eq!(parse_history(2, text).unwrap(), history(2, &[(1, "0/15008080")]));
        let three = "1\t0/3000000\tno recovery target specified\n\n2\t0/5000000\tno recovery target specified\n";
        assert_eq!(parse_history(3, three).unwrap(), history(3, &[(1, "0/3000000"), (2, "0/5000000")]));
        assert!(parse_history(2, "garbage").is_err());
        assert!(parse_history(2, "3\t0/1\tfrom the future\n").is_err());
        let rows = vec![vec!["00000002.history".to_string(), text.to_string()]];
        assert_eq!(parse_timeline_history_answer(2, &rows).unwrap().switches.len(), 1);
    }

    #[test]
    fn parses_identify_system_saved_from_postgresql_15() {
        let rows = vec![vec!["7712526787470903064".into(), "2".into(), "0/15008E8".into(), String::new()]];
        assert_eq!(parse_identify_system(&rows).unwrap(), ("7712526787470903064".into(), 2));
        assert!(parse_identify_system(&[]).is_err());
    }

    #[test]
    fn a_timeline_descends_only_through_the_same_switches() {
        let one = TimelineHistory::first();
        let two = history(2, &[(1, "0/3000000")]);
        let three = history(3, &[(1, "0/3000000"), (2, "0/5000000")]);
        let other_two = history(2, &[(1, "0/4000000")]);
        assert!(two.descends_from(&one) && three.descends_from(&one) && three.descends_from(&two));
        assert!(!one.descends_from(&two) && !two.descends_from(&three) && !two.descends_from(&two));
        // Two independent promotes of timeline 1 both reach 2: neither descends from the other,
        // and a 3 from one of them does not descend from the other's 2.
        assert!(!two.descends_from(&other_two) && !other_two.descends_from(&two));
        assert!(!three.descends_from(&other_two));
        // 1 -> 3 skipping an abandoned 2.
        let skipped = history(3, &[(1, "0/3000000")]);
        assert!(skipped.descends_from(&one) && !skipped.descends_from(&two));
    }

    #[test]
    fn the_primary_is_the_writable_member_the_others_lead_to() {
        let two = history(2, &[(1, "0/3000000")]);
        // Normal life: one writable member, standbys in recovery.
        let normal = [member(1, true, TimelineHistory::first()), member(2, false, TimelineHistory::first())];
        assert_eq!(decide(&normal, None, FIRST), Verdict::Primary { address: normal[0].address, stale: vec![] });
        // After a failover the old primary came back writable on timeline 1: it is stale.
        let returned = [member(1, true, TimelineHistory::first()), member(2, true, two.clone())];
        assert_eq!(
            decide(&returned, Some("7712526787470903064"), FIRST),
            Verdict::Primary { address: returned[1].address, stale: vec![returned[0].address] }
        );
        // Two independent promotes: split brain, whatever the numbers.
        let forked = [member(2, true, two), member(3, true, history(2, &[(1, "0/4000000")]))];
        assert_eq!(decide(&forked, None, FIRST), Verdict::SplitBrain(vec![forked[0].address, forked[1].address]));
        // Nobody writable.
        assert_eq!(decide(&[member(2, false, TimelineHistory::first())], None, FIRST), Verdict::NoPrimary);
        assert_eq!(decide(&[], None, FIRST), Verdict::NoPrimary);
    }

    #[test]
    fn a_fresh_cluster_has_not_joined_the_set() {
        let mut fresh = member(2, true, TimelineHistory::first());
        fresh.system_identifier = "7000000000000000001".into();
        let silent = Probe::NoAnswer { failure: ConnectionFailure::PasswordRejected, message: String::new() };
        let alone = Survey { probes: vec![(fresh.address, Probe::Answered(fresh.clone())), (FIRST, silent)] };
        assert!(!alone.joined(fresh.address));
        let promoted = member(2, true, history(2, &[(1, "0/3000000")]));
        assert!(Survey { probes: vec![(promoted.address, Probe::Answered(promoted.clone()))] }.joined(promoted.address));
        let standby_of = member(2, false, TimelineHistory::first());
        let with_primary = Survey {
            probes: vec![
                (standby_of.address, Probe::Answered(standby_of.clone())),
                (FIRST, Probe::Answered(member(1, true, TimelineHistory::first()))),
            ],
        };
        assert!(with_primary.joined(standby_of.address));
    }

    #[test]
    fn members_of_another_system_are_not_candidates() {
        let mut fresh = member(3, true, TimelineHistory::first());
        fresh.system_identifier = "7000000000000000001".into();
        let answers = [member(1, true, TimelineHistory::first()), member(2, false, TimelineHistory::first()), fresh];
        // Without a system given, the one most members hold wins.
        assert_eq!(decide(&answers, None, FIRST), Verdict::Primary { address: answers[0].address, stale: vec![] });
        // On a tie, the first primary's system; when it did not answer, no guess.
        let tie = [answers[2].clone(), answers[0].clone()];
        assert_eq!(decide(&tie, None, FIRST), Verdict::Primary { address: answers[0].address, stale: vec![] });
        assert_eq!(decide(&tie, None, IpAddr::from([10, 0, 0, 9])), Verdict::NoPrimary);
        assert_eq!(
            decide(&answers, Some("7000000000000000001"), FIRST),
            Verdict::Primary { address: answers[2].address, stale: vec![] }
        );
    }
}
