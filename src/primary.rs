//! The primary workflow: plan every change that makes this host's cluster the replication
//! primary (archive directory, conf.d/pgha.conf, the pg_hba block, the role and its grants),
//! then apply the plan, check it with the server before it is loaded, reload or restart, and put
//! everything back on any failure.

use std::fs;
use std::net::IpAddr;

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::{Config, Password};
use crate::debian::{log_tail, parse_includes_conf_d, Cluster};
use crate::error::ConfigError;
use crate::files::apply::Transaction;
use crate::files::plan::{existing_ownership, read_config_text, rendered_file_change, Ownership, Plan, Step};
use crate::host::postgres_account;
use crate::password::{stored_matches, verifier_for};
use crate::quote::{sql_identifier, sql_literal};
use crate::render::{conf_fragment_path, render, Facts, Role, PROMOTE_ROLE};
use crate::tools::pg_ctlcluster::{invoke_pg_ctlcluster, ClusterAction};
use crate::tools::psql::{parse_bool, query, query_bool, query_value, wait_until_ready, Target};
use crate::version::PgVersion;

/// What `pgha primary` would change on this host, and how to reach its server.
pub struct PrimaryPlan {
    pub plan: Plan,
    pub target: Target,
}

/// Checks the host and computes the plan; changes nothing. All of the admin's input was checked
/// before (the config and password were read), so a refusal here is about the host.
pub fn prepare(config: &Config, cluster: &Cluster, password: &Password, own_address: IpAddr) -> Result<PrimaryPlan> {
    let target = Target::local(cluster);
    if query_bool(&target, "SELECT pg_is_in_recovery()")? {
        bail!(
            "cluster {} is a standby (in recovery): `pgha primary` only configures a running primary; \
             use `pgha promote` to turn a standby into the primary",
            cluster.id()
        );
    }
    require_conf_d_included(cluster)?;
    let ssl = query_value(&target, "SHOW ssl")? == "on";
    let facts = Facts {
        version: cluster.version,
        config_dir: cluster.config_dir.clone(),
        data_dir: cluster.data_dir.clone(),
        own_address,
        upstream_address: own_address,
        local_ssl: ssl,
        primary_settings: None,
        pgha_program: crate::host::pgha_program(),
    };
    let plan = plan(config, cluster, &facts, &target, password)?;
    Ok(PrimaryPlan { plan, target })
}

/// How long a restarted or reloaded server gets to accept connections again.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings pgha writes into conf.d/pgha.conf; each must really take effect from there. The last
/// two only while replication.synchronous is on (off leaves them to the admin).
const MANAGED_SETTINGS: [&str; 8] = [
    "listen_addresses",
    "wal_level",
    "wal_log_hints",
    "max_wal_senders",
    "max_replication_slots",
    "hot_standby",
    "synchronous_standby_names",
    "synchronous_commit",
];

pub fn list(addresses: &[std::net::IpAddr]) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn require_conf_d_included(cluster: &Cluster) -> Result<()> {
    let path = cluster.config_dir.join("postgresql.conf");
    let text = read_config_text(&path)?;
    if parse_includes_conf_d(&text, &cluster.config_dir) {
        Ok(())
    } else {
        Err(ConfigError::in_file(
            &path,
            "has no active `include_dir = 'conf.d'` line, so pgha's conf.d/pgha.conf would be ignored: \
             expected Debian's default line at the end of the file",
        )
        .into())
    }
}

pub fn plan(config: &Config, cluster: &Cluster, facts: &Facts, target: &Target, password: &Password) -> Result<Plan> {
    let postgres = postgres_account()?;
    let mut plan = Plan::default();

    if config.archive.enabled {
        if let Some(step) = archive_dir_step(config)? {
            plan.push(step);
        }
    }

    let conf_d = cluster.config_dir.join("conf.d");
    if !conf_d.is_dir() {
        plan.push(Step::CreateDir {
            path: conf_d,
            ownership: Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o755 },
        });
    }
    for file in render(Role::Primary, config, facts)? {
        plan.steps.extend(rendered_file_change(file)?.map(Step::WriteFile));
    }
    plan.steps.extend(role_step(config, cluster, target, password)?);
    plan.steps.extend(rewind_grants_step(config, cluster, target)?);
    plan.steps.extend(promote_role_steps(config, cluster, target)?);
    Ok(plan)
}

