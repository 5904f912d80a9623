//! `fusion-sim`: the instance simulator from the command line (the crate doc describes the
//! simulated world and its checks).
//!
//! * `fusion-sim replay SEED` — runs one seed, printing every step of its trace, then its
//!   counters (a failure panics with what broke); with `--membership`, the seed's membership
//!   world (real nodes: core, cluster manager with Disk Paxos, recovery lifecycle; under
//!   cuts, pauses, stalls, kills).
//! * `fusion-sim seeds A..B` — runs seeds `A` to `B - 1` (each in both worlds) on a few threads; stops at the first
//!   failing seed, prints it with its replay command and exits with status 1. With
//!   `--membership`, only the membership world runs, past failures: it prints every failing
//!   seed (a sweep) and exits with status 1 if there was one.
//! * `fusion-sim soak --minutes N [--start S]` — runs consecutive seeds from `S` (default
//!   1,000,000, past CI's) for `N` minutes and prints the totals; a failing seed ends it as
//!   with `seeds`.
//!
//! Build it with `--release`: a debug build is several times slower.

use clap::{Parser, Subcommand};
use sim::{Sim, SimConfig, run_seeds, summary};
use std::ops::Range;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "fusion-sim",
    about = "The Fusion instance simulator: replay, seeds, soak"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one seed, printing every step.
    Replay {
        /// The seed to replay.
        seed: u64,
        /// Replay the membership world (nodes: core, cluster manager, Disk Paxos) of the
        /// seed instead of the instance world.
        #[arg(long)]
        membership: bool,
    },
    /// Run a range of seeds (`A..B`, B excluded); stop at the first failure.
    Seeds {
        /// The seeds, as `A..B`.
        #[arg(value_parser = parse_range)]
        range: Range<u64>,
        /// Run only the membership world, on past failures, and list every failing seed.
        #[arg(long)]
        membership: bool,
    },
    /// Run consecutive seeds for a while and print the totals.
    Soak {
        /// How long to run, in minutes.
        #[arg(long)]
        minutes: u64,
        /// The first seed.
        #[arg(long, default_value_t = 1_000_000)]
        start: u64,
    },
}

/// Parses `A..B` with `A <= B`.
fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not a range A..B"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|e| format!("`{s}` in `{text}`: {e}"))
    };
    let (start, end) = (parse(start)?, parse(end)?);
    if start > end {
        return Err(format!("`{text}`: the start is past the end"));
    }
    Ok(start..end)
}

/// Runs `seeds` (until `deadline`, if any) and prints the totals or the first failing seed.
fn run(label: &str, seeds: Range<u64>, deadline: Option<Instant>) -> ExitCode {
    let began = Instant::now();
    match run_seeds(seeds, deadline) {
        Ok(run) => {
            println!("{}", summary(label, run.seeds, &run.total, began.elapsed()));
            println!("{label}: membership world: {:?}", run.membership);
            ExitCode::SUCCESS
        }
        Err(failed) => {
            let seed = failed[0];
            eprintln!(
                "{label}: seed {seed} failed (failing: {failed:?}); replay: cargo run --release -p sim --bin fusion-sim -- replay {seed}"
            );
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Replay {
            seed,
            membership: true,
            ..
        } => {
            println!("{:?}", sim::run_membership_seed(seed, true));
            ExitCode::SUCCESS
        }
        Command::Replay { seed, .. } => {
            let cfg = SimConfig::from_seed(seed);
            println!("replaying {cfg:?}");
            let began = Instant::now();
            let mut sim = Sim::new(cfg).printing_trace();
            sim.run();
            println!("{}", summary("replay", 1, &sim.stats, began.elapsed()));
            ExitCode::SUCCESS
        }
        Command::Seeds {
            range,
            membership: true,
            ..
        } => {
            let began = Instant::now();
            let seeds = range.end - range.start;
            let run = sim::run_membership_seeds(range);
            println!(
                "membership seeds: {} of {seeds} passed in {:.1?}: {:?}",
                run.passed,
                began.elapsed(),
                run.total
            );
            if run.failed.is_empty() {
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "membership seeds failed: {:?}; replay one: cargo run --release -p sim --bin fusion-sim -- replay --membership SEED",
                run.failed
            );
            ExitCode::FAILURE
        }
        Command::Seeds { range, .. } => run("seeds", range, None),
        Command::Soak { minutes, start } => {
            let deadline = Instant::now() + Duration::from_secs(minutes.saturating_mul(60));
            run("soak", start..u64::MAX, Some(deadline))
        }
    }
}
