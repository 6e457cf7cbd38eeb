//! `waypoint` binary: parse flags, initialise logging, run one command.

use std::io::{IsTerminal, Read};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use sqlx::migrate::MigrateDatabase;
use tracing_subscriber::EnvFilter;

use waypoint::alerts::OfficerAction;
use waypoint::clock::{Clock, SystemClock};
use waypoint::config::{AlertsCmd, Cli, Command, DbArgs, DevicesCmd, ScenarioCmd, TokensCmd};
use waypoint::domain::DeviceId;
use waypoint::scenario::Scenario;
use waypoint::store::postgres::PgStore;
use waypoint::store::{AlertFilter, Store};

/// Opens the store `db` names, migrated: the embedded SQLite database with
/// `--data-dir`, otherwise PostgreSQL; then runs `$body` with it (generic
/// over [`Store`], so each command is written once for both).
macro_rules! with_store {
    ($db:expr, $conns:expr, |$s:ident| $body:expr) => {
        match &$db.data_dir {
            Some(dir) => {
                let $s = open_lite(dir, false).await?;
                $body
            }
            None => {
                let $s = open_pg(&$db, $conns).await?;
                $body
            }
        }
    };
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr so command output (device lists, credentials) stays
    // clean. The demo prints what a person watches; its log shows only
    // trouble unless WAYPOINT_LOG asks for more.
    let level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_env("WAYPOINT_LOG").unwrap_or_else(|_| {
            EnvFilter::new(format!(
                "{level},sqlx=warn,{}",
                waypoint::broker::LOG_DIRECTIVE
            ))
        }))
        .init();
    match cli.command {
        Command::Serve(args) => {
            let cfg = args.to_config()?;
            let (running, embedded) = if args.embedded {
                let dir = args
                    .db
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| "waypoint-data".into());
                let e = waypoint::embedded::start(cfg, &dir, args.mqtt_addr, Arc::new(SystemClock))
                    .await?;
                tracing::info!(
                    data_dir = %dir.display(),
                    mqtt = %e.broker.local_addr(),
                    "embedded mode: SQLite database and in-process MQTT broker (docs/embedded.md)"
                );
                (e.running, Some((e.broker, e.store)))
            } else {
                anyhow::ensure!(
                    args.db.data_dir.is_none(),
                    "--data-dir is the embedded database's directory: add --embedded, or use \
                     --database-url for PostgreSQL"
                );
                let store = open_pg(&args.db, (cfg.shards + 4) as u32).await?;
                (
                    waypoint::app::start(cfg, store, Arc::new(SystemClock)).await?,
                    None,
                )
            };
            let fatal = running.fatal_token();
            tokio::select! {
                _ = shutdown_signal() => tracing::info!("shutdown requested; draining"),
                _ = fatal.cancelled() => {}
            }
            running.stop().await;
            // The broker's threads end with the process; the database is
            // closed so its WAL is checkpointed into the file.
            if let Some((_broker, store)) = embedded {
                store.close().await;
            }
            if fatal.is_cancelled() {
                anyhow::bail!("the server stopped after an internal failure (see the log above)");
            }
            tracing::info!("stopped");
        }
        Command::Demo(args) => {
            // Every setting the demo's results depend on is given here, so
            // WAYPOINT_* variables meant for a real deployment cannot change
            // them (a flag wins over its variable). The ground truth of the
            // fleet mirrors these rule settings.
            let http = args.http_addr.to_string();
            let cli = Cli::try_parse_from([
                "waypoint",
                "serve",
                "--http-addr",
                &http,
                "--mqtt-client-id",
                "waypoint-demo",
                "--topic-prefix",
                "",
                "--api",
                "true",
                "--publish-alerts",
                "true",
                "--gps-loss-secs",
                "300",
                "--no-signal-intervals",
                "3",
                "--battery-low-pct",
                "20",
                "--battery-critical-pct",
                "10",
                "--receive-maximum",
                "5000",
                "--max-payload-bytes",
                "262144",
                // rumqttd keeps 100 messages in flight per client whatever
                // the client asks: short batches keep PUBACKs flowing.
                "--batch-max-delay-ms",
                "2",
            ])?;
            let Command::Serve(serve) = cli.command else {
                unreachable!("parsed a serve command")
            };
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn({
                let stop = stop.clone();
                async move {
                    shutdown_signal().await;
                    stop.cancel();
                }
            });
            let summary = waypoint::demo::run(&args, serve.to_config()?, stop).await?;
            if summary.kinds_missing.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                summary.stopped_early,
                "the demo ended without these alert kinds: {}",
                summary.kinds_missing.join(", ")
            );
        }
        Command::Migrate(db) => {
            match &db.data_dir {
                Some(dir) => drop(open_lite(dir, true).await?),
                None => drop(open_pg(&db, 1).await?),
            }
            println!("migrations applied");
        }
        Command::Devices { cmd } => devices(cmd).await?,
        Command::Scenario { cmd } => scenario(cmd).await?,
        Command::Alerts { cmd } => alerts(cmd).await?,
        Command::Tokens { cmd } => tokens(cmd).await?,
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&waypoint::api::openapi())?
            )
        }
    }
    Ok(())
}