/// The archive directory (postgres, 0700) when it is missing or not so owned; None when it is
/// right. Every member gets it, a standby too: a promoted one archives at once, and without the
/// directory each archive_command would fail and pg_wal would grow until the disk is full.
pub fn archive_dir_step(config: &Config) -> Result<Option<Step>> {
    let postgres = postgres_account()?;
    let ownership = Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o700 };
    let directory = &config.archive.directory;
    match fs::metadata(directory) {
        Ok(metadata) if !metadata.is_dir() => Err(ConfigError::key(
            &config.path,
            "archive.directory",
            format!("{} exists and is not a directory: expected a directory or nothing", directory.display()),
        )
        .into()),
        Ok(_) if existing_ownership(directory)? == ownership => Ok(None),
        Ok(_) | Err(_) => Ok(Some(Step::CreateDir { path: directory.clone(), ownership })),
    }
}

/// CREATE or ALTER ROLE, only when the role is missing or differs. The password is compared
/// against the stored verifier, because a fresh SCRAM salt would otherwise look like a change.
fn role_step(config: &Config, cluster: &Cluster, target: &Target, password: &Password) -> Result<Option<Step>> {
    let user = &config.replication.user;
    let limit = config.replication.connection_limit;
    let rows = query(target, &role_query_sql(user, cluster.version))?;
    let verifier = || verifier_for(cluster.version, user, password);
    let (verb, password_clause) = match rows.first() {
        None => ("CREATE", Some(verifier())),
        Some(row) => {
            let [login, replication, superuser, connlimit, stored, monitor] = row.as_slice() else {
                bail!("unexpected pg_authid row {row:?}");
            };
            if parse_bool(superuser)? {
                return Err(ConfigError::key(
                    &config.path,
                    "replication.user",
                    format!("role {user:?} exists and is a superuser; pgha will not demote it: expected a dedicated replication role"),
                )
                .into());
            }
            let password_ok = stored_matches(cluster.version, user, stored, password);
            if parse_bool(login)?
                && parse_bool(replication)?
                && connlimit == &limit.to_string()
                && password_ok
                && parse_bool(monitor)?
            {
                return Ok(None);
            }
            ("ALTER", (!password_ok).then(verifier))
        }
    };
    let (shown, sql) = role_sql(cluster.version, verb, user, limit, password_clause.as_deref());
    Ok(Some(Step::Sql { shown, sql }))
}

/// The role's attributes and stored verifier, and (10 and later) whether it has pg_monitor, which
/// lets peers read replication state without being superuser.
pub(crate) fn role_query_sql(user: &str, version: PgVersion) -> String {
    let monitor = if version.has_wal_names() {
        format!("pg_has_role({}, 'pg_monitor', 'MEMBER')", sql_literal(user))
    } else {
        "true".to_string()
    };
    format!(
        "SELECT rolcanlogin, rolreplication, rolsuper, rolconnlimit, coalesce(rolpassword, ''), {monitor} FROM pg_authid WHERE rolname = {}",
        sql_literal(user)
    )
}

/// `verb` (CREATE or ALTER) ROLE in a quiet session, with the verifier when it must change: what
/// the log shows (the verifier redacted) and what is sent.
pub(crate) fn role_sql(
    version: PgVersion,
    verb: &str,
    user: &str,
    limit: u32,
    verifier: Option<&str>,
) -> (String, String) {
    let kind = if version.has_scram() { "SCRAM-SHA-256" } else { "md5" };
    let attributes =
        format!("{verb} ROLE {} WITH LOGIN REPLICATION NOSUPERUSER CONNECTION LIMIT {limit}", sql_identifier(user));
    let mut shown = match verifier {
        Some(_) => format!("{attributes} PASSWORD '<{kind} verifier>'"),
        None => attributes.clone(),
    };
    let mut statement = match verifier {
        Some(verifier) => format!("{attributes} PASSWORD {}", sql_literal(verifier)),
        None => attributes,
    };
    if version.has_wal_names() {
        let grant = format!(";\nGRANT pg_monitor TO {}", sql_identifier(user));
        statement.push_str(&grant);
        shown.push_str(&grant.replace('\n', " "));
    }
    (shown, format!("{}{statement};\n", quiet_session_sql(version)))
}

