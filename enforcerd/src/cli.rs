//! The command line. Every subcommand is a thin call into the library.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::{
    control,
    daemon::{self, DecisionsTo, NodeDefault, OnStop, RunOptions},
    exit, paths, profile,
    report::{self, Decision},
    trust::{self, TrustPolicy, Verifier},
};

#[derive(Parser, Debug)]
#[command(
    name = "enforcerd",
    version,
    about = "Runtime security enforcement with BPF LSM",
    long_about = "enforcerd enforces per-workload profiles in the kernel: BPF LSM programs on \
                  exec (bprm_check_security, and mmap_file for the program a dynamic loader \
                  maps), file_open, socket_connect and socket_sendmsg (destinations given \
                  to sendto/sendmsg) find the calling \
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
    /// Run the daemon: load the profiles, enforce them, report each non-allow decision (one
    /// JSON line on stdout, or the journal under systemd). The programs are pinned under
    /// /sys/fs/bpf/enforcerd, so they keep enforcing if the daemon dies; a new daemon takes
    /// over with an overlap. SIGHUP reloads; SIGTERM or SIGINT stops the daemon and, by
    /// default, leaves the programs enforcing (see --on-stop).
    Run(RunArgs),
    /// Parse, validate and verify profile files without loading anything; exit 0 only if all
    /// pass. Each problem is printed as FILE:LINE:COLUMN: message.
    Check(CheckArgs),
    /// Show what the running daemon enforces and how it is doing (root only).
    Status(StatusArgs),
    /// Show the running daemon's recent decisions, one line each; --follow keeps streaming new
    /// ones (root only).
    Events(EventsArgs),
    /// Create a minisign-compatible key pair for signing profiles.
    Keygen(KeygenArgs),
    /// Sign profile files: writes FILE.sig next to each (minisign-compatible).
    Sign(SignArgs),
    /// Stop enforcing: unpin the programs a stopped daemon left attached (package removal
    /// runs this). Refused while a daemon is running: stop it first.
    Detach(DetachArgs),
    /// Print a completion script for SHELL on stdout.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (enforcerd.8 and enforcerd-COMMAND.8) into DIR.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
pub struct DetachArgs {
    /// Where the daemon pins its programs.
    #[arg(long, value_name = "DIR", default_value = paths::BPFFS_DIR)]
    pub pin_dir: PathBuf,
    /// The daemon's control socket (a daemon answering there refuses the detach).
    #[arg(long, value_name = "PATH", default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// After the recent decisions, keep printing new ones until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Print each decision as the daemon's exact JSON line (spec.md "Decisions"), for scripts.
    #[arg(long)]
    pub json: bool,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = paths::CONTROL_SOCKET)]
    pub socket: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600).
    #[arg(long, value_name = "FILE", default_value = "enforcerd.key")]
    pub secret_key: PathBuf,
    /// Where to write the public key: copy it into /etc/enforcerd/trusted.d/ on every node.
    #[arg(long, value_name = "FILE", default_value = "enforcerd.pub")]
    pub public_key: PathBuf,
    /// Read the password that encrypts the secret key from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "no_password")]
    pub password_file: Option<PathBuf>,
    /// Leave the secret key unencrypted (like `minisign -G -W`).
    #[arg(long)]
    pub no_password: bool,
    /// Overwrite existing key files.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The secret key (from `enforcerd keygen` or `minisign -G`).
    #[arg(long, value_name = "SECRET")]
    pub key: PathBuf,
    /// Read the secret key's password from this file (first line); omit for an unencrypted key.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Profile files to sign.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
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
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9478). Off by default;
    /// the endpoint has no authentication, so bind it to loopback or a node-internal address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Fold identical decisions (same cgroup, profile, hook, target and access) less than this
    /// many milliseconds apart into one summary line with a count; 0 reports each one
    /// [default: 1000]
    #[arg(long, value_name = "MS")]
    pub aggregate_window: Option<u64>,
    /// Decision lines the daemon keeps in memory for `enforcerd events` [default: 1000]
    #[arg(long, value_name = "LINES")]
    pub history: Option<usize>,
    /// Where decision lines go: `auto` is the journal when started by systemd, else stdout
    /// [default: auto]
    #[arg(long, value_name = "WHERE")]
    pub decisions: Option<DecisionsTo>,
    /// Kubernetes nodes: what governs a pod cgroup that appears before its pod is known —
    /// `audit` reports its execs, `deny-exec` denies them, `none` leaves it alone
    /// [default: audit]
    #[arg(long, value_name = "POLICY")]
    pub node_default: Option<NodeDefault>,
    /// What SIGTERM (`systemctl stop`) does to enforcement: `keep` leaves the pinned programs
    /// enforcing the last applied profiles until a new daemon takes over or `enforcerd
    /// detach` runs; `detach` unpins them, so enforcement stops with the daemon
    /// [default: keep]
    #[arg(long, value_name = "WHAT")]
    pub on_stop: Option<OnStop>,
    /// Where programs, links and maps are pinned (a directory on a BPF filesystem)
    /// [default: /sys/fs/bpf/enforcerd]
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Directory of trusted minisign public keys [default: /etc/enforcerd/trusted.d]
    #[arg(long, value_name = "DIR")]
    pub trusted_keys: Option<PathBuf>,
    /// Development only: do not require signatures.
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Print one JSON object per file: {"file", "ok", "profile", "serial", "sha256", "problems"}.
    #[arg(long)]
    pub json: bool,
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
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Milliseconds.
    pub aggregate_window: Option<u64>,
    pub history: Option<usize>,
    pub decisions: Option<DecisionsTo>,
    pub node_default: Option<NodeDefault>,
    pub on_stop: Option<OnStop>,
    pub pin_dir: Option<PathBuf>,
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
            return exit::code(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            });
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
        Command::Status(args) => status(&args),
        Command::Events(args) => events(&args),
        Command::Keygen(args) => keygen(&args),
        Command::Sign(args) => sign(&args),
        Command::Detach(args) => detach(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "enforcerd", &mut std::io::stdout());
            exit::SUCCESS
        }
        Command::Manpages { dir } => match write_manpages(&dir) {
            Ok(()) => exit::SUCCESS,
            Err(e) => {
                tracing::error!("cannot write man pages into {}: {e}", dir.display());
                exit::REFUSED
            }
        },
    })
}