async fn tokens(cmd: TokensCmd) -> anyhow::Result<()> {
    use waypoint::api::auth::{self, Role};
    match cmd {
        TokensCmd::Create {
            role,
            officer,
            label,
            expires_in_days,
            db,
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!("unknown role {role:?} (officer, supervisor, admin, auditor)")
            })?;
            let expires =
                expires_in_days.map(|d| SystemClock.now() + chrono::TimeDelta::days(i64::from(d)));
            let t = with_store!(db, 1, |store| auth::create_token(
                &store.api_db(),
                role,
                officer.as_deref(),
                label.as_deref(),
                expires,
            )
            .await?);
            eprintln!(
                "token {} ({}) created; it is shown once and only its hash is stored:",
                t.token_id,
                role.as_str()
            );
            println!("{}", t.token);
        }
        TokensCmd::Revoke { token_id, db } => {
            let revoked = with_store!(db, 1, |store| auth::revoke_token(&store.api_db(), token_id)
                .await?);
            if !revoked {
                anyhow::bail!("no live token {token_id}");
            }
            println!("token {token_id} revoked");
        }
    }
    Ok(())
}

fn read_scenario(file: &std::path::Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read scenario file {}", file.display()))?;
    Scenario::parse(&text).with_context(|| format!("scenario file {} refused", file.display()))
}

