//! Profiles: the YAML documents (`apiVersion: enforcerd/v1`, `kind: Profile`) that say what a
//! workload may execute, open and connect to.
//!
//! [`parse`] turns a file's bytes into a validated [`Profile`] or a [`Diagnostic`] of the form
//! `FILE:LINE:COLUMN: message`. Every check that concerns a single value (a path, a name, a
//! CIDR, a port) runs while that value is deserialized, so its diagnostic points at the value;
//! checks that relate several values (a path both allowed and denied, two file rules for the
//! same access) run afterwards and point at the later of the values involved.
//!
//! Nothing here touches the kernel; [`crate::compile`] turns a `Profile` into map entries.

mod de;
mod locate;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use locate::{Seg, locate};

/// The only `apiVersion` this version reads.
pub const API_VERSION: &str = "enforcerd/v1";
/// The only `kind` this version reads.
pub const KIND: &str = "Profile";

/// Longest exact rule path in bytes: the key stores it followed by a NUL terminator.
pub const MAX_EXACT_PATH_BYTES: usize = enforcerd_common::RULE_PATH_BYTES - 1;
/// Longest subtree rule path in bytes, trailing `/` included (stored without terminator).
pub const MAX_SUBTREE_PATH_BYTES: usize = enforcerd_common::RULE_PATH_BYTES;

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The file it came from.
    pub source: PathBuf,
    /// `sha256:<hex>` of the file's exact bytes: the profile's identity in reports.
    pub sha256: String,
    /// `metadata.name`, a DNS-1123 label.
    pub name: String,
    /// `metadata.serial`.
    pub serial: u64,
    pub selector: Selector,
    pub mode: Mode,
    pub on_violation: OnViolation,
    pub exec: ExecPolicy,
    pub files: FilePolicy,
    pub network: NetworkPolicy,
}

impl Profile {
    /// The same profile in audit mode (dry run): `enforcerd run --audit`.
    pub fn with_audit(mut self) -> Self {
        self.mode = Mode::Audit;
        self
    }
}

/// Which cgroups a profile governs (`spec.selector`, exactly one kind).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// A cgroup v2 path below the cgroup2 mount, absolute and normalized, e.g.
    /// `/system.slice/nginx.service`; `/` is the root cgroup.
    Cgroup(String),
    /// Every cgroup whose directory is named after this systemd unit, e.g. `nginx.service`.
    SystemdUnit(String),
    /// The pod-level cgroups of matching pods (with `container`, that container's cgroup).
    Kubernetes {
        namespace: String,
        pod_labels: BTreeMap<String, String>,
        container: Option<String>,
    },
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Cgroup(path) => write!(f, "cgroup {path}"),
            Selector::SystemdUnit(unit) => write!(f, "systemd unit {unit}"),
            Selector::Kubernetes {
                namespace,
                pod_labels,
                container,
            } => {
                write!(f, "kubernetes namespace {namespace} pods")?;
                for (i, (k, v)) in pod_labels.iter().enumerate() {
                    write!(f, "{}{k}={v}", if i == 0 { " " } else { "," })?;
                }
                if let Some(c) = container {
                    write!(f, " container {c}")?;
                }
                Ok(())
            }
        }
    }
}

/// `spec.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Block what the profile denies.
    #[default]
    Enforce,
    /// Dry run: report what would have been blocked, never block.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// `spec.onViolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Refuse the operation (`EPERM`).
    #[default]
    Deny,
    /// `SIGKILL` the offending process, and refuse the operation.
    Kill,
}

impl OnViolation {
    pub fn as_str(self) -> &'static str {
        match self {
            OnViolation::Deny => "deny",
            OnViolation::Kill => "kill",
        }
    }
}

/// A rule's action or a section's default posture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// A rule path: absolute and normalized. A trailing `/` makes it a subtree rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RulePath {
    /// Exactly this path, e.g. `/etc/shadow`.
    Exact(String),
    /// Everything below this directory, e.g. `/var/www/` (trailing slash kept); `/` is the whole
    /// filesystem. The directory itself is covered too (see [`crate::compile`]).
    Subtree(String),
}

impl RulePath {
    /// The path as written (subtrees keep their trailing `/`).
    pub fn as_str(&self) -> &str {
        match self {
            RulePath::Exact(p) | RulePath::Subtree(p) => p,
        }
    }

    pub fn is_subtree(&self) -> bool {
        matches!(self, RulePath::Subtree(_))
    }
}