fn detach(args: &DetachArgs) -> u8 {
    if std::os::unix::net::UnixStream::connect(&args.socket).is_ok() {
        tracing::error!(
            "a daemon is running (it answers on {}): stop it first (systemctl stop enforcerd); \
             with --on-stop keep it leaves the programs pinned for this command",
            args.socket.display()
        );
        return exit::REFUSED;
    }
    match crate::kernel::pins::retire_all(&args.pin_dir) {
        Ok(0) => {
            println!("nothing pinned under {}", args.pin_dir.display());
            exit::SUCCESS
        }
        Ok(n) => {
            println!(
                "unpinned {n} generation(s) from {}: enforcement has stopped",
                args.pin_dir.display()
            );
            exit::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            exit::CANNOT_ENFORCE
        }
    }
}

/// enforcerd.8 and one page per subcommand (enforcerd-run.8, ...), from the same definitions
/// as `--help`.
fn write_manpages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let command = <Cli as clap::CommandFactory>::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("8")
        .render(&mut page)?;
    std::fs::write(dir.join("enforcerd.8"), page)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("enforcerd-{}", sub.get_name());
        let sub = sub.clone().name(name.clone());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub).section("8").render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.8")), page)?;
    }
    Ok(())
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
    let opts = RunOptions {
        metrics_address: args.metrics_address.or(config.metrics_address),
        aggregation_window: args
            .aggregate_window
            .or(config.aggregate_window)
            .map_or(daemon::DEFAULT_AGGREGATION_WINDOW, Duration::from_millis),
        history: args
            .history
            .or(config.history)
            .unwrap_or(daemon::DEFAULT_HISTORY),
        decisions_to: args.decisions.or(config.decisions).unwrap_or_default(),
        node_default: args
            .node_default
            .or(config.node_default)
            .unwrap_or_default(),
        on_stop: args.on_stop.or(config.on_stop).unwrap_or_default(),
        pin_dir: args
            .pin_dir
            .or(config.pin_dir)
            .unwrap_or_else(|| paths::BPFFS_DIR.into()),
        ..RunOptions::new(
            args.profiles
                .or(config.profiles)
                .unwrap_or_else(|| paths::PROFILES_DIR.into()),
            args.audit || config.audit,
            TrustPolicy::new(args.allow_unsigned || config.allow_unsigned, trusted_keys),
        )
    };
    daemon::run(opts)
}

