//! The rejoin workflow: a former primary (or a standby following the wrong node) becomes a
//! standby of the configured primary, by pg_rewind when it can, by the full safe clone otherwise.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::standby::clone::{clone_standby, CloneReport};
use crate::standby::preflight::{identify_primary, preflight};
use crate::standby::rewind::{rewind, rewind_obstacle, Keep, RewindOutcome, Rewound};
use crate::standby::slots::ensure_slot;
use crate::standby::streaming::wait_streaming_from_primary;
use crate::standby::StandbyContext;
use crate::tools::psql::query_bool;
use crate::upstream::{sql_target, PrivatePassfile};

/// How long a running standby of this primary gets to show it streams before rejoin acts.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(5);

pub struct RejoinOptions {
    pub full_clone: bool,
    pub keep: Keep,
    pub timeout: Duration,
    /// Rewind and configure, but leave the cluster stopped (the saved set can still undo it).
    pub start: bool,
    /// pg_rewind even when a full clone would copy less.
    pub always_rewind: bool,
}

pub enum Rejoined {
    AlreadyStreaming,
    Rewound { rewound: Rewound, elapsed: Duration },
    Cloned { report: CloneReport, elapsed: Duration },
}

pub fn rejoin(context: &StandbyContext, options: &RejoinOptions) -> Result<Rejoined> {
    let started = Instant::now();
    let config = context.config;
    let passfile = PrivatePassfile::new(config, context.password)?;
    let system_identifier = identify_primary(context, &passfile.path)?;
    let remote = sql_target(config, context.primary, &passfile.path, context.cluster.version);
    if query_bool(&remote, "SELECT pg_is_in_recovery()")? {
        bail!("the configured primary {} is in recovery: promote it first (`pgha promote` there)", context.primary);
    }
    let fenced = crate::fence::read(context.cluster)?.is_some();
    if fenced {
        log::info!(
            "cluster {} is fenced: it starts in recovery and serves nobody until this rejoin",
            context.cluster.id()
        );
    }
    if !options.full_clone && !fenced && wait_streaming_from_primary(context, &system_identifier, RECONNECT_PATIENCE)? {
        return Ok(Rejoined::AlreadyStreaming);
    }
    let primary = preflight(context, &passfile.path, system_identifier)?;
    if let Some(slot) = context.slot_name() {
        ensure_slot(&remote, &slot, primary.version)?;
    }

    let why_not = if options.full_clone {
        Some("--full-clone was given".to_string())
    } else {
        rewind_obstacle(context.cluster, &primary)?
    };
    match why_not {
        None => match rewind(
            context,
            &primary,
            &passfile.path,
            options.timeout,
            options.keep,
            options.start,
            !options.always_rewind,
        ) {
            Ok(RewindOutcome::Rewound(rewound)) => {
                return Ok(Rejoined::Rewound { rewound, elapsed: started.elapsed() })
            }
            Ok(RewindOutcome::CloneCheaper(reason)) if options.start => {
                log::info!("cloning in full instead of pg_rewind: {reason}")
            }
            Ok(RewindOutcome::CloneCheaper(reason)) => {
                bail!("--no-start needs pg_rewind, and a full clone is the cheaper way here: {reason}")
            }
            Err(error) if crate::signals::is_interrupted(&error) => {
                return Err(error.context(format!(
                    "rejoin stopped during the rewind: cluster {} is left stopped, and what its data directory \
                     held before is kept beside it (.pgha-fork-*, .pgha-old-*); run `pgha rejoin` again, it \
                     rewinds or clones from where this stopped",
                    context.cluster.id()
                )))
            }
            Err(error) if !options.start => return Err(error),
            Err(error) => log::warn!("pg_rewind did not work, falling back to a full clone: {error:#}"),
        },
        Some(reason) if !options.start => bail!("--no-start needs pg_rewind: {reason}"),
        Some(reason) => log::info!("not using pg_rewind: {reason}; cloning in full"),
    }
    let report = clone_standby(context, &primary, options.timeout)?;
    Ok(Rejoined::Cloned { report, elapsed: started.elapsed() })
}
