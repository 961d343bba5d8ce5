//! `ratchet`: parse the command line, set up logging, run the chosen subcommand.

use std::process::ExitCode;

use clap::Parser as _;
use ratchet::cli::{Cli, Command, KeysArgs, KeysCommand};
use ratchet::config::{self, Config, EventsConfig, GcConfig};
use ratchet::keys::directory::Imported;
use ratchet::keys::{KeyAlgorithm, KeyError};
use ratchet::startup::{self, Application};
use ratchet::store::AuditEvent;
use ratchet::store::postgres::wait::Unreachable;
use ratchet::store::sqlite::LockError;
use ratchet::{shutdown, telemetry};

/// EX_USAGE from sysexits.h: the configuration is wrong, retrying will not help.
const EX_USAGE: u8 = 64;
/// EX_UNAVAILABLE from sysexits.h: the database could not be reached within `--db-wait`.
const EX_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => match Config::from_args(*args) {
            Ok(config) => runtime.block_on(serve(config)),
            Err(problems) => return usage(&problems),
        },
        Command::Migrate(args) => match config::database::target(&args.database, &args.data_dir) {
            Ok(target) => runtime.block_on(startup::migrate(&target)),
            Err(problems) => return usage(&problems),
        },
        Command::Gc(args) => match GcConfig::from_args(&args) {
            Ok(config) => runtime.block_on(gc(config)),
            Err(problems) => return usage(&problems),
        },
        Command::Events(args) => match EventsConfig::from_args(&args, time::OffsetDateTime::now_utc()) {
            Ok(config) => runtime.block_on(events(config)),
            Err(problems) => return usage(&problems),
        },
        Command::Keys(args) => match keys(&args) {
            Err(KeysFailure::Usage(problem)) => return usage(&[problem]),
            Err(KeysFailure::Keys(error)) => Err(error.into()),
            Ok(()) => Ok(()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            // Another server on the same SQLite database (replicas need PostgreSQL), or a database
            // file others may read: deployment mistakes that retrying will not fix, like a bad
            // flag.
            if matches!(
                error.downcast_ref::<LockError>(),
                Some(LockError::InUse { .. } | LockError::Exposed { .. })
            ) {
                ExitCode::from(EX_USAGE)
            } else if error.downcast_ref::<Unreachable>().is_some() {
                ExitCode::from(EX_UNAVAILABLE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    Application::build(config)
        .await?
        .run_until_stopped(shutdown::signal())
        .await
}

async fn gc(config: GcConfig) -> anyhow::Result<()> {
    let report = startup::collect_garbage(&config).await?;
    if report.skipped {
        println!("skipped: a server is cleaning up this database right now");
        return Ok(());
    }
    println!(
        "removed {} families and {} refresh tokens; cleared {} expired seals; removed {} audit events",
        report.families, report.tokens, report.seals, report.events
    );
    Ok(())
}

/// One audit event as `ratchet events` prints it: a JSON object per line, fields in this order.
#[derive(serde::Serialize)]
struct EventLine<'a> {
    id: i64,
    at: String,
    kind: &'static str,
    family_id: String,
    subject: &'a str,
    client_id: &'a str,
    caller: Option<&'a str>,
    request_id: Option<&'a str>,
    detail: Option<&'a str>,
}

async fn events(config: EventsConfig) -> anyhow::Result<()> {
    use std::io::Write as _;
    let events = startup::events(&config).await?;
    let mut out = std::io::stdout().lock();
    for event in &events {
        let AuditEvent {
            id,
            at,
            kind,
            family_id,
            subject,
            client_id,
            caller,
            request_id,
            detail,
        } = event;
        let line = EventLine {
            id: *id,
            at: at.format(&time::format_description::well_known::Rfc3339)?,
            kind: kind.as_str(),
            family_id: family_id.to_string(),
            subject,
            client_id,
            caller: caller.as_deref(),
            request_id: request_id.as_deref(),
            detail: detail.as_deref(),
        };
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

fn usage(problems: &[String]) -> ExitCode {
    for problem in problems {
        eprintln!("error: {problem}");
    }
    ExitCode::from(EX_USAGE)
}

enum KeysFailure {
    Usage(String),
    Keys(KeyError),
}

impl From<KeyError> for KeysFailure {
    fn from(error: KeyError) -> Self {
        Self::Keys(error)
    }
}

/// `ratchet keys ...`: every command first creates the key directory if there is none (around
/// the legacy key, if any), then does its change under the directory's lock.
fn keys(args: &KeysArgs) -> Result<(), KeysFailure> {
    let source = config::keys::source(&args.source);
    let dir = &source.dir;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // Checked before the directory is touched: a typo creates nothing.
    let alg = match &args.command {
        KeysCommand::Generate { alg } => Some(
            alg.parse::<KeyAlgorithm>()
                .map_err(|problem| KeysFailure::Usage(format!("alg: {problem}")))?,
        ),
        _ => None,
    };
    match source.initialize(&now)? {
        Imported::Nothing => {}
        Imported::Created => eprintln!("created the key directory {}", dir.path().display()),
        Imported::LegacyKey(kid) => eprintln!(
            "created the key directory {} around the existing signing key {kid} (active)",
            dir.path().display()
        ),
    }
    match &args.command {
        KeysCommand::Generate { .. } => {
            let entry = dir.generate(alg.unwrap_or(KeyAlgorithm::EdDSA), &now)?;
            println!("{}", entry.kid);
            eprintln!(
                "generated {} key {} ({}); servers pick it up on SIGHUP or within the reload interval",
                entry.alg, entry.kid, entry.state
            );
        }
        KeysCommand::List => {
            println!("{:<45} {:<6} {:<10} CREATED", "KID", "ALG", "STATE");
            for entry in dir.list()? {
                println!(
                    "{:<45} {:<6} {:<10} {}",
                    entry.kid, entry.alg, entry.state, entry.created
                );
            }
        }
        KeysCommand::Activate { kid } => {
            dir.activate(kid)?;
            eprintln!("{kid} is now the active key");
        }
        KeysCommand::Retire { kid } => {
            dir.retire(kid)?;
            eprintln!("retired {kid}: tokens it signed no longer verify");
        }
    }
    Ok(())
}