/// Session settings that keep the role statement, verifier and all, out of the server log and
/// out of pg_stat_statements, whatever the admin chose: log_statement and
/// log_min_duration_statement log a statement that runs, log_min_error_statement one that fails
/// (a role created meanwhile, a read-only session, a password check hook), and the sampling
/// settings log statements by chance. pg_stat_statements keeps the text of utility statements
/// and shows it to pg_monitor, which the replication role itself is given.
pub(crate) fn quiet_session_sql(version: PgVersion) -> String {
    let mut settings = vec![
        "log_statement = 'none'",
        "log_min_duration_statement = -1",
        "log_min_error_statement = panic",
        // A placeholder when the module is not loaded: accepted, and harmless.
        "pg_stat_statements.track_utility = off",
    ];
    if version >= PgVersion::new(12, 0) {
        settings.push("log_transaction_sample_rate = 0");
    }
    if version >= PgVersion::new(13, 0) {
        settings.push("log_min_duration_sample = -1");
    }
    settings.iter().map(|setting| format!("SET {setting};\n")).collect()
}

/// From 12, `pgha switchover` promotes the target standby with pg_promote() over SQL, as
/// PROMOTE_ROLE: a role that may do nothing else (EXECUTE on that one function) and has no
/// password at rest. A switchover arms it with a one-time password (see switchover.rs). Not the
/// replication role: its password is in a passfile on every standby, readable by each standby's
/// postgres account, and must not be enough to promote a standby behind the primary's back.
fn promote_role_steps(config: &Config, cluster: &Cluster, target: &Target) -> Result<Vec<Step>> {
    if !cluster.version.has_pg_promote() {
        return Ok(Vec::new());
    }
    if config.replication.user == PROMOTE_ROLE {
        return Err(ConfigError::key(
            &config.path,
            "replication.user",
            format!("{PROMOTE_ROLE:?} is the role pgha uses for switchover: expected another name"),
        )
        .into());
    }
    let rows = query(target, &promote_role_query_sql())?;
    let mut steps = Vec::new();
    let granted = match rows.first().map(Vec::as_slice) {
        None => {
            let statement = create_promote_role_sql();
            steps.push(Step::Sql { shown: statement.clone(), sql: format!("{statement};\n") });
            false
        }
        Some([superuser, granted]) => {
            if parse_bool(superuser)? {
                bail!("role {PROMOTE_ROLE:?} exists and is a superuser; pgha will not use or demote it: drop it, and `pgha primary` creates it as it needs it");
            }
            parse_bool(granted)?
        }
        Some(row) => bail!("unexpected pg_authid row {row:?}"),
    };
    if !granted {
        let statement = grant_pg_promote_sql();
        steps.push(Step::Sql { shown: statement.clone(), sql: format!("{statement};\n") });
    }
    Ok(steps)
}

pub(crate) fn promote_role_query_sql() -> String {
    format!(
        "SELECT rolsuper, has_function_privilege(oid, 'pg_catalog.pg_promote(boolean, integer)', 'EXECUTE') \
         FROM pg_authid WHERE rolname = {}",
        sql_literal(PROMOTE_ROLE)
    )
}

pub(crate) fn create_promote_role_sql() -> String {
    format!("CREATE ROLE {} NOLOGIN NOSUPERUSER NOINHERIT", sql_identifier(PROMOTE_ROLE))
}

pub(crate) fn grant_pg_promote_sql() -> String {
    format!("GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO {}", sql_identifier(PROMOTE_ROLE))
}

/// From 11, pg_rewind can use a non-superuser source connection given these functions; granting
/// them lets `pgha rejoin` on a former primary rewind from this node once it is promoted (the
/// grants reach the standbys by replication).
fn rewind_grants_step(config: &Config, cluster: &Cluster, target: &Target) -> Result<Option<Step>> {
    let Some(sql) = missing_rewind_grants_sql(&config.replication.user, cluster.version) else { return Ok(None) };
    let missing = query(target, &sql)?;
    if missing.is_empty() {
        return Ok(None);
    }
    let functions: Vec<String> = missing.into_iter().filter_map(|row| row.into_iter().next()).collect();
    let statement = grant_execute_sql(&functions, &config.replication.user);
    Ok(Some(Step::Sql { shown: statement.clone(), sql: format!("{statement};\n") }))
}

