use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

const FILE: &str = "/etc/enforcerd/profiles.d/test.yaml";

fn parse_str(yaml: &str) -> Result<Profile, Diagnostic> {
    parse(Path::new(FILE), yaml.as_bytes())
}

fn ok(yaml: &str) -> Profile {
    match parse_str(yaml) {
        Ok(p) => p,
        Err(d) => panic!("expected the profile to parse, got: {d}\n{yaml}"),
    }
}

fn err(yaml: &str) -> Diagnostic {
    match parse_str(yaml) {
        Ok(p) => panic!("expected a diagnostic, got: {p:?}\n{yaml}"),
        Err(d) => d,
    }
}

/// Asserts the diagnostic's position and that its message contains `needle`.
fn assert_diag(d: &Diagnostic, line: usize, column: usize, needle: &str) {
    assert_eq!(
        (d.line, d.column),
        (Some(line), Some(column)),
        "wrong position for: {d}"
    );
    assert!(
        d.message.contains(needle),
        "`{}` does not contain `{needle}`",
        d.message
    );
    assert!(
        !d.message.contains(" at line "),
        "position repeated in: {}",
        d.message
    );
}

/// A valid profile; `spec` lines (indented by two spaces) start at line 9.
fn with_spec(spec: &str) -> String {
    format!(
        "apiVersion: enforcerd/v1\nkind: Profile\nmetadata:\n  name: test\n  serial: 1\nspec:\n  \
         selector:\n    cgroup: /test.slice\n{spec}"
    )
}

/// A profile whose selector is `selector` (lines from 8, indented by four spaces).
fn with_selector(selector: &str) -> String {
    format!(
        "apiVersion: enforcerd/v1\nkind: Profile\nmetadata:\n  name: test\n  serial: 1\nspec:\n  \
         selector:\n{selector}"
    )
}

const SPEC_EXAMPLE: &str = r#"apiVersion: enforcerd/v1
kind: Profile
metadata:
  name: web-frontend        # DNS-1123 label, unique among loaded profiles
  serial: 3                 # u64; lower than the serial already applied for this name => refused
spec:
  selector:                 # exactly one key
    cgroup: /system.slice/nginx.service          # cgroup v2 path below the cgroup2 mount
    # systemdUnit: nginx.service
    # kubernetes: {namespace: web, podLabels: {app: nginx}, container: nginx}
  mode: enforce             # enforce | audit   (audit = dry run: report, never block)
  onViolation: deny         # deny (EPERM) | kill (SIGKILL the offending process, and EPERM)
  exec:
    default: deny           # posture for binaries no rule names: deny = allowlist
    allow: [/usr/sbin/nginx, /usr/bin/]          # trailing "/" = the whole subtree
    deny: []
  files:
    default: allow
    rules:
      - {path: /etc/shadow, access: [read, write], action: deny}
      - {path: /var/www/, access: [write], action: deny}
      - {path: /var/www/uploads/, access: [write], action: allow}
  network:
    connect:
      default: deny
      allow:
        - {cidr: 127.0.0.0/8}
        - {cidr: 10.0.0.0/8, ports: [5432], protocol: tcp}
        - {cidr: "::1/128"}
      deny: []
"#;

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn exact(p: &str) -> RulePath {
    RulePath::Exact(p.into())
}

fn subtree(p: &str) -> RulePath {
    RulePath::Subtree(p.into())
}

#[test]
fn profile_spec_example_parses() {
    let p = ok(SPEC_EXAMPLE);
    assert_eq!(p.source, PathBuf::from(FILE));
    assert_eq!(p.name, "web-frontend");
    assert_eq!(p.serial, 3);
    assert_eq!(
        p.selector,
        Selector::Cgroup("/system.slice/nginx.service".into())
    );
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.on_violation, OnViolation::Deny);
    assert_eq!(
        p.exec,
        ExecPolicy {
            default: Verdict::Deny,
            allow: vec![exact("/usr/sbin/nginx"), subtree("/usr/bin/")],
            deny: vec![],
        }
    );
    assert_eq!(
        p.files,
        FilePolicy {
            default: Verdict::Allow,
            rules: vec![
                FileRuleSpec {
                    path: exact("/etc/shadow"),
                    read: true,
                    write: true,
                    action: Verdict::Deny
                },
                FileRuleSpec {
                    path: subtree("/var/www/"),
                    read: false,
                    write: true,
                    action: Verdict::Deny
                },
                FileRuleSpec {
                    path: subtree("/var/www/uploads/"),
                    read: false,
                    write: true,
                    action: Verdict::Allow
                },
            ],
        }
    );
    let both = vec![Protocol::Tcp, Protocol::Udp];
    assert_eq!(
        p.network.connect,
        ConnectPolicy {
            default: Verdict::Deny,
            allow: vec![
                NetRuleSpec {
                    cidr: net("127.0.0.0/8"),
                    ports: vec![],
                    protocols: both.clone()
                },
                NetRuleSpec {
                    cidr: net("10.0.0.0/8"),
                    ports: vec![5432],
                    protocols: vec![Protocol::Tcp]
                },
                NetRuleSpec {
                    cidr: net("::1/128"),
                    ports: vec![],
                    protocols: both
                },
            ],
            deny: vec![],
        }
    );
}

