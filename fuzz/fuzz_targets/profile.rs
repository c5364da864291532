//! Profile loader, validator and compiler: arbitrary bytes as a profile file.
//!
//! `parse` must return a profile or a diagnostic, never panic; a diagnostic must display and
//! carry 1-based positions. A profile that parses must compile without panicking into map
//! entries that honour the encoding documented in `enforcerd::compile` (key lengths, verdict
//! values, host bits, ordering, the most-specific-rule resolution of file verdicts).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use enforcerd::compile::{CompiledProfile, compile};
use enforcerd::profile::{
    self, Diagnostic, FileRuleSpec, NetRuleSpec, Profile, Protocol, RulePath, Verdict,
};
use enforcerd_common::{RULE_PATH_BYTES, family, mode, on_violation, protocol, verdict};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

const SOURCE: &str = "fuzz.yaml";
const ID: u32 = 1;

fuzz_target!(|data: &[u8]| {
    // The locator used for diagnostics about several values walks any document.
    if let Some(pos) = profile::name_position(data) {
        assert!(
            pos.0 >= 1 && pos.1 >= 1,
            "name_position {pos:?} is not 1-based"
        );
    }
    match profile::parse(Path::new(SOURCE), data) {
        Err(d) => check_diagnostic(&d),
        Ok(p) => {
            check_profile(&p, data);
            let c = compile(ID, &p);
            check_compiled(&p, &c);
            assert_eq!(c, compile(ID, &p), "compile is not deterministic");
        }
    }
});

fn check_diagnostic(d: &Diagnostic) {
    let shown = d.to_string();
    assert_eq!(
        d.file,
        Path::new(SOURCE),
        "diagnostic names another file: {shown}"
    );
    assert!(
        shown.starts_with(SOURCE),
        "diagnostic does not start with the file: {shown}"
    );
    assert!(!d.message.is_empty(), "diagnostic without a message");
    assert_eq!(
        d.line.is_some(),
        d.column.is_some(),
        "half a position: {d:?}"
    );
    if let (Some(line), Some(column)) = (d.line, d.column) {
        assert!(line >= 1 && column >= 1, "position not 1-based: {shown}");
    }
}

fn check_profile(p: &Profile, data: &[u8]) {
    assert_eq!(p.source, Path::new(SOURCE));
    assert_eq!(p.sha256, profile::sha256(data));
    assert!(!p.name.is_empty(), "empty profile name");
    let _ = p.selector.to_string();
    for path in p.exec.allow.iter().chain(&p.exec.deny) {
        check_rule_path(path);
    }
    for path in &p.exec.allow {
        assert!(
            !p.exec.deny.contains(path),
            "{path} both allowed and denied"
        );
    }
    for rule in &p.files.rules {
        check_rule_path(&rule.path);
        assert!(
            rule.read || rule.write,
            "file rule for {} decides nothing",
            rule.path
        );
    }
    for rule in p
        .network
        .connect
        .allow
        .iter()
        .chain(&p.network.connect.deny)
    {
        check_net_rule(rule);
    }
}

fn check_rule_path(path: &RulePath) {
    let s = path.as_str();
    assert!(s.starts_with('/'), "rule path `{s}` is not absolute");
    assert!(
        !s.contains('\0') && !s.contains("//"),
        "rule path {s:?} is not normalized"
    );
    assert!(
        !s.split('/').any(|c| c == "." || c == ".."),
        "rule path `{s}` has a dot component"
    );
    assert_eq!(
        path.is_subtree(),
        s.ends_with('/'),
        "rule path `{s}` has the wrong kind"
    );
    let stored = s.len() + usize::from(!path.is_subtree());
    assert!(
        stored <= RULE_PATH_BYTES,
        "rule path `{s}` does not fit a key"
    );
}

fn check_net_rule(rule: &NetRuleSpec) {
    assert_eq!(
        profile::normalize_net(rule.cidr),
        rule.cidr,
        "cidr {} is not normalized",
        rule.cidr
    );
    assert!(!rule.ports.contains(&0), "port 0 in {:?}", rule.ports);
    assert!(
        rule.ports.windows(2).all(|w| w[0] < w[1]),
        "ports not sorted: {:?}",
        rule.ports
    );
    assert!(!rule.protocols.is_empty(), "rule without protocol");
}

fn code(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => verdict::ALLOW,
        Verdict::Deny => verdict::DENY,
    }
}

fn is_verdict(v: u8) -> bool {
    v == verdict::ALLOW || v == verdict::DENY
}

