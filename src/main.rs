//! `qis`: the command line of qis_ros.

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Outcome memory for robot world models.
#[derive(Debug, Parser)]
#[command(name = "qis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulates a fleet whose world model is biased per scenario and compares the qis
    /// corrected prior with the raw model, local-only learning and a central oracle.
    Sim(qis_ros::sim::cli::SimArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Sim(args) => {
            qis_ros::sim::cli::run(&args)?;
        }
    }
    Ok(())
}
