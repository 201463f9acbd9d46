//! The `batch-worker` binary: parses the command line, sets up logging, and
//! runs the subcommand ([`batch_worker::cli::run`]), which returns the exit
//! status.

use std::process::ExitCode;

use batch_worker::cli::{self, Command, LogFormat};
use batch_worker::config::{self, ConfigError};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // `batch-worker shim ATTEMPT_DIR`: a job's shim (see
    // batch_worker::shim), started by `serve`; before any runtime, flag or
    // configuration is read.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "shim" {
        let code = batch_worker::shim::main(std::path::Path::new(&args[2]));
        return ExitCode::from(code as u8);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let (cli, effective) = match config::parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    match cli::run(cli.command, &effective).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            e.exit_code()
        }
    }
}

/// `e` and, after `: `, each cause its message does not already include
/// (so that an error quoting its source does not print it twice).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