impl fmt::Display for RulePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.exec`. Absent section: allow everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPolicy {
    pub default: Verdict,
    pub allow: Vec<RulePath>,
    pub deny: Vec<RulePath>,
}

impl Default for ExecPolicy {
    fn default() -> Self {
        ExecPolicy {
            default: Verdict::Allow,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// `spec.files`. Absent section: allow everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePolicy {
    pub default: Verdict,
    pub rules: Vec<FileRuleSpec>,
}

impl Default for FilePolicy {
    fn default() -> Self {
        FilePolicy {
            default: Verdict::Allow,
            rules: Vec::new(),
        }
    }
}

/// One entry of `spec.files.rules`: `action` applies to the access kinds it names; the others
/// are inherited from less specific rules (see [`crate::compile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRuleSpec {
    pub path: RulePath,
    pub read: bool,
    pub write: bool,
    pub action: Verdict,
}

/// `spec.network`. Absent section: allow everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPolicy {
    pub connect: ConnectPolicy,
}

/// `spec.network.connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPolicy {
    pub default: Verdict,
    pub allow: Vec<NetRuleSpec>,
    pub deny: Vec<NetRuleSpec>,
}

impl Default for ConnectPolicy {
    fn default() -> Self {
        ConnectPolicy {
            default: Verdict::Allow,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// One entry of `spec.network.connect.allow` / `deny`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRuleSpec {
    /// Host bits cleared; IPv4-mapped IPv6 networks are converted to IPv4.
    pub cidr: ipnet::IpNet,
    /// Sorted, without duplicates; empty = every port.
    pub ports: Vec<u16>,
    /// `protocol` absent in the YAML = `[Tcp, Udp]`.
    pub protocols: Vec<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// Why a profile was refused: `file:line:column: message` (line and column 1-based), or
/// `file: message` when the problem has no position (I/O errors, several YAML documents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, position: Option<(usize, usize)>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: position.map(|p| p.0),
            column: position.map(|p| p.1),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Parses and validates one profile. Pure: `source` only names the file in diagnostics and in
/// [`Profile::source`].
pub fn parse(source: &Path, bytes: &[u8]) -> Result<Profile, Diagnostic> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Diagnostic::new(
            source,
            None,
            format!("the file is empty; expected a `{KIND}` document"),
        ));
    }
    let raw: de::RawProfile =
        serde_yaml::from_slice(bytes).map_err(|e| yaml_diagnostic(source, &e))?;
    let spec = raw.spec;

    let exec = match spec.exec {
        None => ExecPolicy::default(),
        Some(e) => {
            check_exec_overlap(&e.allow, &e.deny)
                .map_err(|(i, msg)| at(source, bytes, &exec_deny_path(i), msg))?;
            ExecPolicy {
                default: e.default,
                allow: dedup_paths(e.allow),
                deny: dedup_paths(e.deny),
            }
        }
    };
    let files = match spec.files {
        None => FilePolicy::default(),
        Some(f) => {
            check_file_overlap(&f.rules)
                .map_err(|(i, msg)| at(source, bytes, &file_rule_path(i), msg))?;
            FilePolicy {
                default: f.default,
                rules: f.rules,
            }
        }
    };
    let network = match spec.network {
        None => NetworkPolicy::default(),
        Some(n) => NetworkPolicy {
            connect: ConnectPolicy {
                default: n.connect.default,
                allow: n.connect.allow,
                deny: n.connect.deny,
            },
        },
    };

    Ok(Profile {
        source: source.to_path_buf(),
        sha256: sha256(bytes),
        name: raw.metadata.name,
        serial: raw.metadata.serial,
        selector: spec.selector,
        mode: spec.mode,
        on_violation: spec.on_violation,
        exec,
        files,
        network,
    })
}

/// Reads `path` and parses it. I/O errors give a diagnostic without position.
pub fn load_file(path: &Path) -> Result<Profile, Diagnostic> {
    let bytes = std::fs::read(path)
        .map_err(|e| Diagnostic::new(path, None, format!("cannot read the profile: {e}")))?;
    parse(path, &bytes)
}

/// Loads every `*.yaml` / `*.yml` file directly in `dir` (not recursive), in file-name order.
/// Other files (signatures, backups) and hidden files (names starting with `.`, such as
/// editors' lock and swap files) are ignored. A profile whose `metadata.name` was already
/// accepted from an earlier file is refused. Valid profiles are returned even when others fail.
pub fn load_dir(dir: &Path) -> (Vec<Profile>, Vec<Diagnostic>) {
    let mut profiles = Vec::new();
    let mut diagnostics = Vec::new();
    let files = match profile_files(dir) {
        Ok(files) => files,
        Err(e) => {
            diagnostics.push(Diagnostic::new(
                dir,
                None,
                format!("cannot read the profile directory: {e}"),
            ));
            return (profiles, diagnostics);
        }
    };
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                diagnostics.push(Diagnostic::new(
                    &path,
                    None,
                    format!("cannot read the profile: {e}"),
                ));
                continue;
            }
        };
        match parse(&path, &bytes) {
            Err(d) => diagnostics.push(d),
            Ok(profile) => {
                if let Some(first) = names.get(&profile.name) {
                    diagnostics.push(duplicate_name(first, &profile, &bytes));
                } else {
                    names.insert(profile.name.clone(), path.clone());
                    profiles.push(profile);
                }
            }
        }
    }
    (profiles, diagnostics)
}