/// The result of checking one file.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FileCheck {
    pub file: String,
    pub ok: bool,
    pub profile: Option<String>,
    pub serial: Option<u64>,
    pub sha256: Option<String>,
    pub problems: Vec<String>,
}

/// Checks every file completely: the signature and the content are checked independently, so
/// a file with a bad signature and a bad rule reports both.
pub fn check_files(files: &[PathBuf], policy: &TrustPolicy) -> Vec<FileCheck> {
    let verifier = Verifier::new(policy);
    let mut names: std::collections::HashMap<String, PathBuf> = Default::default();
    files
        .iter()
        .map(|file| {
            let mut c = FileCheck {
                file: file.display().to_string(),
                ok: false,
                profile: None,
                serial: None,
                sha256: None,
                problems: vec![],
            };
            let bytes = match std::fs::read(file) {
                Ok(b) => b,
                Err(e) => {
                    c.problems.push(format!("{}: {e}", file.display()));
                    return c;
                }
            };
            match &verifier {
                Ok(v) => {
                    if let Err(d) = v.verify(file, &bytes) {
                        c.problems.push(d.to_string());
                    }
                }
                Err(d) => c.problems.push(d.to_string()),
            }
            match profile::parse(file, &bytes) {
                Ok(p) => {
                    if let Some(first) = names.get(&p.name) {
                        c.problems
                            .push(profile::duplicate_name(first, &p, &bytes).to_string());
                    } else {
                        names.insert(p.name.clone(), file.clone());
                    }
                    c.profile = Some(p.name);
                    c.serial = Some(p.serial);
                    c.sha256 = Some(p.sha256);
                }
                Err(d) => c.problems.push(d.to_string()),
            }
            c.ok = c.problems.is_empty();
            c
        })
        .collect()
}

fn check(args: &CheckArgs) -> u8 {
    let policy = TrustPolicy::new(
        args.allow_unsigned,
        args.trusted_keys
            .clone()
            .unwrap_or_else(|| paths::TRUSTED_KEYS_DIR.into()),
    );
    let results = check_files(&args.files, &policy);
    for r in &results {
        if args.json {
            println!("{}", serde_json::to_string(r).expect("serializable"));
        } else if r.ok {
            println!(
                "{}: ok (profile {}, serial {}, {})",
                r.file,
                r.profile.as_deref().unwrap_or(""),
                r.serial.unwrap_or(0),
                r.sha256.as_deref().unwrap_or("")
            );
        } else {
            for p in &r.problems {
                eprintln!("{p}");
            }
        }
    }
    if results.iter().all(|r| r.ok) {
        exit::SUCCESS
    } else {
        exit::REFUSED
    }
}

fn status(args: &StatusArgs) -> u8 {
    match control::query(&args.socket, &control::Request::Status) {
        Ok(control::Response::Status(s)) => {
            if args.json {
                println!("{}", serde_json::to_string(&s).expect("serializable"));
            } else {
                print!("{}", control::render(&s));
            }
            exit::SUCCESS
        }
        Ok(other) => {
            eprintln!("enforcerd status: unexpected answer {other:?}");
            exit::REFUSED
        }
        Err(e) => {
            eprintln!("enforcerd status: {e}");
            exit::REFUSED
        }
    }
}

fn events(args: &EventsArgs) -> u8 {
    use std::io::Write as _;
    let colour = report::render::colour(&std::io::stdout());
    let mut out = std::io::stdout().lock();
    let result = control::events(&args.socket, args.follow, |line| {
        let written = match line {
            control::EventLine::Lagged(n) => {
                eprintln!("enforcerd events: missed {n} decisions (reading too slowly)");
                Ok(())
            }
            control::EventLine::Decision(json) if args.json => writeln!(out, "{json}"),
            control::EventLine::Decision(json) => match serde_json::from_str::<Decision>(&json) {
                Ok(d) => writeln!(out, "{}", report::render::line(&d, colour)),
                Err(_) => writeln!(out, "{json}"),
            },
        };
        // Stop quietly when the reader (e.g. `head`) goes away.
        written.and_then(|()| out.flush()).is_ok()
    });
    match result {
        Ok(()) => exit::SUCCESS,
        Err(e) => {
            eprintln!("enforcerd events: {e}");
            exit::REFUSED
        }
    }
}

/// The first line of a password file.
fn read_password(file: Option<&Path>) -> Result<Option<String>, String> {
    let Some(file) = file else { return Ok(None) };
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Some(text.lines().next().unwrap_or("").to_owned()))
}

