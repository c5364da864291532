//! Turns a validated [`Profile`] into the entries of the kernel maps: pure, no kernel access.
//!
//! The encoding is the contract with the BPF programs (see `enforcerd_common`):
//!
//! - **Paths** (exec and file tries): key = profile id (big-endian) then the path. An exact
//!   path `P` is stored as its bytes and a NUL, `prefix_len = 32 + 8 * (len(P) + 1)`; a subtree
//!   `S` (ending in `/`) as its bytes without terminator, `prefix_len = 32 + 8 * len(S)`. The
//!   rest of the key is zero.
//! - **Implied directory entry**: a subtree rule `/d/` also covers the directory `/d` itself, so
//!   an exact entry for `/d` is emitted with the subtree's decision, unless the profile has an
//!   explicit exact rule for `/d` (which wins). Not for `/`.
//! - **Files**: the kernel does one longest-prefix lookup, so every entry carries a complete
//!   decision. For each entry and each access kind separately, the verdict is that of the most
//!   specific rule that covers the entry's path and names that access kind (an exact rule on
//!   the same path, then the longest covering subtree; the subtree `/d/` covers `/d`), else the
//!   profile's `files.default`.
//! - **Directory markers** (in the file trie): for every directory `D/` other than `/` that
//!   has a file or exec rule strictly below it, the entry `D/` + NUL with the file verdicts a
//!   lookup of that key finds anyway and `beneath = 1`. The link and rename hooks look a
//!   directory up by its name with a trailing `/` and refuse to move one that has rules below
//!   its old or new name; no opened file's path ends in `/`, so `file_open` never meets one.
//! - **Network**: one entry per rule, protocol and port (port 0 = any port when the rule lists
//!   none): key = profile id (BE), protocol, family, port (BE), address with host bits zero
//!   (IPv4 in the first 4 bytes), `prefix_len = 64 + cidr_len`. When the same key comes from
//!   both `allow` and `deny`, **deny wins**. Identical keys are emitted once.
//!
//! Entries are emitted in a deterministic order (sorted by key bytes).

use std::collections::{BTreeMap, HashMap};

use enforcerd_common::{
    ExecRule, FileRule, NetKey, NetRule, PathKey, ProfileConfig, RULE_PATH_BYTES, family, mode,
    on_violation, protocol, verdict,
};
use ipnet::IpNet;

use crate::profile::{
    ConnectPolicy, ExecPolicy, FilePolicy, Mode, OnViolation, Profile, Protocol, RulePath, Verdict,
    normalize_net,
};

/// A profile as map entries. Each rule is `(prefix_len in bits, key data, value)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledProfile {
    pub id: u32,
    pub config: ProfileConfig,
    pub exec_rules: Vec<(u32, PathKey, ExecRule)>,
    pub file_rules: Vec<(u32, PathKey, FileRule)>,
    pub net_rules: Vec<(u32, NetKey, NetRule)>,
}

/// Compiles `profile` for profile id `id` (the kernel treats 0 as "no profile"; ids start at 1).
pub fn compile(id: u32, profile: &Profile) -> CompiledProfile {
    CompiledProfile {
        id,
        config: config(profile),
        exec_rules: exec_rules(id, &profile.exec),
        file_rules: file_rules(id, &profile.files, &profile.exec),
        net_rules: net_rules(id, &profile.network.connect),
    }
}

fn code(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => verdict::ALLOW,
        Verdict::Deny => verdict::DENY,
    }
}

fn config(p: &Profile) -> ProfileConfig {
    ProfileConfig {
        mode: match p.mode {
            Mode::Enforce => mode::ENFORCE,
            Mode::Audit => mode::AUDIT,
        },
        on_violation: match p.on_violation {
            OnViolation::Deny => on_violation::DENY,
            OnViolation::Kill => on_violation::KILL,
        },
        exec_default: code(p.exec.default),
        file_read_default: code(p.files.default),
        file_write_default: code(p.files.default),
        connect_default: code(p.network.connect.default),
        _pad: [0; 2],
    }
}

