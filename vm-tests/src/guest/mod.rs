//! `vm-guest`: runs inside the VM as a child of `/init`, single-threaded.
//!
//! `vm-guest test [--scenarios a,b]` runs the scenarios and prints the protocol lines of
//! [`crate::protocol`]; `vm-guest demo` prints a narrated walk-through for a human.

pub mod bench;
pub mod daemon;
pub mod demo;
pub mod fixtures;
pub mod kube_api;
pub mod out;
pub mod package;
pub mod scenarios;
pub mod sys;

use crate::catalog;
use crate::protocol::{Event, GuestStart};
use clap::{Parser, Subcommand};
use out::{Ctx, emit, say};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Runs enforcerd's VM scenarios (inside the test VM)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the scenarios, printing one @@RESULT line per check.
    Test {
        /// Comma-separated scenario names (default: all).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
    },
    /// A narrated walk-through of enforcement for a human reading the console.
    Demo,
    /// Install, exercise and purge the packaged enforcer under systemd (see `package`).
    Package {
        /// The .deb to install.
        #[arg(long)]
        deb: std::path::PathBuf,
    },
    /// Run the benchmark cases (`vm-tests bench`), printing one @@BENCH line per case and
    /// operation.
    Bench {
        /// A twentieth of the runs: proves every case is set up and enforcing, quickly.
        #[arg(long)]
        quick: bool,
    },
    /// One benchmark loop, run by `bench` in the case's cgroup: prints its figures as JSON.
    BenchWorker {
        op: String,
        #[arg(long)]
        quick: bool,
    },
    /// Open and read a file; print what happened and exit with the errno (0: read it).
    Open { path: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = match &cli.mode {
        Mode::Test { .. } => "test",
        Mode::Demo => "demo",
        Mode::Package { .. } => "package",
        Mode::Bench { .. } => "bench",
        // A probe or a loop inside a workload: no protocol lines.
        Mode::Open { path } => return ExitCode::from(package::open_probe(path)),
        Mode::BenchWorker { op, quick } => return ExitCode::from(bench::worker(op, *quick)),
    };
    emit(&Event::GuestStart(GuestStart {
        kernel: sys::uname_release(),
        mode: mode.into(),
    }));
    let code = match cli.mode {
        Mode::Test { scenarios } => run_tests(&scenarios),
        Mode::Demo => demo::run(),
        Mode::Package { deb } => package::run_all(&deb),
        Mode::Bench { quick } => bench::run(quick),
        Mode::Open { .. } | Mode::BenchWorker { .. } => unreachable!("handled above"),
    };
    ExitCode::from(code)
}

fn run_tests(filter: &[String]) -> u8 {
    let selected = match catalog::select(filter) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("vm-guest: {e}"));
            emit(&Event::Done("failed".into()));
            return 2;
        }
    };
    let mut failed = 0;
    for s in selected {
        emit(&Event::ScenarioStart(s.name.into()));
        let started = Instant::now();
        let mut ctx = Ctx::new(s.name);
        ctx.run_recording_abort(
            "(scenario aborted)",
            "the scenario runs to its end",
            |ctx| scenarios::run(s.name, ctx),
        );
        ctx.note(&format!(
            "{} passed, {} failed in {:.1} s",
            ctx.passed,
            ctx.failed,
            started.elapsed().as_secs_f64()
        ));
        failed += ctx.failed;
        emit(&Event::ScenarioEnd(s.name.into()));
    }
    emit(&Event::Done(
        if failed == 0 { "ok" } else { "failed" }.into(),
    ));
    u8::from(failed > 0)
}