#[test]
fn profile_sha256_is_of_the_exact_bytes() {
    let p = ok(SPEC_EXAMPLE);
    assert_eq!(p.sha256, sha256(SPEC_EXAMPLE.as_bytes()));
    assert!(p.sha256.starts_with("sha256:"));
    assert_eq!(p.sha256.len(), "sha256:".len() + 64);
    // A comment changes the identity.
    let q = ok(&format!("{SPEC_EXAMPLE}# comment\n"));
    assert_ne!(p.sha256, q.sha256);
    assert_eq!(
        sha256(b"abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn profile_absent_sections_allow_everything() {
    let p = ok(&with_spec(""));
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.on_violation, OnViolation::Deny);
    assert_eq!(p.exec, ExecPolicy::default());
    assert_eq!(p.exec.default, Verdict::Allow);
    assert_eq!(p.files.default, Verdict::Allow);
    assert!(p.files.rules.is_empty());
    assert_eq!(p.network.connect.default, Verdict::Allow);
    assert!(p.network.connect.allow.is_empty() && p.network.connect.deny.is_empty());
}

#[test]
fn profile_with_audit_forces_audit_mode() {
    let p = ok(&with_spec("  mode: enforce\n  onViolation: kill\n"));
    assert_eq!((p.mode, p.on_violation), (Mode::Enforce, OnViolation::Kill));
    let a = p.clone().with_audit();
    assert_eq!(a.mode, Mode::Audit);
    assert_eq!(a.on_violation, OnViolation::Kill);
    assert_eq!(a.name, p.name);
    assert_eq!(ok(&with_spec("  mode: audit\n")).mode, Mode::Audit);
}

#[test]
fn profile_diagnostic_display() {
    let d = Diagnostic::new(Path::new("a.yaml"), Some((3, 7)), "bad");
    assert_eq!(d.to_string(), "a.yaml:3:7: bad");
    let d = Diagnostic::new(Path::new("a.yaml"), None, "bad");
    assert_eq!(d.to_string(), "a.yaml: bad");
}

#[test]
fn profile_api_version_and_kind() {
    let d = err(&SPEC_EXAMPLE.replace("enforcerd/v1", "enforcerd/v2"));
    assert_diag(
        &d,
        1,
        13,
        "unsupported apiVersion `enforcerd/v2`; expected `enforcerd/v1`",
    );
    assert_eq!(
        d.to_string(),
        format!(
            "{FILE}:1:13: apiVersion: unsupported apiVersion `enforcerd/v2`; expected `enforcerd/v1`"
        )
    );
    let d = err(&SPEC_EXAMPLE.replace("kind: Profile", "kind: Policy"));
    assert_diag(&d, 2, 7, "unsupported kind `Policy`; expected `Profile`");
    let d = err(&SPEC_EXAMPLE.replace("kind: Profile\n", ""));
    assert_diag(&d, 1, 1, "missing field `kind`");
}

#[test]
fn profile_name_must_be_a_dns_label() {
    for (name, why) in [
        ("Web", "`W` is not allowed"),
        ("web_frontend", "`_` is not allowed"),
        ("-web", "starts and ends"),
        ("web-", "starts and ends"),
        ("\"\"", "empty"),
        (&"a".repeat(64), "64 characters long"),
    ] {
        let d = err(&with_spec("").replace("name: test", &format!("name: {name}")));
        assert_diag(&d, 4, 9, why);
        assert!(
            d.message.starts_with("metadata.name: invalid profile name"),
            "{d}"
        );
    }
    ok(&with_spec("").replace("name: test", &format!("name: {}", "a".repeat(63))));
    ok(&with_spec("").replace("name: test", "name: 0-web-1"));
}

#[test]
fn profile_serial_is_a_required_u64() {
    let d = err(&with_spec("").replace("  serial: 1\n", ""));
    assert_diag(&d, 4, 3, "metadata: missing field `serial`");
    let d = err(&with_spec("").replace("serial: 1", "serial: -1"));
    assert_diag(&d, 5, 11, "expected u64");
    let d = err(&with_spec("").replace("serial: 1", "serial: one"));
    assert_diag(&d, 5, 11, "expected u64");
    let p = ok(&with_spec("").replace("serial: 1", "serial: 18446744073709551615"));
    assert_eq!(p.serial, u64::MAX);
}

#[test]
fn profile_selector_needs_exactly_one_kind() {
    let d = err(&with_selector(
        "    cgroup: /a.slice\n    systemdUnit: a.service\n",
    ));
    assert_diag(
        &d,
        8,
        5,
        "the selector has cgroup and systemdUnit; give exactly one",
    );
    let d = err(&with_selector("    {}\n"));
    assert_diag(&d, 8, 5, "the selector names no workload");
    let d = err(&with_selector("    cgroups: /a\n"));
    assert_diag(&d, 8, 5, "unknown field `cgroups`");
    let d = err(&with_selector("    /a.slice\n"));
    assert_diag(&d, 8, 5, "expected a selector");
}

#[test]
fn profile_cgroup_selector() {
    let sel = |s: &str| ok(&with_selector(&format!("    cgroup: {s}\n"))).selector;
    assert_eq!(sel("/"), Selector::Cgroup("/".into()));
    assert_eq!(
        sel("/kubepods.slice/kubepods-burstable.slice"),
        Selector::Cgroup("/kubepods.slice/kubepods-burstable.slice".into())
    );
    for (path, why) in [
        ("system.slice", "is not absolute"),
        ("/system.slice/", "must not end with `/`"),
        ("/system.slice/../x", "contains a `..` component"),
        ("/a//b", "contains `//`"),
        ("\"\"", "cgroup path is empty"),
    ] {
        let d = err(&with_selector(&format!("    cgroup: {path}\n")));
        assert_diag(&d, 8, 13, why);
    }
    let deep = "/a".repeat(enforcerd_common::MAX_CGROUP_LEVELS - 1);
    sel(&deep);
    let d = err(&with_selector(&format!("    cgroup: {deep}/b\n")));
    assert_diag(
        &d,
        8,
        13,
        "is 32 levels deep; enforcerd governs cgroups up to level 31",
    );
}

#[test]
fn profile_systemd_unit_selector() {
    let sel = |s: &str| ok(&with_selector(&format!("    systemdUnit: {s}\n"))).selector;
    assert_eq!(
        sel("nginx.service"),
        Selector::SystemdUnit("nginx.service".into())
    );
    sel("getty@tty1.service");
    sel("session-3.scope");
    sel("machine.slice");
    for (unit, why) in [
        ("system.slice/nginx.service", "contains `/`"),
        ("nginx", "has no unit type suffix"),
        ("backup.timer", "`.timer` units have no cgroup"),
        ("multi-user.target", "`.target` units have no cgroup"),
        ("getty@.service", "is a template"),
        (".service", "empty name"),
        ("a b.service", "` ` is not allowed"),
    ] {
        let d = err(&with_selector(&format!("    systemdUnit: \"{unit}\"\n")));
        assert_diag(&d, 8, 18, why);
    }
}

#[test]
fn profile_kubernetes_selector() {
    let p = ok(&with_selector(
        "    kubernetes:\n      namespace: web\n      podLabels:\n        app: nginx\n        \
         app.kubernetes.io/part-of: shop\n        tier: \"\"\n        version: 2\n      container: nginx\n",
    ));
    let labels: BTreeMap<String, String> = [
        ("app", "nginx"),
        ("app.kubernetes.io/part-of", "shop"),
        ("tier", ""),
        ("version", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(
        p.selector,
        Selector::Kubernetes {
            namespace: "web".into(),
            pod_labels: labels,
            container: Some("nginx".into()),
        }
    );
    assert_eq!(
        p.selector.to_string(),
        "kubernetes namespace web pods app=nginx,app.kubernetes.io/part-of=shop,tier=,version=2 container nginx"
    );
    let p = ok(&with_selector(
        "    kubernetes: {namespace: web, podLabels: {app: nginx}}\n",
    ));
    assert!(matches!(
        p.selector,
        Selector::Kubernetes {
            container: None,
            ..
        }
    ));

    let d = err(&with_selector(
        "    kubernetes: {podLabels: {app: nginx}}\n",
    ));
    assert_diag(&d, 8, 17, "missing field `namespace`");
    let d = err(&with_selector(
        "    kubernetes: {namespace: web, podLabels: {}}\n",
    ));
    assert_diag(&d, 8, 45, "podLabels is empty");
    let d = err(&with_selector("    kubernetes: {namespace: web}\n"));
    assert_diag(&d, 8, 17, "missing field `podLabels`");
    let d = err(&with_selector(
        "    kubernetes: {namespace: Web, podLabels: {app: x}}\n",
    ));
    assert_diag(&d, 8, 29, "invalid namespace `Web`");
    let d = err(&with_selector(
        "    kubernetes: {namespace: web, podLabels: {-app: x}}\n",
    ));
    assert_diag(&d, 8, 46, "label key `-app`");
    let d = err(&with_selector(
        "    kubernetes: {namespace: web, podLabels: {app: x y}}\n",
    ));
    assert_diag(&d, 8, 51, "label value `x y`");
    let d = err(&with_selector(
        "    kubernetes: {namespace: web, podLabels: {app: x}, container: My_C}\n",
    ));
    assert_diag(&d, 8, 66, "invalid container name `My_C`");
    let d = err(&with_selector("    kubernetes:\n"));
    assert_diag(
        &d,
        8,
        16,
        "spec.selector.kubernetes: missing field `namespace`",
    );
}

#[test]
fn profile_rule_paths() {
    let p = ok(&with_spec(
        "  exec:\n    default: deny\n    allow: [/usr/bin/env, /usr/lib/, /, /a/.hidden, /a/..b]\n",
    ));
    assert_eq!(
        p.exec.allow,
        vec![
            exact("/usr/bin/env"),
            subtree("/usr/lib/"),
            subtree("/"),
            exact("/a/.hidden"),
            exact("/a/..b")
        ]
    );
    for (path, why) in [
        (
            "usr/bin/env",
            "path `usr/bin/env` is not absolute: it must start with `/`",
        ),
        (
            "/usr/../bin",
            "path `/usr/../bin` is not normalized: it contains a `..` component",
        ),
        ("/usr/./bin", "contains a `.` component"),
        ("/usr/bin/.", "contains a `.` component"),
        ("/usr/bin/..", "contains a `..` component"),
        ("/usr//bin", "is not normalized: it contains `//`"),
        ("\"/usr/\\0bin\"", "contains a NUL byte"),
        ("\"\"", "path is empty"),
    ] {
        let d = err(&with_spec(&format!(
            "  exec:\n    default: deny\n    allow:\n      - {path}\n"
        )));
        assert_diag(&d, 12, 9, why);
        assert!(d.message.starts_with("spec.exec.allow[0]: "), "{d}");
    }
}

#[test]
fn profile_rule_path_length_bounds() {
    let files = |path: &str| {
        with_spec(&format!(
            "  files:\n    default: allow\n    rules:\n      - path: {path}\n        access: [read]\n        action: deny\n"
        ))
    };
    // Exact: at most 251 bytes (252 with the NUL terminator).
    let exact_ok = format!("/{}", "a".repeat(250));
    assert_eq!(exact_ok.len(), 251);
    ok(&files(&exact_ok));
    let d = err(&files(&format!("{exact_ok}b")));
    assert_diag(
        &d,
        12,
        15,
        "exact path is 252 bytes long; an exact rule holds at most 251 bytes (plus its NUL terminator)",
    );
    // Subtree: at most 252 bytes, trailing slash included.
    let subtree_ok = format!("/{}/", "a".repeat(250));
    assert_eq!(subtree_ok.len(), 252);
    ok(&files(&subtree_ok));
    let d = err(&files(&format!("/{}/", "a".repeat(251))));
    assert_diag(
        &d,
        12,
        15,
        "subtree path is 253 bytes long; a subtree rule holds at most 252 bytes",
    );
    // Bytes, not characters.
    let d = err(&files(&format!("/{}", "é".repeat(126))));
    assert_diag(&d, 12, 15, "exact path is 253 bytes long");
}

#[test]
fn profile_sections_require_default() {
    let d = err(&with_spec("  exec:\n    allow: [/usr/bin/]\n"));
    assert_diag(&d, 10, 5, "spec.exec: missing field `default`");
    assert!(d.message.contains("states its default posture"), "{d}");
    let d = err(&with_spec("  files:\n    rules: []\n"));
    assert_diag(&d, 10, 5, "spec.files: missing field `default`");
    let d = err(&with_spec("  network:\n    connect:\n      allow: []\n"));
    assert_diag(&d, 11, 7, "spec.network.connect: missing field `default`");
    let d = err(&with_spec("  network: {}\n"));
    assert_diag(&d, 9, 12, "missing field `connect`");
    let d = err(&with_spec("  exec:\n    default: maybe\n"));
    assert_diag(
        &d,
        10,
        14,
        "unknown variant `maybe`, expected `allow` or `deny`",
    );
    // A present but empty section is refused, not read as "absent, allow everything".
    let d = err(&with_spec("  exec:\n  files:\n    default: allow\n"));
    assert_diag(&d, 9, 8, "spec.exec: missing field `default`");
    // Default only: valid.
    let p = ok(&with_spec(
        "  exec: {default: deny}\n  files: {default: deny}\n  network: {connect: {default: deny}}\n",
    ));
    assert_eq!(
        (p.exec.default, p.files.default, p.network.connect.default),
        (Verdict::Deny, Verdict::Deny, Verdict::Deny)
    );
}

#[test]
fn profile_mode_and_on_violation_values() {
    let d = err(&with_spec("  mode: permissive\n"));
    assert_diag(
        &d,
        9,
        9,
        "unknown variant `permissive`, expected `enforce` or `audit`",
    );
    let d = err(&with_spec("  onViolation: block\n"));
    assert_diag(
        &d,
        9,
        16,
        "unknown variant `block`, expected `deny` or `kill`",
    );
    let d = err(&with_spec("  on_violation: kill\n"));
    assert_diag(&d, 9, 3, "unknown field `on_violation`");
}

#[test]
fn profile_unknown_fields_and_wrong_types_are_refused() {
    let d = err(&SPEC_EXAMPLE.replace("  serial: 3", "  serial: 3\n  labels: {}"));
    assert_diag(
        &d,
        6,
        3,
        "metadata: unknown field `labels`, expected `name` or `serial`",
    );
    let d = err(&SPEC_EXAMPLE.replace(
        "      default: deny\n",
        "      default: deny\n      log: true\n",
    ));
    assert_diag(&d, 26, 7, "spec.network.connect: unknown field `log`");
    let d = err(&SPEC_EXAMPLE.replace(
        "access: [write], action: deny",
        "access: [write], action: deny, recursive: true",
    ));
    assert_diag(&d, 21, 58, "unknown field `recursive`");
    let d = err(&with_spec(
        "  exec:\n    default: deny\n    allow: /usr/bin/\n",
    ));
    assert_diag(
        &d,
        11,
        12,
        "invalid type: string \"/usr/bin/\", expected a sequence",
    );
    let d = err(&with_spec("").replace("metadata:\n  name: test\n  serial: 1\n", "metadata: []\n"));
    assert_diag(
        &d,
        3,
        11,
        "expected metadata: a mapping with name and serial",
    );
    let d = err(&with_spec("").replace("  name: test\n", "  name: test\n  name: other\n"));
    assert_diag(&d, 4, 3, "duplicate field `name`");
    let d = err("- a\n- b\n");
    assert_diag(&d, 1, 1, "expected a profile");
}

#[test]
fn profile_yaml_syntax_errors_have_positions() {
    let d = err(&with_spec(
        "  exec:\n    default: deny\n    allow: [/usr/bin/\n",
    ));
    assert_eq!(d.line, Some(12), "{d}");
    assert!(d.message.contains("while parsing a flow sequence"), "{d}");
    assert!(
        d.message.starts_with("did not find expected ',' or ']'"),
        "{d}"
    );
    assert!(!d.message.starts_with(" at line 12 "), "{d}");
    let d = err("apiVersion: \"enforcerd/v1\nkind: Profile\n");
    assert_eq!(d.line, Some(3), "{d}");
    assert!(d.message.contains("while scanning a quoted scalar"), "{d}");
}

#[test]
fn profile_file_level_errors() {
    let d = err(&format!("{SPEC_EXAMPLE}---\n{SPEC_EXAMPLE}"));
    assert_eq!((d.line, d.column), (None, None));
    assert!(d.message.contains("more than one document"), "{d}");
    assert_eq!(d.to_string(), format!("{FILE}: {}", d.message));
    let d = err("");
    assert_eq!(
        d.to_string(),
        format!("{FILE}: the file is empty; expected a `Profile` document")
    );
    let d = err(" \n\n");
    assert!(d.message.contains("the file is empty"));
    let d = parse(Path::new(FILE), b"apiVersion: \xff\n").unwrap_err();
    assert!(d.to_string().starts_with(FILE), "{d}");
}

#[test]
fn profile_exec_path_in_both_lists() {
    let d = err(&with_spec(
        "  exec:\n    default: deny\n    allow: [/usr/bin/, /usr/sbin/nginx]\n    deny:\n      - /usr/bin/curl\n      - /usr/sbin/nginx\n",
    ));
    assert_diag(
        &d,
        14,
        9,
        "spec.exec.deny[1]: `/usr/sbin/nginx` is listed in both exec.allow and exec.deny",
    );
    // Exact and subtree forms of one directory are different rules.
    ok(&with_spec(
        "  exec:\n    default: deny\n    allow: [/opt/app/]\n    deny: [/opt/app]\n",
    ));
    // Repeats within one list are harmless and dropped.
    let p = ok(&with_spec(
        "  exec:\n    default: deny\n    allow: [/bin/sh, /bin/sh]\n",
    ));
    assert_eq!(p.exec.allow, vec![exact("/bin/sh")]);
}

#[test]
fn profile_file_rules() {
    let rule = |access: &str| {
        with_spec(&format!(
            "  files:\n    default: deny\n    rules:\n      - {{path: /etc/, access: {access}, action: allow}}\n"
        ))
    };
    let p = ok(&rule("[write, read]"));
    assert_eq!(
        p.files.rules,
        vec![FileRuleSpec {
            path: subtree("/etc/"),
            read: true,
            write: true,
            action: Verdict::Allow
        }]
    );
    let d = err(&rule("[]"));
    assert_diag(&d, 12, 31, "access is empty");
    let d = err(&rule("[read, read]"));
    assert_diag(&d, 12, 31, "access `read` is listed twice");
    let d = err(&rule("[execute]"));
    assert_diag(
        &d,
        12,
        32,
        "unknown variant `execute`, expected `read` or `write`",
    );
    let d = err(&rule("read"));
    assert_diag(&d, 12, 31, "expected a list of access kinds");
    let d = err(&with_spec(
        "  files:\n    default: deny\n    rules:\n      - {path: /etc/, access: [read]}\n",
    ));
    assert_diag(&d, 12, 9, "missing field `action`");
}

#[test]
fn profile_file_rules_for_the_same_path_and_access_are_ambiguous() {
    let d = err(&with_spec(
        "  files:\n    default: allow\n    rules:\n      - {path: /srv/, access: [read], action: deny}\n      \
         - {path: /etc/, access: [write], action: deny}\n      - {path: /srv/, access: [write, read], action: allow}\n",
    ));
    assert_diag(
        &d,
        14,
        16,
        "spec.files.rules[2]: `/srv/` already has a rule for read access (spec.files.rules[0]); two rules for the same path and access are ambiguous",
    );
    // Different access kinds on one path combine.
    let p = ok(&with_spec(
        "  files:\n    default: allow\n    rules:\n      - {path: /srv/, access: [read], action: allow}\n      \
         - {path: /srv/, access: [write], action: deny}\n",
    ));
    assert_eq!(p.files.rules.len(), 2);
}

fn connect(entries: &str) -> String {
    with_spec(&format!(
        "  network:\n    connect:\n      default: deny\n      allow:\n{entries}"
    ))
}

#[test]
fn profile_connect_rules() {
    let p = ok(&connect(
        "        - {cidr: 10.1.2.3/8, ports: [443, 80, 443], protocol: udp}\n        - {cidr: 192.168.1.7}\n        \
         - {cidr: \"fd00::1/8\"}\n        - {cidr: \"::ffff:10.0.0.0/104\", ports: [53]}\n        - {cidr: \"::ffff:1.2.3.4\"}\n        \
         - {cidr: \"::/0\"}\n",
    ));
    let rules = &p.network.connect.allow;
    assert_eq!(
        rules[0],
        NetRuleSpec {
            cidr: net("10.0.0.0/8"),
            ports: vec![80, 443],
            protocols: vec![Protocol::Udp]
        }
    );
    assert_eq!(rules[1].cidr, net("192.168.1.7/32"));
    assert_eq!(rules[1].protocols, vec![Protocol::Tcp, Protocol::Udp]);
    assert_eq!(rules[2].cidr, net("fd00::/8"));
    // IPv4-mapped IPv6 networks are matched as IPv4.
    assert_eq!(rules[3].cidr, net("10.0.0.0/8"));
    assert_eq!(rules[3].ports, vec![53]);
    assert_eq!(rules[4].cidr, net("1.2.3.4/32"));
    assert_eq!(rules[5].cidr, net("::/0"));
    assert_eq!(normalize_net(net("::ffff:0:0/96")), net("0.0.0.0/0"));
    assert_eq!(normalize_net(net("::ffff:0:0/95")), net("::fffe:0:0/95"));
}

#[test]
fn profile_connect_rule_errors() {
    for (entry, column, why) in [
        ("{cidr: 10.0.0.0/33}", 18, "invalid CIDR `10.0.0.0/33`"),
        ("{cidr: 10.0.0/8}", 18, "invalid CIDR `10.0.0/8`"),
        ("{cidr: example.com}", 18, "invalid CIDR `example.com`"),
        (
            "{cidr: 10.0.0.0/8, ports: [0]}",
            38,
            "port 0 is out of range; ports are 1 to 65535",
        ),
        (
            "{cidr: 10.0.0.0/8, ports: [80, 65536]}",
            42,
            "port 65536 is out of range",
        ),
        (
            "{cidr: 10.0.0.0/8, ports: [-1]}",
            38,
            "invalid type: integer `-1`, expected a port number (1 to 65535)",
        ),
        (
            "{cidr: 10.0.0.0/8, ports: [http]}",
            38,
            "expected a port number",
        ),
        (
            "{cidr: 10.0.0.0/8, ports: []}",
            37,
            "ports is empty; leave `ports` out to match every port",
        ),
        (
            "{cidr: 10.0.0.0/8, protocol: icmp}",
            40,
            "unknown variant `icmp`, expected `tcp` or `udp`",
        ),
        ("{cidr: 10.0.0.0/8, port: 80}", 30, "unknown field `port`"),
        ("{ports: [80]}", 11, "missing field `cidr`"),
    ] {
        let d = err(&connect(&format!("        - {entry}\n")));
        assert_diag(&d, 13, column, why);
    }
    let d = err(&connect("        - {cidr: 10.0.0.0/8, ports: [0]}\n"));
    assert!(
        d.message
            .starts_with("spec.network.connect.allow[0].ports[0]: "),
        "{d}"
    );
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn named(name: &str) -> String {
    with_spec("").replace("name: test", &format!("name: {name}"))
}

#[test]
fn profile_load_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.yaml", SPEC_EXAMPLE);
    let p = load_file(&path).unwrap();
    assert_eq!(p.source, path);
    assert_eq!(p, parse(&path, SPEC_EXAMPLE.as_bytes()).unwrap());
    let missing = dir.path().join("missing.yaml");
    let d = load_file(&missing).unwrap_err();
    assert_eq!((d.line, d.column), (None, None));
    assert_eq!(d.file, missing);
    assert!(
        d.to_string()
            .starts_with(&format!("{}: cannot read the profile: ", missing.display())),
        "{d}"
    );
}

#[test]
fn profile_load_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "b.yml", &named("bravo"));
    write(d, "a.yaml", &named("alpha"));
    write(d, "a.yaml.sig", "untrusted comment: x\n");
    write(d, "README.md", "# notes\n");
    write(d, ".hidden.yaml", "not: [valid");
    write(d, "c.yaml.bak", "not: [valid");
    let bad = write(d, "c.yaml", "apiVersion: enforcerd/v9\n");
    // "d.yaml" reuses alpha's name: refused at its `name:` value, naming a.yaml.
    let dup = write(d, "d.yaml", &named("alpha"));
    write(d, "e.yaml", &named("echo"));
    std::fs::create_dir(d.join("sub.yaml")).unwrap();
    write(&d.join("sub.yaml"), "x.yaml", &named("nested"));

    let (profiles, diags) = load_dir(d);
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["alpha", "bravo", "echo"]);
    assert_eq!(profiles[0].source, d.join("a.yaml"));
    assert_eq!(diags.len(), 2, "{diags:?}");
    assert_eq!(diags[0].file, bad);
    assert_eq!((diags[0].line, diags[0].column), (Some(1), Some(13)));
    assert_eq!(diags[1].file, dup);
    assert_eq!(
        diags[1].to_string(),
        format!(
            "{}:4:9: metadata.name: profile name `alpha` is already used by {}; names must be unique",
            dup.display(),
            d.join("a.yaml").display()
        )
    );
    assert_eq!(
        profile_files(d).unwrap(),
        ["a.yaml", "b.yml", "c.yaml", "d.yaml", "e.yaml"].map(|f| d.join(f))
    );

    let (profiles, diags) = load_dir(&d.join("nope"));
    assert!(profiles.is_empty());
    assert_eq!(diags.len(), 1);
    assert!(
        diags[0]
            .message
            .starts_with("cannot read the profile directory")
    );
}

