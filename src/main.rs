//! The `batch-worker` binary: parses the command line and runs it.

use anyhow::Context;
use batch_worker::api::{ApiConfig, ApiToken};
use batch_worker::cli::{
    advertised_ip, build_worker, Command, ImageCommand, LogFormat, SpecCommand, StartError,
};
use batch_worker::config::{self, ConfigError};
use batch_worker::store::redact_url;
use batch_worker::{demo, replay, server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            // A flag's value that cannot work is a usage error, like a
            // flag clap refuses.
            match e.downcast_ref::<StartError>() {
                Some(StartError::Invalid(_)) => std::process::ExitCode::from(2),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// `e` and, after `: `, each cause its message does not already include
/// (so that an error quoting its source does not print it twice).
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

async fn run() -> anyhow::Result<()> {
    let (cli, effective) = match config::parse(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(ConfigError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        Command::Config(_) => "warn",
        Command::Demo(_) | Command::Replay(_) | Command::Spec { .. } | Command::Image { .. } => {
            "warn"
        }
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
    match cli.command {
        Command::Serve(args) => {
            let api_config = ApiConfig {
                api_token: args
                    .api_token_file
                    .as_deref()
                    .map(ApiToken::from_file)
                    .transpose()?,
                ..ApiConfig::new(args.max_body_bytes)
            };
            let worker = build_worker(&args)?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            tracing::info!(
                listen = %listener.local_addr()?,
                name = worker.name(),
                data_dir = %args.data_dir.display(),
                spec_store = args.spec_store.as_ref().map_or_else(|| format!("file://{}", args.data_dir.join("specs").display()), redact_url),
                logs_store = args.logs_store.as_ref().map_or_else(|| format!("file://{}", args.data_dir.join("logs").display()), redact_url),
                driver_url = args.driver_url.as_ref().map_or("none (no reports)".into(), redact_url),
                api_auth = if api_config.api_token.is_some() { "bearer token" } else { "none" },
                executor = ?args.executor.executor,
                "batch-worker serving"
            );
            // Credentials' values are masked.
            let options = args.store_options()?;
            tracing::info!(options = ?options, "store options (environment, then --store-options)");
            let ip_address = advertised_ip(
                listener.local_addr()?.ip(),
                args.ip_address,
                args.driver_url.as_ref(),
            )?
            .to_string();
            let activating = worker.clone();
            tokio::spawn(async move {
                if let Err(e) = activating.activate(&ip_address).await {
                    tracing::error!(error = %e, "activation with the driver failed; creates are refused (503)");
                }
            });
            server::serve(listener, worker, api_config, shutdown_signals()).await?;
            Ok(())
        }
        Command::Config(_) => {
            print!("{}", effective.render());
            Ok(())
        }
        Command::Replay(args) => {
            let options = replay::ReplayOptions {
                job: args.job,
                until: args.until,
                ..Default::default()
            };
            let report = replay::replay_path(&args.path, options)?;
            if let (Some((batch_id, job_id)), true) = (args.job, report.timelines.is_empty()) {
                eprintln!("no attempt of job {batch_id}:{job_id} in the journal");
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            if args.check && !report.problems.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Spec {
            command: SpecCommand::Show(args),
        } => {
            let diagnosis = args.diagnose().await?;
            println!("store  {}", redact_url(&args.store));
            print!("{}", diagnosis.render());
            if !diagnosis.is_good() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Image {
            command: ImageCommand::Pull(args),
        } => {
            let pulled = args.pull().await;
            if args.json {
                println!("{}", serde_json::to_string(&args.report(&pulled))?);
            } else {
                match &pulled {
                    Ok((image, downloaded)) => println!(
                        "{} {}\n  digest  {}\n  rootfs  {}",
                        if *downloaded { "pulled" } else { "cached" },
                        image.reference,
                        image.digest,
                        image.rootfs.display()
                    ),
                    Err(e) => eprintln!("error: {}: {e}", args.reference),
                }
            }
            if pulled.is_err() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Demo(args) => {
            let report = demo::run(&args).await?;
            print!("{}", report.render());
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Completes on the first SIGINT or SIGTERM (graceful shutdown); a second
/// one exits the process at once, with status 1.
fn shutdown_signals() -> impl std::future::Future<Output = ()> {
    let (first, received) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("installing a SIGINT handler");
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received: shutting down; a second SIGTERM or SIGINT exits at once");
        let _ = first.send(());
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::warn!("second signal: exiting now without draining");
        std::process::exit(1);
    });
    async move {
        let _ = received.await;
    }
}
