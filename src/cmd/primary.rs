//! `pgha primary`: make this host's cluster the replication primary.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::apply::Transaction;
use crate::config::{Config, Password};
use crate::debian::{invoke_pg_ctlcluster, log_tail, parse_includes_conf_d, Cluster, ClusterAction};
use crate::error::{ConfigError, EXIT_OK};
use crate::hba::merge_block;
use crate::host::postgres_account;
use crate::password::{stored_matches, verifier_for};
use crate::pg::{query, query_value, sql_identifier, sql_literal, wait_until_ready, Target};
use crate::plan::{existing_ownership, file_change, FileChange, Ownership, Plan, Step};
use crate::render::{conf_fragment_path, render, Facts, FileKind, RenderedFile, Role};

/// How long a restarted or reloaded server gets to accept connections again.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings pgha writes into conf.d/pgha.conf; each must really take effect from there.
const MANAGED_SETTINGS: [&str; 6] =
    ["listen_addresses", "wal_level", "wal_log_hints", "max_wal_senders", "max_replication_slots", "hot_standby"];

#[derive(Debug, Args)]
pub struct PrimaryArgs {
    /// Print the plan (a diff of each file, the SQL and commands) and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

impl PrimaryArgs {
    pub fn run(self, config_path: &Path) -> Result<i32> {
        // All of the admin's input is checked before the host is even looked at.
        let config = Config::load(config_path)?;
        let password = config.read_password()?;
        let cluster = crate::debian::select_cluster(config_path, &config.cluster, &crate::debian::list_clusters()?)?;
        crate::cmd::require_online(config_path, &cluster)?;
        crate::cmd::require_local_address(config_path, "primary.address", config.primary.address)?;
        let target = Target::local(&cluster);
        if query_value(&target, "SELECT pg_is_in_recovery()")? == "t" {
            bail!(
                "cluster {} is a standby (in recovery): `pgha primary` only configures a running primary; \
                 use `pgha promote` to turn a standby into the primary",
                cluster.id()
            );
        }
        require_conf_d_included(&cluster)?;
        let ssl = query_value(&target, "SHOW ssl")? == "on";
        let facts = Facts {
            version: cluster.version,
            config_dir: cluster.config_dir(),
            data_dir: cluster.data_dir.clone(),
            own_address: config.primary.address,
            local_ssl: ssl,
            primary_ssl: ssl,
            primary_settings: None,
        };

        let plan = plan(&config, &cluster, &facts, &target, &password)?;
        if plan.is_empty() {
            log::info!("cluster {} is already a configured primary: no changes", cluster.id());
            println!("no changes");
            return Ok(EXIT_OK);
        }
        if self.dry_run {
            print!("{}", plan.describe());
            println!("then: reload cluster {}, and restart it only if a changed setting requires it", cluster.id());
            return Ok(EXIT_OK);
        }
        apply(&plan, &cluster, &target)?;
        println!("cluster {} is a replication primary for {}", cluster.id(), list(&config.standby.addresses));
        Ok(EXIT_OK)
    }
}

fn list(addresses: &[std::net::IpAddr]) -> String {
    addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn require_conf_d_included(cluster: &Cluster) -> Result<()> {
    let path = cluster.config_dir().join("postgresql.conf");
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if parse_includes_conf_d(&text, &cluster.config_dir()) {
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
        let ownership = Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o700 };
        if let Some(step) = archive_dir_step(config, ownership)? {
            plan.push(step);
        }
    }

    let conf_d = cluster.config_dir().join("conf.d");
    if !conf_d.is_dir() {
        plan.push(Step::CreateDir {
            path: conf_d,
            ownership: Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o755 },
        });
    }
    for file in render(Role::Primary, config, facts)? {
        plan.steps.extend(config_file_change(file)?.map(Step::WriteFile));
    }
    plan.steps.extend(role_step(config, cluster, target, password)?);
    Ok(plan)
}

/// The change a rendered configuration file needs: whole files owned by postgres (0644), the
/// pg_hba.conf block merged into the admin's file with its owner and mode kept.
pub fn config_file_change(file: RenderedFile) -> Result<Option<FileChange>> {
    match file.kind {
        FileKind::Whole => {
            let postgres = postgres_account()?;
            file_change(&file.path, file.content, Ownership { uid: postgres.uid, gid: postgres.gid, mode: 0o644 })
        }
        FileKind::HbaBlock => {
            let current =
                fs::read_to_string(&file.path).with_context(|| format!("cannot read {}", file.path.display()))?;
            let merged = merge_block(&current, &file.content)
                .map_err(|message| anyhow::anyhow!("{}: {message}", file.path.display()))?;
            file_change(&file.path, merged, existing_ownership(&file.path)?)
        }
    }
}