/// The functions pg_rewind needs that `user` may not execute yet; None before 11.
pub(crate) fn missing_rewind_grants_sql(user: &str, version: PgVersion) -> Option<String> {
    if version < PgVersion::new(11, 0) {
        return None;
    }
    let user = sql_literal(user);
    Some(format!(
        "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'pg_catalog'::regnamespace \
         AND ((proname = 'pg_ls_dir' AND pronargs = 3) OR (proname = 'pg_stat_file' AND pronargs = 2) \
         OR (proname = 'pg_read_binary_file' AND pronargs IN (1, 4))) \
         AND NOT (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {user}) AND has_function_privilege({user}, p.oid, 'EXECUTE')) \
         ORDER BY 1"
    ))
}

/// `functions` as regprocedure text, which is already valid SQL for a function signature.
pub(crate) fn grant_execute_sql(functions: &[String], user: &str) -> String {
    format!("GRANT EXECUTE ON FUNCTION {} TO {}", functions.join(", "), sql_identifier(user))
}

pub fn apply(plan: &Plan, cluster: &Cluster, target: &Target) -> Result<()> {
    let mut transaction = Transaction::new();
    let mut server = ServerState::Untouched;
    let result = apply_steps(plan, cluster, target, &mut transaction, &mut server);
    if let Err(error) = result {
        log::error!("{error:#}");
        log::warn!("putting back the files pgha changed");
        crate::signals::finish_from_here();
        transaction.rollback().context("after a failed `pgha primary`")?;
        if let Err(restore) = restore_service(cluster, target, server) {
            return Err(error.context(format!(
                "`pgha primary` failed; the old configuration is back but the cluster did not come up with it: \
                 {restore:#}\n{}",
                log_tail(cluster, 20)
            )));
        }
        return Err(error.context(format!(
            "`pgha primary` failed; the files it changed are restored and cluster {} runs as before",
            cluster.id()
        )));
    }
    transaction.commit();
    Ok(())
}

/// How far the server got with the new files, so a rollback undoes exactly that much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    Untouched,
    Reloaded,
    Restarted,
}

fn apply_steps(
    plan: &Plan,
    cluster: &Cluster,
    target: &Target,
    transaction: &mut Transaction,
    server: &mut ServerState,
) -> Result<()> {
    let mut files_changed = false;
    for step in &plan.steps {
        match step {
            Step::CreateDir { path, ownership } => {
                log::info!("creating {} (mode {:04o})", path.display(), ownership.mode);
                transaction.create_dir(path, *ownership)?;
            }
            Step::WriteFile(change) => {
                log::info!("writing {}", change.path.display());
                transaction.write(change)?;
                files_changed = true;
            }
            Step::Sql { .. } => {}
        }
    }
    if files_changed {
        check_config_files(cluster, target)?;
    }
    for step in &plan.steps {
        if let Step::Sql { shown, sql } = step {
            log::info!("{shown}");
            query(target, &local_commit_sql(sql))?;
        }
    }
    if !files_changed {
        return Ok(());
    }
    log::info!("reloading cluster {}", cluster.id());
    *server = ServerState::Reloaded;
    invoke_pg_ctlcluster(cluster, ClusterAction::Reload)?;
    wait_until_ready(target, READY_TIMEOUT)?;
    let pending: Vec<String> =
        query(target, PENDING_RESTART_SQL)?.into_iter().filter_map(|row| row.into_iter().next()).collect();
    if !pending.is_empty() {
        log::info!("restarting cluster {}: {} only change at a restart", cluster.id(), pending.join(", "));
        *server = ServerState::Restarted;
        invoke_pg_ctlcluster(cluster, ClusterAction::Restart)
            .and_then(|()| wait_until_ready(target, READY_TIMEOUT))
            .with_context(|| format!("cluster {} did not restart\n{}", cluster.id(), log_tail(cluster, 20)))?;
    }
    Ok(())
}