/// The bytes a rule path is stored as: exact paths with a NUL terminator, subtrees without.
fn stored(path: &RulePath) -> Vec<u8> {
    match path {
        RulePath::Exact(p) => {
            let mut b = Vec::with_capacity(p.len() + 1);
            b.extend_from_slice(p.as_bytes());
            b.push(0);
            b
        }
        RulePath::Subtree(s) => s.as_bytes().to_vec(),
    }
}

/// The trie key (`prefix_len`, data) of a rule path in profile `id`.
///
/// # Panics
/// If the path does not fit (the parser refuses such paths).
pub fn path_key(id: u32, path: &RulePath) -> (u32, PathKey) {
    key_from_stored(id, &stored(path))
}

fn key_from_stored(id: u32, bytes: &[u8]) -> (u32, PathKey) {
    assert!(
        bytes.len() <= RULE_PATH_BYTES,
        "rule path of {} stored bytes exceeds RULE_PATH_BYTES",
        bytes.len()
    );
    let mut key = PathKey {
        profile_id: id.to_be_bytes(),
        path: [0; RULE_PATH_BYTES],
    };
    key.path[..bytes.len()].copy_from_slice(bytes);
    (32 + 8 * bytes.len() as u32, key)
}

/// The directory a subtree rule implies an exact entry for: `/d/` -> `/d`; none for `/`.
fn implied_dir(subtree: &str) -> Option<&str> {
    let d = subtree.strip_suffix('/')?;
    (!d.is_empty()).then_some(d)
}

fn exec_rules(id: u32, exec: &ExecPolicy) -> Vec<(u32, PathKey, ExecRule)> {
    let mut explicit: HashMap<&RulePath, u8> = HashMap::new();
    for p in &exec.allow {
        explicit.insert(p, verdict::ALLOW);
    }
    // The parser refuses a path in both lists; should one get here anyway, deny wins.
    for p in &exec.deny {
        explicit.insert(p, verdict::DENY);
    }
    let mut entries: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
    for (path, v) in &explicit {
        entries.insert(stored(path), *v);
        if let RulePath::Subtree(s) = path
            && let Some(d) = implied_dir(s)
        {
            let dir = RulePath::Exact(d.to_owned());
            if !explicit.contains_key(&dir) {
                entries.insert(stored(&dir), *v);
            }
        }
    }
    entries
        .into_iter()
        .map(|(bytes, v)| {
            let (len, key) = key_from_stored(id, &bytes);
            (len, key, ExecRule { verdict: v })
        })
        .collect()
}

/// What the rules on one path decide, per access kind.
#[derive(Clone, Copy, Default)]
struct Decides {
    read: Option<Verdict>,
    write: Option<Verdict>,
}

fn file_rules(id: u32, files: &FilePolicy, exec: &ExecPolicy) -> Vec<(u32, PathKey, FileRule)> {
    // Explicit rules by path (the parser refuses two rules deciding the same path and access;
    // rules for different access kinds on one path combine).
    let mut exact: HashMap<&str, Decides> = HashMap::new();
    let mut subtree: HashMap<&str, Decides> = HashMap::new();
    for rule in &files.rules {
        let d = match &rule.path {
            RulePath::Exact(p) => exact.entry(p.as_str()).or_default(),
            RulePath::Subtree(s) => subtree.entry(s.as_str()).or_default(),
        };
        if rule.read {
            d.read = Some(rule.action);
        }
        if rule.write {
            d.write = Some(rule.action);
        }
    }

    let default = files.default;
    // Resolves one access kind: the exact rule on the path if it decides it, else the longest
    // covering subtree that does, else the default. `dir` is the path as a directory (ends in
    // `/`): the subtree that covers the path itself; its ancestors follow.
    let resolve = |own: Option<Decides>, dir: &str| -> FileRule {
        let mut read = own.and_then(|d| d.read);
        let mut write = own.and_then(|d| d.write);
        let bytes = dir.as_bytes();
        let mut end = bytes.len();
        while (read.is_none() || write.is_none()) && end > 0 {
            let prefix = &dir[..end];
            if let Some(d) = subtree.get(prefix) {
                read = read.or(d.read);
                write = write.or(d.write);
            }
            // Next shorter prefix ending in `/`.
            end = bytes[..end - 1]
                .iter()
                .rposition(|b| *b == b'/')
                .map_or(0, |i| i + 1);
        }
        FileRule {
            read: code(read.unwrap_or(default)),
            write: code(write.unwrap_or(default)),
            beneath: 0,
        }
    };

    let mut entries: BTreeMap<Vec<u8>, FileRule> = BTreeMap::new();
    for (p, d) in &exact {
        let dir = format!("{p}/");
        entries.insert(
            stored(&RulePath::Exact((*p).to_owned())),
            resolve(Some(*d), &dir),
        );
    }
    for s in subtree.keys() {
        let rule = resolve(None, s);
        entries.insert(s.as_bytes().to_vec(), rule);
        if let Some(d) = implied_dir(s)
            && !exact.contains_key(d)
        {
            entries.insert(stored(&RulePath::Exact(d.to_owned())), rule);
        }
    }
    let rule_paths = files
        .rules
        .iter()
        .map(|r| &r.path)
        .chain(&exec.allow)
        .chain(&exec.deny);
    for path in rule_paths {
        for dir in directories_above(path) {
            let mut marker = resolve(None, dir);
            marker.beneath = 1;
            let mut bytes = dir.as_bytes().to_vec();
            bytes.push(0);
            entries.insert(bytes, marker);
        }
    }
    entries
        .into_iter()
        .map(|(bytes, rule)| {
            let (len, key) = key_from_stored(id, &bytes);
            (len, key, rule)
        })
        .collect()
}