#[test]
fn profile_name_position_follows_the_document() {
    assert_eq!(name_position(SPEC_EXAMPLE.as_bytes()), Some((4, 9)));
    assert_eq!(
        name_position(b"metadata: {serial: 1, name: x}\n"),
        Some((1, 29))
    );
    assert_eq!(name_position(b"metadata: {serial: 1}\n"), None);
    assert_eq!(name_position(b"[1, 2]\n"), None);
    assert_eq!(
        locate::locate(
            SPEC_EXAMPLE.as_bytes(),
            &[
                Seg::Key("spec"),
                Seg::Key("files"),
                Seg::Key("rules"),
                Seg::Index(1),
                Seg::Key("access")
            ]
        ),
        Some((21, 35))
    );
    assert_eq!(
        locate::locate(
            SPEC_EXAMPLE.as_bytes(),
            &[
                Seg::Key("spec"),
                Seg::Key("exec"),
                Seg::Key("allow"),
                Seg::Index(5)
            ]
        ),
        None
    );
}

#[test]
fn profile_large_profiles_parse() {
    let mut yaml = with_spec("  files:\n    default: allow\n    rules:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!(
            "      - {{path: /srv/data/{i}/, access: [write], action: deny}}\n"
        ));
    }
    let start = std::time::Instant::now();
    let p = ok(&yaml);
    assert_eq!(p.files.rules.len(), 10_000);
    eprintln!("parsed 10,000 file rules in {:?}", start.elapsed());
}