/// The profile files [`load_dir`] reads, sorted by file name.
pub fn profile_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks; a dangling link is reported when it is read.
        if std::fs::metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            continue;
        }
        files.push(path);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The diagnostic for `later` reusing the name of the profile loaded from `first`, at the
/// position of `metadata.name` in `later_bytes` (the bytes `later` was parsed from).
pub fn duplicate_name(first: &Path, later: &Profile, later_bytes: &[u8]) -> Diagnostic {
    Diagnostic::new(
        &later.source,
        name_position(later_bytes),
        format!(
            "metadata.name: profile name `{}` is already used by {}; names must be unique",
            later.name,
            first.display()
        ),
    )
}

/// Position (line, column; 1-based) of the `metadata.name` value in a profile's bytes.
pub fn name_position(bytes: &[u8]) -> Option<(usize, usize)> {
    locate(bytes, &[Seg::Key("metadata"), Seg::Key("name")])
}

/// Clears host bits, and turns an IPv4-mapped IPv6 network (inside `::ffff:0:0/96`) into the
/// IPv4 network it denotes: the kernel programs match mapped destinations as IPv4.
pub fn normalize_net(net: ipnet::IpNet) -> ipnet::IpNet {
    let net = net.trunc();
    if let ipnet::IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.addr().to_ipv4_mapped()
    {
        let v4 = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).expect("prefix length within 0..=32");
        return ipnet::IpNet::V4(v4);
    }
    net
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn yaml_diagnostic(source: &Path, e: &serde_yaml::Error) -> Diagnostic {
    let mut message = e.to_string();
    let position = e.location().map(|l| (l.line(), l.column()));
    if let Some((line, column)) = position {
        // serde_yaml appends the position we already report in front.
        let suffix = format!(" at line {line} column {column}");
        if let Some(i) = message.find(&suffix) {
            message.replace_range(i..i + suffix.len(), "");
        }
    }
    if message.ends_with("missing field `default`") {
        message.push_str(" (every section present states its default posture: allow or deny)");
    }
    Diagnostic::new(source, position, message)
}

fn at(source: &Path, bytes: &[u8], path: &[Seg<'_>], message: String) -> Diagnostic {
    Diagnostic::new(source, locate(bytes, path), message)
}

fn exec_deny_path(i: usize) -> [Seg<'static>; 4] {
    [
        Seg::Key("spec"),
        Seg::Key("exec"),
        Seg::Key("deny"),
        Seg::Index(i),
    ]
}

fn file_rule_path(i: usize) -> [Seg<'static>; 5] {
    [
        Seg::Key("spec"),
        Seg::Key("files"),
        Seg::Key("rules"),
        Seg::Index(i),
        Seg::Key("path"),
    ]
}

/// A path both allowed and denied is a contradiction: refuse it at the `deny` entry.
fn check_exec_overlap(allow: &[RulePath], deny: &[RulePath]) -> Result<(), (usize, String)> {
    let allowed: HashSet<&RulePath> = allow.iter().collect();
    for (i, path) in deny.iter().enumerate() {
        if allowed.contains(path) {
            return Err((
                i,
                format!("spec.exec.deny[{i}]: `{path}` is listed in both exec.allow and exec.deny"),
            ));
        }
    }
    Ok(())
}

/// Two rules for the same path that both decide the same access kind are ambiguous: refuse the
/// later one. Rules for the same path and different access kinds combine.
fn check_file_overlap(rules: &[FileRuleSpec]) -> Result<(), (usize, String)> {
    let mut seen: HashMap<&RulePath, (usize, bool, bool)> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        match seen.get_mut(&rule.path) {
            None => {
                seen.insert(&rule.path, (i, rule.read, rule.write));
            }
            Some((first, read, write)) => {
                let clash = match (rule.read && *read, rule.write && *write) {
                    (true, true) => Some("read and write"),
                    (true, false) => Some("read"),
                    (false, true) => Some("write"),
                    (false, false) => None,
                };
                if let Some(kind) = clash {
                    return Err((
                        i,
                        format!(
                            "spec.files.rules[{i}]: `{}` already has a rule for {kind} access \
                             (spec.files.rules[{first}]); two rules for the same path and access \
                             are ambiguous",
                            rule.path
                        ),
                    ));
                }
                *read |= rule.read;
                *write |= rule.write;
            }
        }
    }
    Ok(())
}

fn dedup_paths(paths: Vec<RulePath>) -> Vec<RulePath> {
    let mut seen = HashSet::new();
    paths
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect()
}