fn keygen(args: &KeygenArgs) -> u8 {
    let password = match (
        args.no_password,
        read_password(args.password_file.as_deref()),
    ) {
        (_, Err(e)) => {
            eprintln!("enforcerd keygen: {e}");
            return exit::REFUSED;
        }
        (true, Ok(_)) => None,
        (false, Ok(None)) => {
            eprintln!(
                "enforcerd keygen: give --password-file FILE to encrypt the secret key, or --no-password"
            );
            return exit::USAGE;
        }
        (false, Ok(p)) => p,
    };
    match trust::keygen(
        &args.secret_key,
        &args.public_key,
        password.as_deref(),
        args.force,
    ) {
        Ok(id) => {
            println!(
                "key {id}: secret key {}, public key {} (install it in {})",
                args.secret_key.display(),
                args.public_key.display(),
                paths::TRUSTED_KEYS_DIR
            );
            exit::SUCCESS
        }
        Err(e) => {
            eprintln!("enforcerd keygen: {e}");
            exit::REFUSED
        }
    }
}

fn sign(args: &SignArgs) -> u8 {
    let password = match read_password(args.password_file.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("enforcerd sign: {e}");
            return exit::REFUSED;
        }
    };
    let mut code = exit::SUCCESS;
    for file in &args.files {
        match trust::sign(&args.key, password.as_deref(), file) {
            Ok(sig) => println!("{}: signed ({})", file.display(), sig.display()),
            Err(e) => {
                eprintln!("enforcerd sign: {}: {e}", file.display());
                code = exit::REFUSED;
            }
        }
    }
    code
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
        std::fs::write(
            &f,
            "profiles: /p\ntrustedKeys: /k\naudit: true\nallowUnsigned: true\n\
             metricsAddress: 127.0.0.1:9478\naggregateWindow: 250\nhistory: 50\ndecisions: journal\nnodeDefault: deny-exec\n\
             onStop: detach\npinDir: /sys/fs/bpf/other\n",
        )
        .unwrap();
        let c = Config::load(Some(&f)).unwrap();
        assert_eq!(
            c,
            Config {
                profiles: Some("/p".into()),
                trusted_keys: Some("/k".into()),
                audit: true,
                allow_unsigned: true,
                metrics_address: Some("127.0.0.1:9478".parse().unwrap()),
                aggregate_window: Some(250),
                history: Some(50),
                decisions: Some(DecisionsTo::Journal),
                node_default: Some(NodeDefault::DenyExec),
                on_stop: Some(OnStop::Detach),
                pin_dir: Some("/sys/fs/bpf/other".into()),
            }
        );
        std::fs::write(&f, "profiles: /p\nprofile: /q\n").unwrap();
        let e = Config::load(Some(&f)).unwrap_err();
        assert!(
            e.starts_with(&format!("{}:2:1: unknown field `profile`", f.display())),
            "{e}"
        );
    }

    #[test]
    fn detach_is_refused_while_a_daemon_answers_and_succeeds_with_nothing_pinned() {
        let d = tempfile::tempdir().unwrap();
        let socket = d.path().join("enforcerd.sock");
        let args = DetachArgs {
            pin_dir: d.path().join("pins"),
            socket: socket.clone(),
        };
        assert_eq!(detach(&args), exit::SUCCESS);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::fs::create_dir(&args.pin_dir).unwrap();
        assert_eq!(detach(&args), exit::REFUSED);
        assert!(args.pin_dir.exists(), "a refused detach unpins nothing");
    }

    #[test]
    fn man_pages_cover_every_visible_command() {
        let d = tempfile::tempdir().unwrap();
        write_manpages(d.path()).unwrap();
        for page in ["enforcerd.8", "enforcerd-run.8", "enforcerd-detach.8"] {
            let text = std::fs::read_to_string(d.path().join(page)).unwrap();
            assert!(text.contains(".TH"), "{page}");
        }
        assert!(!d.path().join("enforcerd-manpages.8").exists());
        let run = std::fs::read_to_string(d.path().join("enforcerd-run.8")).unwrap();
        assert!(run.contains("on\\-stop"), "{run}");
    }

    #[test]
    fn explicit_config_must_exist_default_may_not() {
        let e = Config::load(Some(Path::new("/nonexistent/enforcerd.yaml"))).unwrap_err();
        assert!(e.starts_with("/nonexistent/enforcerd.yaml: "), "{e}");
    }
}