/// The bytes a path key stores, after checking the key's shape.
fn key_bytes(len: u32, key: &enforcerd_common::PathKey) -> Vec<u8> {
    assert_eq!(
        key.profile_id,
        ID.to_be_bytes(),
        "path key with the wrong profile id"
    );
    assert!(
        len >= 32 && (len - 32).is_multiple_of(8),
        "path prefix_len {len} is not 32 + 8*n"
    );
    let n = ((len - 32) / 8) as usize;
    assert!(
        (1..=RULE_PATH_BYTES).contains(&n),
        "path prefix_len {len}: n = {n}"
    );
    assert!(
        key.path[n..].iter().all(|b| *b == 0),
        "path key has bytes past its prefix"
    );
    let stored = key.path[..n].to_vec();
    assert_eq!(stored[0], b'/', "stored path {stored:?} is not absolute");
    match stored.iter().position(|b| *b == 0) {
        Some(i) => assert_eq!(i, n - 1, "NUL inside stored path {stored:?}"),
        None => assert_eq!(
            stored[n - 1],
            b'/',
            "stored path {stored:?} neither exact nor subtree"
        ),
    }
    stored
}

fn stored(path: &RulePath) -> Vec<u8> {
    let mut b = path.as_str().as_bytes().to_vec();
    if !path.is_subtree() {
        b.push(0);
    }
    b
}

/// `/d/` -> the exact entry for `/d`; none for `/`.
fn implied(subtree: &str) -> Option<RulePath> {
    let d = subtree.strip_suffix('/')?;
    (!d.is_empty()).then(|| RulePath::Exact(d.to_owned()))
}

fn check_compiled(p: &Profile, c: &CompiledProfile) {
    assert_eq!(c.id, ID);
    let cfg = &c.config;
    assert!(cfg.mode == mode::ENFORCE || cfg.mode == mode::AUDIT);
    assert!(cfg.on_violation == on_violation::DENY || cfg.on_violation == on_violation::KILL);
    assert_eq!(cfg.exec_default, code(p.exec.default));
    assert_eq!(cfg.file_read_default, code(p.files.default));
    assert_eq!(cfg.file_write_default, code(p.files.default));
    assert_eq!(cfg.connect_default, code(p.network.connect.default));
    check_exec(p, c);
    check_files(p, c);
    check_net(p, c);
}

fn check_exec(p: &Profile, c: &CompiledProfile) {
    // Expected: every listed path with its verdict, and the directory a subtree implies unless
    // listed itself.
    let mut explicit: BTreeMap<RulePath, u8> = BTreeMap::new();
    for path in &p.exec.allow {
        explicit.insert(path.clone(), verdict::ALLOW);
    }
    for path in &p.exec.deny {
        explicit.insert(path.clone(), verdict::DENY);
    }
    let mut expected: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
    for (path, v) in &explicit {
        expected.insert(stored(path), *v);
        if let RulePath::Subtree(s) = path
            && let Some(dir) = implied(s)
            && !explicit.contains_key(&dir)
        {
            // Two subtrees never imply the same directory.
            assert!(expected.insert(stored(&dir), *v).is_none());
        }
    }
    let mut got = Vec::new();
    for (len, key, rule) in &c.exec_rules {
        assert!(is_verdict(rule.verdict), "exec verdict {}", rule.verdict);
        got.push((key_bytes(*len, key), rule.verdict));
    }
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "exec entries not sorted and unique"
    );
    let got: BTreeMap<Vec<u8>, u8> = got.into_iter().collect();
    assert_eq!(got, expected, "exec entries differ from the listed paths");
}

/// The verdict of one access kind for the entry of `path`, as `enforcerd::compile` documents
/// it: an exact rule on the same path, else the longest covering subtree (the subtree `/d/`
/// covers `/d`), else the default.
fn reference(rules: &[FileRuleSpec], default: Verdict, path: &RulePath, write: bool) -> u8 {
    let decides = |r: &FileRuleSpec| if write { r.write } else { r.read };
    if let RulePath::Exact(_) = path
        && let Some(r) = rules.iter().find(|r| r.path == *path && decides(r))
    {
        return code(r.action);
    }
    let dir = match path {
        RulePath::Exact(p) => format!("{p}/"),
        RulePath::Subtree(s) => s.clone(),
    };
    rules
        .iter()
        .filter(|r| r.path.is_subtree() && decides(r) && dir.starts_with(r.path.as_str()))
        .max_by_key(|r| r.path.as_str().len())
        .map_or(code(default), |r| code(r.action))
}

