//! The replication slot named after each standby on the primary: reused, replaced when the
//! primary invalidated it, created for a clone, and never leaked by a failed one.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::quote::sql_literal;
use crate::render::standby_name;
use crate::replication::ensure_slot_sql;
use crate::standby::preflight::PrimaryFacts;
use crate::standby::StandbyContext;
use crate::tools::poll_until;
use crate::tools::psql::{query, query_bool, Target};
use crate::version::PgVersion;

/// How the clone gets its slot: reuse the one named after this standby, or create it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotPlan {
    None,
    Reuse,
    /// pg_basebackup `--create-slot` (11+), or pgha creates it first (older).
    Create,
}

pub fn prepare_slot(
    context: &StandbyContext,
    primary: &PrimaryFacts,
    remote: &Target,
    created: &mut bool,
) -> Result<SlotPlan> {
    let Some(name) = context.slot_name() else { return Ok(SlotPlan::None) };
    let literal = sql_literal(&name);
    if let Some(state) = &primary.slot {
        if state.active {
            // Our own wal receiver held it; it lets go once the stopped cluster's connection is gone.
            wait_slot_inactive(remote, &literal)?;
        }
        if !state.lost {
            log::info!("reusing replication slot {name} on the primary");
            return Ok(SlotPlan::Reuse);
        }
        log::info!("replacing replication slot {name}: the primary invalidated it");
        query(remote, &drop_slot_sql(&literal))?;
    }
    if !context.cluster.version.basebackup_can_create_slot() {
        query(remote, &create_slot_sql(&literal, context.cluster.version))?;
        *created = true;
    }
    log::info!("creating replication slot {name} on the primary");
    Ok(SlotPlan::Create)
}

pub(crate) fn drop_slot_sql(literal: &str) -> String {
    format!("SELECT pg_drop_replication_slot({literal})")
}

/// 9.5's function takes the name only; reserving WAL at creation arrived in 9.6.
pub(crate) fn create_slot_sql(literal: &str, version: PgVersion) -> String {
    let reserve = if version >= PgVersion::new(9, 6) { ", true" } else { "" };
    format!("SELECT pg_create_physical_replication_slot({literal}{reserve})")
}

pub(crate) fn slot_active_sql(literal: &str) -> String {
    format!("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = {literal}")
}

/// Drops the slot if it exists: a failed clone may have stopped before creating it.
pub(crate) fn drop_slot_if_exists_sql(literal: &str) -> String {
    format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {literal}")
}

/// Drops the inactive physical slots among `literals`, and names them.
pub(crate) fn drop_stale_slots_sql(literals: &[String]) -> String {
    format!(
        "SELECT slot_name, pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_type = 'physical' AND NOT active AND slot_name IN ({})",
        literals.join(", ")
    )
}

fn wait_slot_inactive(remote: &Target, literal: &str) -> Result<()> {
    let sql = slot_active_sql(literal);
    let released = poll_until(Duration::from_secs(30), Duration::from_millis(250), || {
        Ok((!query_bool(remote, &sql)?).then_some(()))
    })?;
    if released.is_none() {
        bail!("replication slot {literal} on the primary stayed in use after this cluster stopped");
    }
    Ok(())
}

/// Makes sure the slot `name` exists on `target`, reserving WAL from now on.
pub fn ensure_slot(target: &Target, name: &str, version: PgVersion) -> Result<bool> {
    Ok(!query(target, &ensure_slot_sql(name, version))?.is_empty())
}

pub fn drop_slot_if_created(context: &StandbyContext, remote: &Target, created: bool) -> Result<()> {
    match context.slot_name() {
        Some(name) if created => {
            let literal = sql_literal(&name);
            // The killed client's walsender lets go of the slot only once it notices.
            wait_slot_inactive(remote, &literal)?;
            query(remote, &drop_slot_if_exists_sql(&literal))?;
            log::info!("dropped replication slot {name}, which this failed clone created");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The slots this host kept for its standbys while it was the primary: on a standby nothing uses
/// them, and they would hold WAL here forever. Only pgha's own, inactive, physical slots go.
pub fn drop_stale_slots(context: &StandbyContext) -> Result<()> {
    let names: Vec<String> =
        context.config.node_addresses().into_iter().map(|address| sql_literal(&standby_name(address))).collect();
    let dropped = query(&Target::local(context.cluster), &drop_stale_slots_sql(&names))?;
    for name in dropped.iter().filter_map(|row| row.first()) {
        log::info!("dropped replication slot {name} kept from this host's time as primary");
    }
    Ok(())
}