async fn scenario(cmd: ScenarioCmd) -> anyhow::Result<()> {
    match cmd {
        ScenarioCmd::Check { file } => {
            let s = read_scenario(&file)?;
            println!(
                "ok: {} supervisees, {} devices, {} zones, {} rules",
                s.supervisees.len(),
                s.devices.len(),
                s.zones.len(),
                s.rules.len()
            );
        }
        ScenarioCmd::Load { file, db } => {
            let s = read_scenario(&file)?;
            let actor = format!("scenario:{}", file.display());
            let report = with_store!(db, 1, |store| store.apply_scenario(&s, &actor).await?);
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}

async fn alerts(cmd: AlertsCmd) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let (db, id, actor, action) = match cmd {
        AlertsCmd::List {
            status,
            device,
            limit,
            db,
        } => {
            let filter = AlertFilter {
                status,
                kind: None,
                device_id: device,
                limit,
            };
            for a in with_store!(db, 1, |store| store.alerts(&filter).await?) {
                println!("{}", serde_json::to_string(&a)?);
            }
            return Ok(());
        }
        AlertsCmd::Ack {
            alert_id,
            actor,
            db,
        } => (db, alert_id, actor, OfficerAction::Acknowledge),
        AlertsCmd::Resolve {
            alert_id,
            actor,
            outcome,
            note,
            db,
        } => {
            let outcome = outcome.parse().map_err(anyhow::Error::msg)?;
            (
                db,
                alert_id,
                actor,
                OfficerAction::Resolve { outcome, note },
            )
        }
        AlertsCmd::Note {
            alert_id,
            actor,
            note,
            db,
        } => (db, alert_id, actor, OfficerAction::Note(note)),
    };
    action.validate(&actor)?;
    with_store!(db, 1, |store| store
        .alert_action(id, &actor, &action, now)
        .await?);
    println!("alert {id}: {} recorded", action.as_str());
    Ok(())
}

/// Opens (and migrates) the embedded database in `dir`. Only `migrate` may
/// create one: any other command given a mistyped directory would otherwise
/// work on a new, empty database the server never sees.
async fn open_lite(
    dir: &std::path::Path,
    create: bool,
) -> anyhow::Result<waypoint::store::sqlite::SqliteStore> {
    let file = dir.join(waypoint::store::sqlite::DB_FILE);
    anyhow::ensure!(
        create || file.is_file(),
        "no Waypoint database in {} (is --data-dir the server's? `waypoint migrate --data-dir` \
         creates one)",
        dir.display()
    );
    let store = waypoint::store::sqlite::SqliteStore::open(dir)
        .await
        .with_context(|| format!("data directory {}", dir.display()))?;
    store.migrate().await?;
    Ok(store)
}

/// Creates the PostgreSQL database if missing, connects and migrates.
async fn open_pg(db: &DbArgs, connections: u32) -> anyhow::Result<PgStore> {
    if !sqlx::Postgres::database_exists(&db.database_url)
        .await
        .context("cannot reach PostgreSQL (is --database-url / WAYPOINT_DATABASE_URL right?)")?
    {
        sqlx::Postgres::create_database(&db.database_url)
            .await
            .context("creating the database")?;
    }
    let store = PgStore::connect(&db.database_url, connections).await?;
    store.migrate().await?;
    Ok(store)
}

async fn devices(cmd: DevicesCmd) -> anyhow::Result<()> {
    let now = SystemClock.now();
    match cmd {
        DevicesCmd::Add {
            device_id,
            owntracks,
            db,
        } => {
            let id = DeviceId::parse(&device_id)
                .with_context(|| format!("invalid device id {device_id:?}"))?;
            let pair = owntracks
                .as_deref()
                .map(|p| {
                    p.split_once('/')
                        .filter(|(u, d)| !u.is_empty() && !d.is_empty() && !d.contains('/'))
                        .with_context(|| format!("--owntracks {p:?} must be USER/DEVICE"))
                })
                .transpose()?;
            let rec = with_store!(db, 1, |store| store.add_device(&id, pair, now).await?);
            println!("enrolled device {} (key {})", rec.id, rec.key);
            print_credential_help(&rec.id, pair)?;
        }
        DevicesCmd::Revoke { device_id, db } => {
            let id = DeviceId::parse(&device_id)
                .with_context(|| format!("invalid device id {device_id:?}"))?;
            with_store!(db, 1, |store| store.revoke_device(&id, now).await?);
            println!("revoked device {id}; its messages are now refused as device_revoked");
            println!("remove its broker credential too:");
            println!(
                "  mosquitto_passwd -D /etc/mosquitto/passwd {id} && kill -HUP $(pidof mosquitto)"
            );
            println!("  # or, with the dynamic-security plugin:");
            println!("  mosquitto_ctrl dynsec deleteClient {id}");
        }
        DevicesCmd::List { db } => {
            for d in with_store!(db, 1, |store| store.devices().await?) {
                let ot = d
                    .owntracks
                    .map(|(u, v)| format!(" owntracks={u}/{v}"))
                    .unwrap_or_default();
                let state = if d.revoked { "revoked" } else { "active" };
                println!("{}\t{state}{ot}", d.id);
            }
        }
    }
    Ok(())
}

/// Prints the broker-side steps; the broker, not Waypoint, holds credentials.
fn print_credential_help(id: &DeviceId, owntracks: Option<(&str, &str)>) -> anyhow::Result<()> {
    let mut raw = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom for a device secret")?;
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let user = match owntracks {
        Some((u, _)) => u.to_owned(),
        None => id.to_string(),
    };
    println!("create its broker credential (deploy/mosquitto.conf: the ACL lets user <id> publish only under em/v1/devices/<id>/):");
    println!("  mosquitto_passwd -b /etc/mosquitto/passwd {user} {secret} && kill -HUP $(pidof mosquitto)");
    println!("  # or, with the dynamic-security plugin:");
    println!("  mosquitto_ctrl dynsec createClient {user} -p {secret} && mosquitto_ctrl dynsec addClientRole {user} waypoint-device");
    println!("  # (create the waypoint-device role once, with the ACL of deploy/waypoint.acl)");
    println!(
        "provision the device with username {user:?} and this password; it is shown only once."
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