/// Asks the server to read the files on disk before they are loaded: a syntax error or a
/// setting overridden by a later file (postgresql.auto.conf, say) is caught while the old
/// configuration is still the one running.
fn check_config_files(cluster: &Cluster, target: &Target) -> Result<()> {
    check_files_parse(cluster, target)?;
    let fragment = conf_fragment_path(&cluster.config_dir);
    let overridden = query(target, &overridden_settings_sql(&fragment))?;
    if !overridden.is_empty() {
        let lines: Vec<String> = overridden
            .iter()
            .map(|row| match row.as_slice() {
                [name, file, line] => format!("{name} is set again in {file} line {line}"),
                other => format!("{} is set again elsewhere", other.join(" ")),
            })
            .collect();
        bail!(
            "settings in {} would not take effect:\n{}\nremove them there (for postgresql.auto.conf: ALTER SYSTEM RESET name)",
            fragment.display(),
            lines.join("\n")
        );
    }
    Ok(())
}

/// The server's own reading of the configuration files and pg_hba.conf on disk, before a reload
/// loads them: an error it reports is refused while the running configuration is still intact.
pub(crate) fn check_files_parse(cluster: &Cluster, target: &Target) -> Result<()> {
    let errors = query(target, FILE_ERRORS_SQL)?;
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(|row| row.join(": ")).collect();
        bail!("PostgreSQL rejects the configuration files:\n{}", lines.join("\n"));
    }
    if let Some(sql) = hba_errors_sql(cluster.version) {
        let errors = query(target, sql)?;
        if !errors.is_empty() {
            let lines: Vec<String> = errors.iter().map(|row| format!("line {}", row.join(": "))).collect();
            bail!("PostgreSQL rejects pg_hba.conf:\n{}", lines.join("\n"));
        }
    }
    Ok(())
}

pub(crate) const PENDING_RESTART_SQL: &str = "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name";

// "setting could not be applied" only means a restart is needed; pending_restart handles that.
// So does "cannot be changed without restarting": a restart-only setting removed from a file
// (re-running `pgha primary` on a promoted standby drops the standby form's max_connections etc.).
pub(crate) const FILE_ERRORS_SQL: &str =
    "SELECT coalesce(sourcefile, ''), coalesce(sourceline, 0), coalesce(name, ''), error FROM pg_file_settings \
     WHERE error IS NOT NULL AND error <> 'setting could not be applied' \
     AND error NOT LIKE '%cannot be changed without restarting the server'";

/// pg_hba_file_rules arrived in 10; before that a broken pg_hba.conf shows only at the reload.
pub(crate) fn hba_errors_sql(version: PgVersion) -> Option<&'static str> {
    version.has_wal_names().then_some("SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL")
}

/// Managed settings that `fragment` sets and a later file (postgresql.auto.conf, say) sets again,
/// so `fragment`'s value is ignored. A setting the fragment leaves out is the admin's to set.
pub(crate) fn overridden_settings_sql(fragment: &std::path::Path) -> String {
    let names = MANAGED_SETTINGS.iter().map(|name| sql_literal(name)).collect::<Vec<_>>().join(", ");
    let fragment = sql_literal(&fragment.display().to_string());
    format!(
        "SELECT name, sourcefile, sourceline FROM pg_file_settings WHERE applied AND name IN ({names}) AND sourcefile <> {fragment} \
         AND name IN (SELECT name FROM pg_file_settings WHERE sourcefile = {fragment})"
    )
}

/// `statements` committed without waiting for synchronous standbys. pgha's own writes (roles,
/// grants, the promote role's one-time password) use it: with replication.synchronous on and too
/// few standbys connected they would otherwise hang, `pgha primary` included, the very command
/// that turns synchronous replication off. They still reach the standbys as all WAL does.
pub(crate) fn local_commit_sql(statements: &str) -> String {
    format!("SET synchronous_commit = local;\n{statements}")
}

/// After a rollback: bring the server back to the restored files, doing no more than the
/// failed run did, so a failure before any reload leaves the server untouched.
fn restore_service(cluster: &Cluster, target: &Target, server: ServerState) -> Result<()> {
    if wait_until_ready(target, Duration::from_secs(2)).is_err() {
        invoke_pg_ctlcluster(cluster, ClusterAction::Start)?;
    } else {
        match server {
            ServerState::Untouched => return Ok(()),
            ServerState::Reloaded => invoke_pg_ctlcluster(cluster, ClusterAction::Reload)?,
            ServerState::Restarted => invoke_pg_ctlcluster(cluster, ClusterAction::Restart)?,
        }
    }
    wait_until_ready(target, READY_TIMEOUT)
}