/// The directories (ending in `/`) strictly above a rule path, `/` excluded: `/a/b/c` and
/// `/a/b/c/` give `/a/` and `/a/b/`.
fn directories_above(path: &RulePath) -> impl Iterator<Item = &str> {
    let p = match path {
        RulePath::Exact(p) => p.as_str(),
        RulePath::Subtree(s) => s.strip_suffix('/').unwrap_or(s),
    };
    p.char_indices()
        .filter(|(i, c)| *c == '/' && *i > 0)
        .map(move |(i, _)| &p[..=i])
}

fn net_rules(id: u32, connect: &ConnectPolicy) -> Vec<(u32, NetKey, NetRule)> {
    // (protocol, family, port, address, cidr_len) -> verdict; deny is inserted last and wins.
    let mut entries: BTreeMap<(u8, u8, u16, [u8; 16], u8), u8> = BTreeMap::new();
    let lists = [
        (&connect.allow, verdict::ALLOW),
        (&connect.deny, verdict::DENY),
    ];
    for (rules, v) in lists {
        for rule in rules {
            let net = normalize_net(rule.cidr);
            let (fam, addr) = match net {
                IpNet::V4(n) => {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&n.network().octets());
                    (family::IPV4, a)
                }
                IpNet::V6(n) => (family::IPV6, n.network().octets()),
            };
            let any_port = [0u16];
            let ports: &[u16] = if rule.ports.is_empty() {
                &any_port
            } else {
                &rule.ports
            };
            for proto in &rule.protocols {
                let proto = match proto {
                    Protocol::Tcp => protocol::TCP,
                    Protocol::Udp => protocol::UDP,
                };
                for port in ports {
                    entries.insert((proto, fam, *port, addr, net.prefix_len()), v);
                }
            }
        }
    }
    entries
        .into_iter()
        .map(|((proto, fam, port, addr, cidr_len), v)| {
            (
                64 + u32::from(cidr_len),
                NetKey {
                    profile_id: id.to_be_bytes(),
                    protocol: proto,
                    family: fam,
                    port: port.to_be_bytes(),
                    addr,
                },
                NetRule {
                    verdict: v,
                    cidr_len,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{NetRuleSpec, parse};
    use enforcerd_common::verdict::{ALLOW as A, DENY as D};
    use std::path::Path;

    fn profile(spec: &str) -> Profile {
        let yaml = format!(
            "apiVersion: enforcerd/v1\nkind: Profile\nmetadata: {{name: t, serial: 1}}\nspec:\n  \
             selector: {{cgroup: /t.slice}}\n{spec}"
        );
        parse(Path::new("t.yaml"), yaml.as_bytes()).unwrap_or_else(|d| panic!("{d}"))
    }

    /// The stored path bytes of a key (up to the prefix length) as a string, NUL shown as `\0`.
    fn shown(len: u32, key: &PathKey) -> String {
        let n = (len as usize - 32) / 8;
        String::from_utf8(key.path[..n].to_vec())
            .unwrap()
            .replace('\0', "\\0")
    }

    /// The file trie's rule entries (directory markers left out).
    fn files(c: &CompiledProfile) -> Vec<(String, u8, u8)> {
        c.file_rules
            .iter()
            .filter(|(_, _, r)| r.beneath == 0)
            .map(|(len, k, r)| (shown(*len, k), r.read, r.write))
            .collect()
    }

    /// The file trie's directory markers.
    fn markers(c: &CompiledProfile) -> Vec<(String, u8, u8)> {
        c.file_rules
            .iter()
            .filter(|(_, _, r)| r.beneath == 1)
            .map(|(len, k, r)| (shown(*len, k), r.read, r.write))
            .collect()
    }

    fn execs(c: &CompiledProfile) -> Vec<(String, u8)> {
        c.exec_rules
            .iter()
            .map(|(len, k, r)| (shown(*len, k), r.verdict))
            .collect()
    }

    fn owned<T: Clone>(v: &[(&str, T)]) -> Vec<(String, T)> {
        v.iter()
            .map(|(s, t)| ((*s).to_owned(), t.clone()))
            .collect()
    }

    #[test]
    fn compile_profile_config() {
        let c = compile(
            7,
            &profile(
                "  mode: audit\n  onViolation: kill\n  exec: {default: deny}\n  files: {default: deny}\n",
            ),
        );
        assert_eq!(c.id, 7);
        assert_eq!(
            c.config,
            ProfileConfig {
                mode: mode::AUDIT,
                on_violation: on_violation::KILL,
                exec_default: D,
                file_read_default: D,
                file_write_default: D,
                connect_default: A,
                _pad: [0; 2],
            }
        );
        let c = compile(7, &profile("  network: {connect: {default: deny}}\n"));
        assert_eq!(
            c.config,
            ProfileConfig {
                mode: mode::ENFORCE,
                on_violation: on_violation::DENY,
                exec_default: A,
                file_read_default: A,
                file_write_default: A,
                connect_default: D,
                _pad: [0; 2],
            }
        );
        assert!(c.exec_rules.is_empty() && c.file_rules.is_empty() && c.net_rules.is_empty());
        let audit = compile(7, &profile("").with_audit());
        assert_eq!(audit.config.mode, mode::AUDIT);
    }

    #[test]
    fn compile_path_key_bytes() {
        let (len, key) = path_key(0x0102_0304, &RulePath::Exact("/etc/shadow".into()));
        assert_eq!(key.profile_id, [1, 2, 3, 4]);
        assert_eq!(len, 32 + 8 * 12);
        assert_eq!(&key.path[..12], b"/etc/shadow\0");
        assert!(key.path[12..].iter().all(|b| *b == 0));

        let (len, key) = path_key(1, &RulePath::Subtree("/var/www/".into()));
        assert_eq!(key.profile_id, [0, 0, 0, 1]);
        assert_eq!(len, 32 + 8 * 9);
        assert_eq!(&key.path[..9], b"/var/www/");
        assert!(key.path[9..].iter().all(|b| *b == 0));

        let (len, key) = path_key(1, &RulePath::Subtree("/".into()));
        assert_eq!(len, 40);
        assert_eq!(key.path[0], b'/');
        assert!(key.path[1..].iter().all(|b| *b == 0));

        // The longest paths the parser accepts fill the key exactly.
        let full = 8 * (4 + RULE_PATH_BYTES as u32);
        let exact = format!("/{}", "a".repeat(250));
        let (len, key) = path_key(1, &RulePath::Exact(exact.clone()));
        assert_eq!(len, full);
        assert_eq!(&key.path[..251], exact.as_bytes());
        assert_eq!(key.path[251], 0);
        let sub = format!("/{}/", "a".repeat(250));
        let (len, key) = path_key(1, &RulePath::Subtree(sub.clone()));
        assert_eq!(len, full);
        assert_eq!(&key.path[..], sub.as_bytes());
    }

    #[test]
    fn compile_exec_rules_and_implied_directory() {
        let c = compile(
            0x0a0b_0c0d,
            &profile(
                "  exec:\n    default: deny\n    allow: [/usr/sbin/nginx, /usr/bin/, /opt/app/, /]\n    \
                 deny: [/usr/bin/curl, /opt/app, /srv/]\n",
            ),
        );
        assert_eq!(c.config.exec_default, D);
        assert!(
            c.exec_rules
                .iter()
                .all(|(_, k, _)| k.profile_id == [0x0a, 0x0b, 0x0c, 0x0d])
        );
        assert_eq!(
            execs(&c),
            owned(&[
                ("/", A),
                // Explicit exact `/opt/app` wins over the directory implied by `/opt/app/`.
                ("/opt/app\\0", D),
                ("/opt/app/", A),
                ("/srv\\0", D),
                ("/srv/", D),
                ("/usr/bin\\0", A),
                ("/usr/bin/", A),
                ("/usr/bin/curl\\0", D),
                ("/usr/sbin/nginx\\0", A),
            ])
        );
        for (len, key, _) in &c.exec_rules {
            let stored = key
                .path
                .iter()
                .position(|b| *b == 0)
                .map_or(RULE_PATH_BYTES, |i| {
                    // Exact entries include their NUL.
                    if key.path[i.saturating_sub(1)] == b'/' {
                        i
                    } else {
                        i + 1
                    }
                });
            assert_eq!(*len, 32 + 8 * stored as u32, "{}", shown(*len, key));
        }
    }

    #[test]
    fn compile_file_rules_inherit_per_access_kind() {
        // The spec's example.
        let c = compile(
            1,
            &profile(
                "  files:\n    default: allow\n    rules:\n      \
                 - {path: /etc/shadow, access: [read, write], action: deny}\n      \
                 - {path: /var/www/, access: [write], action: deny}\n      \
                 - {path: /var/www/uploads/, access: [write], action: allow}\n",
            ),
        );
        assert_eq!(
            files(&c),
            owned(&[
                ("/etc/shadow\\0", (D, D)),
                ("/var/www\\0", (A, D)),
                ("/var/www/", (A, D)),
                ("/var/www/uploads\\0", (A, A)),
                ("/var/www/uploads/", (A, A)),
            ])
            .into_iter()
            .map(|(p, (r, w))| (p, r, w))
            .collect::<Vec<_>>()
        );
        let (len, key, rule) = c
            .file_rules
            .iter()
            .find(|(_, k, _)| k.path.starts_with(b"/etc/shadow"))
            .unwrap();
        assert_eq!(*len, 32 + 8 * 12);
        assert_eq!(&key.path[..12], b"/etc/shadow\0");
        assert_eq!(
            *rule,
            FileRule {
                read: D,
                write: D,
                beneath: 0
            }
        );
    }

    #[test]
    fn compile_marks_directories_with_rules_below_them() {
        let c = compile(
            1,
            &profile(
                "  exec:\n    default: deny\n    allow: [/usr/bin/, /opt/app/bin/tool]\n  \
                 files:\n    default: allow\n    rules:\n      \
                 - {path: /etc/shadow, access: [read], action: deny}\n      \
                 - {path: /srv/data/private/, access: [read, write], action: deny}\n      \
                 - {path: /srv/, access: [write], action: deny}\n",
            ),
        );
        // Each directory above a rule once, `/` never; the verdicts a lookup of `D/` + NUL
        // finds without the marker (`/srv/data/` inherits write-deny from `/srv/`).
        assert_eq!(
            markers(&c),
            [
                ("/etc/\\0", A, A),
                ("/opt/\\0", A, A),
                ("/opt/app/\\0", A, A),
                ("/opt/app/bin/\\0", A, A),
                ("/srv/\\0", A, D),
                ("/srv/data/\\0", A, D),
                ("/usr/\\0", A, A),
            ]
            .map(|(p, r, w)| (p.to_owned(), r, w))
        );
        // Every marker key ends in "/" + NUL, which no opened file's path does.
        for (len, key, r) in &c.file_rules {
            let n = (*len as usize - 32) / 8;
            assert_eq!(r.beneath == 1, key.path[..n].ends_with(b"/\0"));
        }
    }

    #[test]
    fn compile_file_rules_most_specific_rule_per_access() {
        let c = compile(
            1,
            &profile(
                "  files:\n    default: deny\n    rules:\n      \
                 - {path: /, access: [read], action: allow}\n      \
                 - {path: /data/, access: [read, write], action: allow}\n      \
                 - {path: /data/secret/, access: [read], action: deny}\n      \
                 - {path: /data/secret/public.txt, access: [read], action: allow}\n      \
                 - {path: /data/secret/log, access: [write], action: deny}\n      \
                 - {path: /data/secret/log/, access: [read], action: allow}\n      \
                 - {path: /data/a/b/c/, access: [write], action: deny}\n      \
                 - {path: /data/a/b/c/d/e/f, access: [read], action: deny}\n      \
                 - {path: /etc/, access: [write], action: allow}\n      \
                 - {path: /etc/, access: [read], action: deny}\n",
            ),
        );
        let expected: Vec<(String, u8, u8)> = [
            ("/", A, D),
            ("/data\\0", A, A),
            ("/data/", A, A),
            ("/data/a/b/c\\0", A, D),
            ("/data/a/b/c/", A, D),
            ("/data/a/b/c/d/e/f\\0", D, D),
            ("/data/secret\\0", D, A),
            ("/data/secret/", D, A),
            ("/data/secret/log\\0", A, D),
            // Exact `/data/secret/log`: write from itself, read from the subtree `/data/secret/log/`
            // that covers the directory (explicit exact replaces the implied entry).
            ("/data/secret/log/", A, A),
            ("/data/secret/public.txt\\0", A, A),
            ("/etc\\0", D, A),
            ("/etc/", D, A),
        ]
        .iter()
        .map(|(p, r, w)| ((*p).to_owned(), *r, *w))
        .collect();
        assert_eq!(files(&c), expected);
    }

    fn nets(c: &CompiledProfile) -> Vec<(u32, u8, u8, u16, String, u8, u8)> {
        c.net_rules
            .iter()
            .map(|(len, k, r)| {
                let addr = match k.family {
                    family::IPV4 => {
                        assert!(k.addr[4..].iter().all(|b| *b == 0));
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&k.addr[..4]).unwrap())
                            .to_string()
                    }
                    _ => std::net::Ipv6Addr::from(k.addr).to_string(),
                };
                assert_eq!(*len, 64 + u32::from(r.cidr_len));
                (
                    *len,
                    k.protocol,
                    k.family,
                    u16::from_be_bytes(k.port),
                    addr,
                    r.verdict,
                    r.cidr_len,
                )
            })
            .collect()
    }

    #[test]
    fn compile_network_expansion() {
        let c = compile(
            0x11,
            &profile(
                "  network:\n    connect:\n      default: deny\n      allow:\n        \
                 - {cidr: 10.1.2.3/8, ports: [443, 80]}\n        \
                 - {cidr: \"fd00::1/16\", protocol: udp}\n        \
                 - {cidr: \"::ffff:192.168.0.0/112\", ports: [53], protocol: udp}\n        \
                 - {cidr: 127.0.0.1, protocol: tcp}\n        \
                 - {cidr: 172.16.0.0/12, ports: [22], protocol: tcp}\n      \
                 deny:\n        \
                 - {cidr: 10.0.0.0/8, ports: [80], protocol: tcp}\n        \
                 - {cidr: 10.9.0.0/16}\n",
            ),
        );
        let (t, u) = (protocol::TCP, protocol::UDP);
        let (v4, v6) = (family::IPV4, family::IPV6);
        let s = |x: &str| x.to_owned();
        assert_eq!(
            nets(&c),
            vec![
                (80, t, v4, 0, s("10.9.0.0"), D, 16),
                (96, t, v4, 0, s("127.0.0.1"), A, 32),
                (76, t, v4, 22, s("172.16.0.0"), A, 12),
                // Same key from allow and deny: deny wins.
                (72, t, v4, 80, s("10.0.0.0"), D, 8),
                (72, t, v4, 443, s("10.0.0.0"), A, 8),
                (80, u, v4, 0, s("10.9.0.0"), D, 16),
                // IPv4-mapped IPv6 is keyed as IPv4.
                (80, u, v4, 53, s("192.168.0.0"), A, 16),
                (72, u, v4, 80, s("10.0.0.0"), A, 8),
                (72, u, v4, 443, s("10.0.0.0"), A, 8),
                (80, u, v6, 0, s("fd00::"), A, 16),
            ]
        );
        let (_, key, _) = c
            .net_rules
            .iter()
            .find(|(_, k, _)| k.port == 443u16.to_be_bytes())
            .unwrap();
        assert_eq!(key.profile_id, [0, 0, 0, 0x11]);
        assert_eq!(key.port, [0x01, 0xbb]);
        assert_eq!(&key.addr[..4], &[10, 0, 0, 0]);
    }

    #[test]
    fn compile_network_normalizes_hand_built_rules() {
        let mut p = profile("  network: {connect: {default: deny}}\n");
        let rule = |cidr: &str| NetRuleSpec {
            cidr: cidr.parse().unwrap(),
            ports: vec![],
            protocols: vec![Protocol::Tcp],
        };
        p.network.connect.allow = vec![
            rule("10.1.2.3/8"),
            rule("10.0.0.0/8"),
            rule("::ffff:1.2.3.4/128"),
        ];
        let c = compile(1, &p);
        let s = |x: &str| x.to_owned();
        assert_eq!(
            nets(&c),
            vec![
                (96, protocol::TCP, family::IPV4, 0, s("1.2.3.4"), A, 32),
                (72, protocol::TCP, family::IPV4, 0, s("10.0.0.0"), A, 8),
            ]
        );
    }

    #[test]
    fn compile_is_deterministic() {
        let p = profile(
            "  exec: {default: deny, allow: [/b, /a/, /c]}\n  files:\n    default: allow\n    rules:\n      \
             - {path: /z/, access: [read], action: deny}\n      - {path: /y, access: [write], action: deny}\n",
        );
        let a = compile(3, &p);
        for _ in 0..5 {
            assert_eq!(compile(3, &p), a);
        }
    }

    #[test]
    fn compile_ten_thousand_file_rules() {
        let mut spec = String::from("  files:\n    default: allow\n    rules:\n");
        for i in 0..10_000 {
            let (dir, sub) = (i / 100, i % 100);
            if i % 2 == 0 {
                spec.push_str(&format!(
                    "      - {{path: /srv/tenants/t{dir}/data/d{sub}/, access: [write], action: deny}}\n"
                ));
            } else {
                spec.push_str(&format!(
                    "      - {{path: /srv/tenants/t{dir}/data/d{sub}/deep/er/still/file.txt, access: [read], action: deny}}\n"
                ));
            }
        }
        let p = profile(&spec);
        assert_eq!(p.files.rules.len(), 10_000);
        let start = std::time::Instant::now();
        let c = compile(1, &p);
        let elapsed = start.elapsed();
        eprintln!(
            "compiled 10,000 file rules into {} entries in {elapsed:?}",
            c.file_rules.len()
        );
        // 5,000 subtrees (+ their implied directories) and 5,000 exact files; directory
        // markers: `/srv/`, `/srv/tenants/`, 100 x (`tN/`, `tN/data/`), and 5,000 x (`dM/`,
        // `deep/`, `er/`, `still/`) above the exact files.
        assert_eq!(files(&c).len(), 15_000);
        assert_eq!(markers(&c).len(), 2 + 200 + 20_000);
        let find = |path: &str| {
            c.file_rules
                .iter()
                .find(|(len, k, _)| shown(*len, k) == path)
                .map(|(_, _, r)| *r)
                .unwrap_or_else(|| panic!("no entry {path}"))
        };
        assert_eq!(
            find("/srv/tenants/t0/data/d0/"),
            FileRule {
                read: A,
                write: D,
                beneath: 0
            }
        );
        assert_eq!(
            find("/srv/tenants/t0/data/d0\\0"),
            FileRule {
                read: A,
                write: D,
                beneath: 0
            }
        );
        assert_eq!(
            find("/srv/tenants/t0/data/d1/deep/er/still/file.txt\\0"),
            FileRule {
                read: D,
                write: A,
                beneath: 0
            }
        );
        assert!(
            elapsed < std::time::Duration::from_secs(5),
            "compile took {elapsed:?}"
        );
    }
}