// ---------------------------------------------------------------------------------------------
// The example profiles shipped in profiles/.

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles")
}

#[test]
fn profile_examples_all_parse() {
    let files = profile_files(&examples_dir()).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    let (profiles, diags) = load_dir(&examples_dir());
    assert!(
        diags.is_empty(),
        "{}",
        diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(profiles.len(), files.len());
    let by_name = |n: &str| {
        profiles
            .iter()
            .find(|p| p.name == n)
            .unwrap_or_else(|| panic!("no profile {n}"))
    };
    let web = by_name("web-frontend");
    assert_eq!(
        web.selector,
        Selector::Cgroup("/system.slice/nginx.service".into())
    );
    assert!(
        web.files
            .rules
            .iter()
            .any(|r| r.path == exact("/etc/shadow") && r.action == Verdict::Deny)
    );
    assert!(
        web.network
            .connect
            .allow
            .iter()
            .any(|r| r.cidr == net("10.0.0.0/8")
                && r.ports == [5432]
                && r.protocols == [Protocol::Tcp])
    );
    by_name("postgres");
    let nightly = by_name("nightly-report");
    assert!(nightly.mode == Mode::Audit || nightly.on_violation == OnViolation::Kill);
    let cgroups = profiles
        .iter()
        .filter(|p| matches!(p.selector, Selector::Cgroup(_)))
        .count();
    assert!(cgroups >= 2);
    for p in &profiles {
        let compiled = crate::compile::compile(1, p);
        assert!(
            !compiled.exec_rules.is_empty() || p.exec.allow.is_empty() && p.exec.deny.is_empty()
        );
    }
}

/// The top-level keys of a schema object's `properties`.
fn schema_keys(schema: &serde_json::Value, pointer: &str) -> Vec<String> {
    let mut keys: Vec<String> = schema
        .pointer(pointer)
        .and_then(|v| v.as_object())
        .unwrap_or_else(|| panic!("schema has no object at {pointer}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn profile_schema_matches_the_parser() {
    let text = std::fs::read_to_string(examples_dir().join("profile.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(
        schema_keys(&schema, "/properties"),
        ["apiVersion", "kind", "metadata", "spec"]
    );
    assert_eq!(schema["properties"]["apiVersion"]["const"], API_VERSION);
    assert_eq!(schema["properties"]["kind"]["const"], KIND);
    assert_eq!(
        schema_keys(&schema, "/$defs/metadata/properties"),
        ["name", "serial"]
    );
    assert_eq!(
        schema_keys(&schema, "/$defs/spec/properties"),
        [
            "exec",
            "files",
            "mode",
            "network",
            "onViolation",
            "selector"
        ]
    );
    assert_eq!(
        schema_keys(&schema, "/$defs/exec/properties"),
        ["allow", "default", "deny"]
    );
    assert_eq!(
        schema_keys(&schema, "/$defs/files/properties"),
        ["default", "rules"]
    );
    assert_eq!(
        schema_keys(&schema, "/$defs/fileRule/properties"),
        ["access", "action", "path"]
    );
    assert_eq!(
        schema_keys(&schema, "/$defs/connect/properties"),
        ["allow", "default", "deny"]
    );
    assert_eq!(
        schema_keys(&schema, "/$defs/netRule/properties"),
        ["cidr", "ports", "protocol"]
    );
    assert_eq!(
        schema_keys(&schema, "/$defs/kubernetes/properties"),
        ["container", "namespace", "podLabels"]
    );
    // additionalProperties: false on every object with properties.
    fn closed(v: &serde_json::Value, at: &str) {
        if let Some(o) = v.as_object() {
            if o.contains_key("properties") {
                assert_eq!(
                    o.get("additionalProperties"),
                    Some(&serde_json::Value::Bool(false)),
                    "{at}"
                );
            }
            for (k, child) in o {
                closed(child, &format!("{at}/{k}"));
            }
        } else if let Some(a) = v.as_array() {
            for (i, child) in a.iter().enumerate() {
                closed(child, &format!("{at}/{i}"));
            }
        }
    }
    closed(&schema, "");
}
