//! The command line. Every subcommand is a thin call into the library.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use serde::Deserialize;

use crate::{
    daemon::{self, RunOptions},
    exit, paths, profile,
    trust::{self, TrustPolicy},
};

#[derive(Parser, Debug)]
#[command(
    name = "enforcerd",
    version,
    about = "Runtime security enforcement with BPF LSM",
    long_about = "enforcerd enforces per-workload profiles in the kernel: BPF LSM programs on \
                  exec (bprm_check_security), file_open and socket_connect find the calling \
                  task's profile by its cgroup and deny (EPERM) or kill (SIGKILL) what the \
                  profile forbids, before the action completes.\n\n\
                  Exit codes: 0 success, 1 a refused input (bad profile, bad signature), \
                  2 usage error, 3 the kernel cannot enforce (no BPF LSM, no BTF, not root)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: load the profiles, enforce them, print each non-allow decision as one
    /// JSON line on stdout. SIGTERM or SIGINT detaches the programs and exits.
    Run(RunArgs),
    /// Parse, validate and verify profile files without loading anything; exit 0 only if all
    /// pass. Each problem is printed as FILE:LINE:COLUMN: message.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Daemon configuration (YAML). Every key has a flag; the flag wins.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of profile YAML files [default: /etc/enforcerd/profiles.d]
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// Directory of trusted minisign public keys [default: /etc/enforcerd/trusted.d]
    #[arg(long, value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
    /// Global dry run: every profile in audit mode (report, never block).
    #[arg(long)]
    pub audit: bool,
    /// Development only: apply profiles without signature verification (warned at every load).
    #[arg(long)]
    pub allow_unsigned: bool,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Directory of trusted minisign public keys [default: /etc/enforcerd/trusted.d]
    #[arg(long, value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
    /// Development only: do not require signatures.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Profile files to check.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// `/etc/enforcerd/enforcerd.yaml`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub profiles: Option<PathBuf>,
    pub trusted_keys: Option<PathBuf>,
    #[serde(default)]
    pub audit: bool,
    #[serde(default)]
    pub allow_unsigned: bool,
}

impl Config {
    /// Reads the config file. An explicitly named file must exist; the default may be absent.
    pub fn load(explicit: Option<&Path>) -> Result<Config, String> {
        let path = explicit.unwrap_or(Path::new(paths::CONFIG_FILE));
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(&text).map_err(|e| match e.location() {
            Some(l) => format!("{}:{}:{}: {e}", path.display(), l.line(), l.column()),
            None => format!("{}: {e}", path.display()),
        })
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return exit::code(if e.use_stderr() { exit::USAGE } else { exit::SUCCESS });
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENFORCERD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    exit::code(match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(&args),
    })
}

fn run(args: RunArgs) -> u8 {
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return exit::REFUSED;
        }
    };
    let trusted_keys = args
        .trusted_keys
        .or(config.trusted_keys)
        .unwrap_or_else(|| paths::TRUSTED_KEYS_DIR.into());
    daemon::run(RunOptions {
        profiles_dir: args
            .profiles
            .or(config.profiles)
            .unwrap_or_else(|| paths::PROFILES_DIR.into()),
        audit: args.audit || config.audit,
        trust: TrustPolicy::new(args.allow_unsigned || config.allow_unsigned, trusted_keys),
        cgroup_root: paths::CGROUP2_MOUNT.into(),
    })
}

/// Checks every file and reports every problem of every file.
fn check(args: &CheckArgs) -> u8 {
    let policy = TrustPolicy::new(
        args.allow_unsigned,
        args.trusted_keys
            .clone()
            .unwrap_or_else(|| paths::TRUSTED_KEYS_DIR.into()),
    );
    let mut failed = 0;
    let mut names: std::collections::HashMap<String, PathBuf> = Default::default();
    for file in &args.files {
        let result = profile::load_file(file).and_then(|p| {
            trust::verify(&policy, file)?;
            if let Some(first) = names.get(&p.name) {
                let bytes = std::fs::read(file).unwrap_or_default();
                return Err(profile::duplicate_name(first, &p, &bytes));
            }
            names.insert(p.name.clone(), file.clone());
            Ok(p)
        });
        match result {
            Ok(p) => println!("{}: ok (profile {}, serial {}, {})", file.display(), p.name, p.serial, p.sha256),
            Err(d) => {
                eprintln!("{d}");
                failed += 1;
            }
        }
    }
    if failed > 0 { exit::REFUSED } else { exit::SUCCESS }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_keys_parse_and_unknown_keys_are_refused_with_position() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "profiles: /p\ntrustedKeys: /k\naudit: true\nallowUnsigned: true\n").unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(
            c,
            Config { profiles: Some("/p".into()), trusted_keys: Some("/k".into()), audit: true, allow_unsigned: true }
        );
        std::fs::write(&f, "profiles: /p\nprofile: /q\n").unwrap();
        let e = Config::load(Some(&f)).unwrap_err();
        assert!(e.starts_with(&format!("{}:2:1: unknown field `profile`", f.display())), "{e}");
    }

    #[test]
    fn explicit_config_must_exist_default_may_not() {
        let e = Config::load(Some(Path::new("/nonexistent/enforcerd.yaml"))).unwrap_err();
        assert!(e.starts_with("/nonexistent/enforcerd.yaml: "), "{e}");
    }
}
