//! `vm-tests`: boots the kernel matrix under QEMU with an initramfs holding `enforcerd` and the
//! guest runner, and turns what the guest reports into pass/fail.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use vm_tests::{catalog, host};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the scenarios on every kernel of the matrix (or the ones named), one boot per kernel.
    Test {
        /// A kernel of the matrix (debian12, debian13, sid) or a path to a bzImage; repeatable.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
        /// Run only this scenario; repeatable (see `vm-tests list`).
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// VMs to run at once (each uses one host core).
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Boot one kernel and show a narrated walk-through of enforcement on its console.
    Demo {
        /// A kernel of the matrix or a path to a bzImage.
        #[arg(long = "kernel", value_name = "NAME", default_value = "debian12")]
        kernel: String,
        #[command(flatten)]
        common: Common,
    },
    /// Benchmark: per-operation latency (median, p99) of open+close, fork+exec and TCP connect
    /// with no enforcement (a), enforcerd governing other cgroups (b), a realistic profile (c),
    /// the same with 10,000 file, 1,000 exec rules and 1,000 CIDRs (d), and AppArmor (e), as
    /// ratios to (a); one boot per kernel and clock. Tables go to <log-dir>/bench.md.
    Bench {
        /// A kernel of the matrix (debian12, debian13, sid) or a path to a bzImage; repeatable.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
        /// Which clocks to boot with; repeatable (default: icount, then wall).
        #[arg(long = "clock", value_name = "CLOCK")]
        clocks: Vec<host::bench::Clock>,
        /// Instruction-counted VMs to run at once (wall-clock VMs always run alone).
        #[arg(long, default_value_t = default_jobs())]
        jobs: usize,
        /// A twentieth of the iterations: checks that every case is set up and enforcing
        /// (the test suite runs this); the figures are not benchmark results.
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Install a .deb in a Debian 12 VM booted with systemd as init: the packaged service
    /// starts, enforces a signed profile on a unit, reports to the journal, runs hardened, and
    /// purging removes every trace and stops enforcement.
    Package {
        /// The package to test (tools/package builds it).
        #[arg(long, value_name = "FILE")]
        deb: PathBuf,
        /// A kernel of the matrix or a path to a bzImage.
        #[arg(long = "kernel", value_name = "NAME", default_value = "debian12")]
        kernel: String,
        /// The Debian mirror debootstrap builds the root filesystem from.
        #[arg(long, value_name = "URL", default_value = host::rootfs::DEFAULT_MIRROR)]
        mirror: String,
        /// Where `vm-guest` is (default: next to this executable).
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Where the kernels are (default: ~/.cache/enforcerd-dev/kernels, or $ENFORCERD_CACHE/kernels).
        #[arg(long, value_name = "DIR")]
        kernel_dir: Option<PathBuf>,
        /// Where the serial log goes (default: target/vm-tests).
        #[arg(long, value_name = "DIR")]
        log_dir: Option<PathBuf>,
        /// Time limit for the VM in seconds (the rootfs build is not counted).
        #[arg(long, value_name = "SECS", default_value_t = 900)]
        timeout: u64,
        /// Guest memory in MiB (the whole root filesystem lives in it).
        #[arg(long, value_name = "MIB", default_value_t = 2048)]
        memory: u32,
    },
    /// List the scenarios and the kernel matrix.
    List {
        #[arg(long, value_name = "DIR")]
        kernel_dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct Common {
    /// Where `enforcerd` and `vm-guest` are (default: next to this executable).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the kernels are (default: ~/.cache/enforcerd-dev/kernels, or $ENFORCERD_CACHE/kernels).
    #[arg(long, value_name = "DIR")]
    kernel_dir: Option<PathBuf>,
    /// Where serial logs go (default: target/vm-tests).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Per-VM time limit in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    memory: u32,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(2))
        .unwrap_or(1)
}

fn options(
    common: Common,
    kernels: Vec<String>,
    scenarios: Vec<String>,
    jobs: usize,
) -> host::Options {
    host::Options {
        kernels,
        scenarios,
        bin_dir: common.bin_dir,
        kernel_dir: common.kernel_dir.unwrap_or_else(host::default_kernel_dir),
        log_dir: common.log_dir.unwrap_or_else(host::default_log_dir),
        timeout: Duration::from_secs(common.timeout),
        jobs,
        memory_mb: common.memory,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Test {
            kernels,
            scenarios,
            jobs,
            common,
        } => {
            if let Err(e) = catalog::select(&scenarios) {
                eprintln!("vm-tests: {e}");
                return ExitCode::from(2);
            }
            host::test(&options(common, kernels, scenarios, jobs))
        }
        Cmd::Bench {
            kernels,
            clocks,
            jobs,
            quick,
            common,
        } => host::bench::bench(&host::bench::BenchOptions {
            host: options(common, kernels, vec![], jobs),
            clocks: if clocks.is_empty() {
                vec![host::bench::Clock::Icount, host::bench::Clock::Wall]
            } else {
                clocks
            },
            quick,
        }),
        Cmd::Demo { kernel, common } => host::demo(&options(common, vec![kernel], vec![], 1)),
        Cmd::Package {
            deb,
            kernel,
            mirror,
            bin_dir,
            kernel_dir,
            log_dir,
            timeout,
            memory,
        } => host::systemd_vm::package(&host::systemd_vm::PackageOptions {
            deb,
            kernel,
            kernel_dir: kernel_dir.unwrap_or_else(host::default_kernel_dir),
            bin_dir,
            log_dir: log_dir.unwrap_or_else(host::default_log_dir),
            timeout: Duration::from_secs(timeout),
            memory_mb: memory,
            mirror,
        }),
        Cmd::List { kernel_dir } => {
            println!("scenarios (one boot runs them all, in this order):");
            for s in catalog::SCENARIOS {
                println!("  {:<32} {}", s.name, s.about);
            }
            let dir = kernel_dir.unwrap_or_else(host::default_kernel_dir);
            println!("kernels:");
            for k in host::MATRIX {
                let (_, path) = host::resolve_kernel(k, &dir);
                let state = match std::fs::canonicalize(&path) {
                    Ok(p) => p.display().to_string(),
                    Err(_) => format!("missing ({}; run tools/setup)", path.display()),
                };
                println!("  {k:<10} {state}");
            }
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vm-tests: {e:#}");
            ExitCode::from(2)
        }
    }
}
