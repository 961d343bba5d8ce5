//! `ratchet`: parse the command line, set up logging, run the chosen subcommand.

use std::process::ExitCode;

use clap::Parser as _;
use ratchet::cli::{Cli, Command};
use ratchet::config::{Config, DatabaseConfig, GcConfig};
use ratchet::startup::{self, Application};
use ratchet::{shutdown, telemetry};

/// EX_USAGE from sysexits.h: the configuration is wrong, retrying will not help.
const EX_USAGE: u8 = 64;

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
        Command::Migrate(args) => match DatabaseConfig::from_args(&args) {
            Ok(database) => runtime.block_on(startup::migrate(&database)),
            Err(problems) => return usage(&problems),
        },
        Command::Gc(args) => match GcConfig::from_args(&args) {
            Ok(config) => runtime.block_on(gc(config)),
            Err(problems) => return usage(&problems),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
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
    println!(
        "removed {} families and {} refresh tokens; cleared {} expired seals",
        report.families, report.tokens, report.seals
    );
    Ok(())
}

fn usage(problems: &[String]) -> ExitCode {
    for problem in problems {
        eprintln!("error: {problem}");
    }
    ExitCode::from(EX_USAGE)
}