fn check_files(p: &Profile, c: &CompiledProfile) {
    let rules = &p.files.rules;
    let mut paths: BTreeSet<RulePath> = rules.iter().map(|r| r.path.clone()).collect();
    let implied_dirs: Vec<RulePath> = paths
        .iter()
        .filter_map(|path| match path {
            RulePath::Subtree(s) => implied(s),
            RulePath::Exact(_) => None,
        })
        .collect();
    paths.extend(implied_dirs);

    let mut got = Vec::new();
    for (len, key, rule) in &c.file_rules {
        assert!(is_verdict(rule.read), "file read verdict {}", rule.read);
        assert!(is_verdict(rule.write), "file write verdict {}", rule.write);
        assert!(rule.beneath <= 1, "file marker flag {}", rule.beneath);
        got.push((key_bytes(*len, key), (rule.read, rule.write, rule.beneath)));
    }
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "file entries not sorted and unique"
    );
    let got: BTreeMap<Vec<u8>, (u8, u8, u8)> = got.into_iter().collect();

    let mut expected: BTreeMap<Vec<u8>, (u8, u8, u8)> = BTreeMap::new();
    for path in &paths {
        // An implied directory `/d` resolves like `/d/` unless an exact rule names it: the
        // reference covers that, as `/d/` is then the longest subtree covering `/d`.
        let v = (
            reference(rules, p.files.default, path, false),
            reference(rules, p.files.default, path, true),
            0,
        );
        expected.insert(stored(path), v);
    }
    // Directory markers: `D/` + NUL for every directory `D/` other than `/` strictly above a
    // file or exec rule path, with the verdicts of the subtree `D/`.
    let rule_paths = rules
        .iter()
        .map(|r| &r.path)
        .chain(&p.exec.allow)
        .chain(&p.exec.deny);
    for path in rule_paths {
        let s = path.as_str();
        let own = s.strip_suffix('/').unwrap_or(s);
        for (i, _) in own.match_indices('/').filter(|(i, _)| *i > 0) {
            let dir = RulePath::Subtree(own[..=i].to_owned());
            let v = (
                reference(rules, p.files.default, &dir, false),
                reference(rules, p.files.default, &dir, true),
                1,
            );
            let mut key = own[..=i].as_bytes().to_vec();
            key.push(0);
            let previous = expected.insert(key, v);
            assert!(previous.is_none_or(|p| p == v), "a marker collides with a rule entry");
        }
    }
    assert_eq!(
        got, expected,
        "file entries differ from the most-specific-rule resolution"
    );
}

fn check_net(p: &Profile, c: &CompiledProfile) {
    // Expected entries: allow first, then deny overriding (deny wins on the same key).
    let mut expected: BTreeMap<(u8, u8, u16, [u8; 16], u8), u8> = BTreeMap::new();
    let lists = [
        (&p.network.connect.allow, verdict::ALLOW),
        (&p.network.connect.deny, verdict::DENY),
    ];
    for (rules, v) in lists {
        for rule in rules {
            let (fam, addr, bits) = match rule.cidr {
                IpNet::V4(n) => {
                    let mut a = [0u8; 16];
                    a[..4].copy_from_slice(&n.network().octets());
                    (family::IPV4, a, n.prefix_len())
                }
                IpNet::V6(n) => (family::IPV6, n.network().octets(), n.prefix_len()),
            };
            let ports = if rule.ports.is_empty() {
                vec![0]
            } else {
                rule.ports.clone()
            };
            for proto in &rule.protocols {
                let proto = match proto {
                    Protocol::Tcp => protocol::TCP,
                    Protocol::Udp => protocol::UDP,
                };
                for port in &ports {
                    expected.insert((proto, fam, *port, addr, bits), v);
                }
            }
        }
    }

    let mut got = Vec::new();
    for (len, key, rule) in &c.net_rules {
        assert_eq!(
            key.profile_id,
            ID.to_be_bytes(),
            "net key with the wrong profile id"
        );
        assert!(is_verdict(rule.verdict), "net verdict {}", rule.verdict);
        assert!(*len <= 192, "net prefix_len {len} > 192");
        assert_eq!(
            *len,
            64 + u32::from(rule.cidr_len),
            "net prefix_len {len} vs cidr_len"
        );
        assert!(
            key.protocol == protocol::TCP || key.protocol == protocol::UDP,
            "net protocol {}",
            key.protocol
        );
        let max = match key.family {
            family::IPV4 => 32,
            family::IPV6 => 128,
            f => panic!("net family {f}"),
        };
        assert!(
            rule.cidr_len <= max,
            "cidr_len {} for family {}",
            rule.cidr_len,
            key.family
        );
        if key.family == family::IPV4 {
            assert!(
                key.addr[4..].iter().all(|b| *b == 0),
                "IPv4 key with bytes past 4"
            );
        }
        // Host bits are zero.
        let addr = u128::from_be_bytes(key.addr);
        let bits = u32::from(rule.cidr_len);
        let used = if key.family == family::IPV4 { 32 } else { 128 };
        let host = if key.family == family::IPV4 {
            addr >> 96
        } else {
            addr
        };
        let host_mask = u128::MAX.checked_shr(128 - (used - bits)).unwrap_or(0);
        assert_eq!(
            host & host_mask,
            0,
            "net key with host bits set: {key:?}/{bits}"
        );
        got.push((
            (
                key.protocol,
                key.family,
                u16::from_be_bytes(key.port),
                key.addr,
                rule.cidr_len,
            ),
            rule.verdict,
        ));
    }
    assert!(
        got.windows(2).all(|w| w[0].0 < w[1].0),
        "net entries not sorted and unique"
    );
    let got: BTreeMap<_, _> = got.into_iter().collect();
    assert_eq!(got, expected, "net entries differ from the rules");
}