fn archive_dir_step(config: &Config, ownership: Ownership) -> Result<Option<Step>> {
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
    // pg_monitor (10 and later) lets peers read replication state without being superuser.
    let monitor = if cluster.version.has_wal_names() {
        format!("pg_has_role({}, 'pg_monitor', 'MEMBER')", sql_literal(user))
    } else {
        "true".to_string()
    };
    let rows = query(
        target,
        &format!(
            "SELECT rolcanlogin, rolreplication, rolsuper, rolconnlimit, coalesce(rolpassword, ''), {monitor} FROM pg_authid WHERE rolname = {}",
            sql_literal(user)
        ),
    )?;
    let verifier = || verifier_for(cluster.version, user, password);
    let kind = if cluster.version.has_scram() { "SCRAM-SHA-256" } else { "md5" };
    let (verb, password_clause) = match rows.first() {
        None => ("CREATE", Some(verifier())),
        Some(row) => {
            let [login, replication, superuser, connlimit, stored, monitor] = row.as_slice() else {
                bail!("unexpected pg_authid row {row:?}");
            };
            if superuser == "t" {
                return Err(ConfigError::key(
                    &config.path,
                    "replication.user",
                    format!("role {user:?} exists and is a superuser; pgha will not demote it: expected a dedicated replication role"),
                )
                .into());
            }
            let password_ok = stored_matches(cluster.version, user, stored, password);
            if login == "t" && replication == "t" && connlimit == &limit.to_string() && password_ok && monitor == "t" {
                return Ok(None);
            }
            ("ALTER", (!password_ok).then(verifier))
        }
    };
    let attributes =
        format!("{verb} ROLE {} WITH LOGIN REPLICATION NOSUPERUSER CONNECTION LIMIT {limit}", sql_identifier(user));
    let shown = match &password_clause {
        Some(_) => format!("{attributes} PASSWORD '<{kind} verifier>'"),
        None => attributes.clone(),
    };
    let mut statement = match password_clause {
        Some(verifier) => format!("{attributes} PASSWORD {}", sql_literal(&verifier)),
        None => attributes,
    };
    let mut shown = shown;
    if cluster.version.has_wal_names() {
        let grant = format!(";\nGRANT pg_monitor TO {}", sql_identifier(user));
        statement.push_str(&grant);
        shown.push_str(&grant.replace('\n', " "));
    }
    // Keep even the verifier out of the server log, whatever log_statement the admin chose.
    let sql = format!("SET log_statement = 'none';\nSET log_min_duration_statement = -1;\n{statement};\n");
    Ok(Some(Step::Sql { shown, sql }))
}

fn apply(plan: &Plan, cluster: &Cluster, target: &Target) -> Result<()> {
    let mut transaction = Transaction::new();
    let mut server = ServerState::Untouched;
    let result = apply_steps(plan, cluster, target, &mut transaction, &mut server);
    if let Err(error) = result {
        log::error!("{error:#}");
        log::warn!("putting back the files pgha changed");
        transaction.rollback().context("after a failed `pgha primary`")?;
        if let Err(restore) = restore_service(cluster, target, server) {
            bail!(
                "{error:#}\nthe old configuration is back but the cluster did not come up with it: {restore:#}\n{}",
                log_tail(cluster, 20)
            );
        }
        return Err(error.context(format!(
            "`pgha primary` failed; the files it changed are restored and cluster {} runs as before",
            cluster.id()
        )));
    }
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
            Step::Sql { .. } | Step::Command(_) => {}
        }
    }
    if files_changed {
        check_config_files(cluster, target)?;
    }
    for step in &plan.steps {
        if let Step::Sql { shown, sql } = step {
            log::info!("{shown}");
            query(target, sql)?;
        }
    }
    if !files_changed {
        return Ok(());
    }
    log::info!("reloading cluster {}", cluster.id());
    *server = ServerState::Reloaded;
    invoke_pg_ctlcluster(cluster, ClusterAction::Reload)?;
    wait_until_ready(target, READY_TIMEOUT)?;
    let pending: Vec<String> = query(target, "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")?
        .into_iter()
        .filter_map(|row| row.into_iter().next())
        .collect();
    if !pending.is_empty() {
        log::info!("restarting cluster {}: {} only change at a restart", cluster.id(), pending.join(", "));
        *server = ServerState::Restarted;
        if let Err(error) = invoke_pg_ctlcluster(cluster, ClusterAction::Restart) {
            bail!("{error:#}\n{}", log_tail(cluster, 20));
        }
        wait_until_ready(target, READY_TIMEOUT)
            .map_err(|error| anyhow::anyhow!("{error:#}\n{}", log_tail(cluster, 20)))?;
    }
    Ok(())
}

/// Asks the server to read the files on disk before they are loaded: a syntax error or a
/// setting overridden by a later file (postgresql.auto.conf, say) is caught while the old
/// configuration is still the one running.
fn check_config_files(cluster: &Cluster, target: &Target) -> Result<()> {
    // "setting could not be applied" only means a restart is needed; pending_restart handles that.
    let errors = query(
        target,
        "SELECT coalesce(sourcefile, ''), coalesce(sourceline, 0), coalesce(name, ''), error FROM pg_file_settings \
         WHERE error IS NOT NULL AND error <> 'setting could not be applied'",
    )?;
    if !errors.is_empty() {
        let lines: Vec<String> = errors.iter().map(|row| row.join(": ")).collect();
        bail!("PostgreSQL rejects the configuration files:\n{}", lines.join("\n"));
    }
    if cluster.version.has_wal_names() {
        let errors = query(target, "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL")?;
        if !errors.is_empty() {
            let lines: Vec<String> = errors.iter().map(|row| format!("line {}", row.join(": "))).collect();
            bail!("PostgreSQL rejects pg_hba.conf:\n{}", lines.join("\n"));
        }
    }
    let fragment = conf_fragment_path(&cluster.config_dir());
    let names = MANAGED_SETTINGS.iter().map(|name| sql_literal(name)).collect::<Vec<_>>().join(", ");
    let overridden = query(
        target,
        &format!("SELECT name, sourcefile, sourceline FROM pg_file_settings WHERE applied AND name IN ({names}) AND sourcefile <> {}", sql_literal(&fragment.display().to_string())),
    )?;
    if !overridden.is_empty() {
        let lines: Vec<String> =
            overridden.iter().map(|row| format!("{} is set again in {} line {}", row[0], row[1], row[2])).collect();
        bail!(
            "settings in {} would not take effect:\n{}\nremove them there (for postgresql.auto.conf: ALTER SYSTEM RESET name)",
            fragment.display(),
            lines.join("\n")
        );
    }
    Ok(())
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
