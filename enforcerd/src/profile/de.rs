//! The YAML shape of a profile and the checks on single values.
//!
//! Every check runs inside a `Visitor` method, i.e. while serde_yaml is deserializing that
//! value, so the error carries the value's position (an error raised after a value was
//! deserialized would be attributed to the enclosing mapping instead).

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{
    API_VERSION, FileRuleSpec, KIND, MAX_EXACT_PATH_BYTES, MAX_SUBTREE_PATH_BYTES, Mode,
    NetRuleSpec, OnViolation, Protocol, RulePath, Selector, Verdict,
};
use enforcerd_common::MAX_CGROUP_LEVELS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(expecting = "a profile: a mapping with apiVersion, kind, metadata and spec")]
pub(super) struct RawProfile {
    #[serde(rename = "apiVersion", deserialize_with = "api_version")]
    _api_version: (),
    #[serde(rename = "kind", deserialize_with = "kind")]
    _kind: (),
    pub metadata: RawMetadata,
    pub spec: RawSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "metadata: a mapping with name and serial")]
pub(super) struct RawMetadata {
    #[serde(deserialize_with = "profile_name")]
    pub name: String,
    pub serial: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(
    expecting = "spec: a mapping with selector and optional mode, onViolation, exec, files, network"
)]
pub(super) struct RawSpec {
    pub selector: Selector,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub on_violation: OnViolation,
    #[serde(default, deserialize_with = "section")]
    pub exec: Option<RawExec>,
    #[serde(default, deserialize_with = "section")]
    pub files: Option<RawFiles>,
    #[serde(default, deserialize_with = "section")]
    pub network: Option<RawNetwork>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "an exec section: a mapping with default and optional allow and deny lists")]
pub(super) struct RawExec {
    pub default: Verdict,
    #[serde(default)]
    pub allow: Vec<RulePath>,
    #[serde(default)]
    pub deny: Vec<RulePath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a files section: a mapping with default and an optional rules list")]
pub(super) struct RawFiles {
    pub default: Verdict,
    #[serde(default)]
    pub rules: Vec<FileRuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a network section: a mapping with connect")]
pub(super) struct RawNetwork {
    pub connect: RawConnect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a connect section: a mapping with default and optional allow and deny lists")]
pub(super) struct RawConnect {
    pub default: Verdict,
    #[serde(default)]
    pub allow: Vec<NetRuleSpec>,
    #[serde(default)]
    pub deny: Vec<NetRuleSpec>,
}

/// A present section must be a mapping: `exec:` with nothing after it is refused rather than
/// read as "no section" (which would allow everything).
fn section<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Scalars checked in place.

/// Deserializes a scalar as a string and runs `check` on it inside the visitor.
fn checked_str<'de, D, T, F>(d: D, expecting: &'static str, check: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    d.deserialize_str(CheckedStr(expecting, check, PhantomData))
}

struct CheckedStr<F, T>(&'static str, F, PhantomData<T>);

impl<'de, F, T> Visitor<'de> for CheckedStr<F, T>
where
    F: FnOnce(&str) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }
}

/// A [`DeserializeSeed`] form of [`checked_str`], for map keys and values and list elements.
struct CheckedSeed<F>(&'static str, F);

impl<'de, F, T> DeserializeSeed<'de> for CheckedSeed<F>
where
    F: FnOnce(&str) -> Result<T, String>,
{
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        checked_str(d, self.0, self.1)
    }
}

fn api_version<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    checked_str(d, "an apiVersion string", |v| {
        if v == API_VERSION {
            Ok(())
        } else {
            Err(format!(
                "unsupported apiVersion `{v}`; expected `{API_VERSION}`"
            ))
        }
    })
}

fn kind<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    checked_str(d, "a kind string", |v| {
        if v == KIND {
            Ok(())
        } else {
            Err(format!("unsupported kind `{v}`; expected `{KIND}`"))
        }
    })
}

fn profile_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_str(d, "a profile name", |v| {
        check_dns_label(v)
            .map(|()| v.to_owned())
            .map_err(|why| format!("invalid profile name `{v}`: {why}"))
    })
}

/// DNS-1123 label: 1 to 63 of `a-z`, `0-9`, `-`, starting and ending with a letter or digit.
pub(crate) fn check_dns_label(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err("it is empty; a DNS-1123 label is 1 to 63 characters".into());
    }
    if v.len() > 63 {
        return Err(format!(
            "it is {} characters long; a DNS-1123 label has at most 63",
            v.len()
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "`{c}` is not allowed; a DNS-1123 label consists of lowercase letters, digits and `-`"
        ));
    }
    if v.starts_with('-') || v.ends_with('-') {
        return Err("a DNS-1123 label starts and ends with a lowercase letter or digit".into());
    }
    Ok(())
}

/// Absolute, normalized: starts with `/`, no NUL, no `//`, no `.` or `..` component.
fn check_normalized(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} is empty; expected an absolute path"));
    }
    if !v.starts_with('/') {
        return Err(format!(
            "{what} `{v}` is not absolute: it must start with `/`"
        ));
    }
    if v.contains('\0') {
        return Err(format!("{what} {v:?} contains a NUL byte"));
    }
    if v.contains("//") {
        return Err(format!("{what} `{v}` is not normalized: it contains `//`"));
    }
    if let Some(c) = v.split('/').find(|c| *c == "." || *c == "..") {
        return Err(format!(
            "{what} `{v}` is not normalized: it contains a `{c}` component"
        ));
    }
    Ok(())
}

pub(crate) fn check_rule_path(v: &str) -> Result<RulePath, String> {
    check_normalized("path", v)?;
    if v.ends_with('/') {
        if v.len() > MAX_SUBTREE_PATH_BYTES {
            return Err(format!(
                "subtree path is {} bytes long; a subtree rule holds at most {MAX_SUBTREE_PATH_BYTES} \
                 bytes, trailing `/` included",
                v.len()
            ));
        }
        Ok(RulePath::Subtree(v.to_owned()))
    } else {
        if v.len() > MAX_EXACT_PATH_BYTES {
            return Err(format!(
                "exact path is {} bytes long; an exact rule holds at most {MAX_EXACT_PATH_BYTES} bytes \
                 (plus its NUL terminator)",
                v.len()
            ));
        }
        Ok(RulePath::Exact(v.to_owned()))
    }
}

impl<'de> Deserialize<'de> for RulePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(
            d,
            "an absolute path (a trailing `/` selects the whole subtree)",
            check_rule_path,
        )
    }
}

/// A cgroup v2 path below the cgroup2 mount: `/` or an absolute normalized path without a
/// trailing `/`, at a level the kernel programs examine.
pub(crate) fn check_cgroup_path(v: &str) -> Result<String, String> {
    check_normalized("cgroup path", v)?;
    if v.len() > 1 && v.ends_with('/') {
        return Err(format!("cgroup path `{v}` must not end with `/`"));
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(format!(
            "cgroup path {v:?} contains the control character {c:?}"
        ));
    }
    let components: Vec<&str> = v.split('/').filter(|c| !c.is_empty()).collect();
    if let Some(c) = components.iter().find(|c| c.len() > 255) {
        return Err(format!(
            "cgroup path component `{c}` is longer than 255 bytes"
        ));
    }
    // The root cgroup is level 0; the kernel programs examine levels below MAX_CGROUP_LEVELS.
    if components.len() >= MAX_CGROUP_LEVELS {
        return Err(format!(
            "cgroup path `{v}` is {} levels deep; enforcerd governs cgroups up to level {}",
            components.len(),
            MAX_CGROUP_LEVELS - 1
        ));
    }
    Ok(v.to_owned())
}

/// Unit types that own a cgroup (their processes run in `<slice>/<unit>`).
const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
/// Unit types that never have processes of their own.
const CGROUPLESS_SUFFIXES: &[&str] = &[".target", ".timer", ".path", ".device", ".automount"];

pub(crate) fn check_systemd_unit(v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err("systemdUnit is empty; expected a unit name such as `nginx.service`".into());
    }
    if v.contains('/') {
        return Err(format!(
            "systemdUnit `{v}` contains `/`; give the unit name only (use `cgroup:` for a path)"
        ));
    }
    if v.len() > 255 {
        return Err(format!("systemdUnit `{v}` is longer than 255 bytes"));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '@' | '\\')))
    {
        return Err(format!(
            "systemdUnit `{v}`: `{c}` is not allowed in a unit name"
        ));
    }
    if let Some(s) = CGROUPLESS_SUFFIXES.iter().find(|s| v.ends_with(*s)) {
        return Err(format!(
            "systemdUnit `{v}`: `{s}` units have no cgroup of their own; name the {} unit they start",
            if *s == ".target" {
                "service"
            } else {
                "service or socket"
            }
        ));
    }
    let Some(suffix) = UNIT_SUFFIXES.iter().find(|s| v.ends_with(*s)) else {
        return Err(format!(
            "systemdUnit `{v}` has no unit type suffix; expected one of {}",
            UNIT_SUFFIXES.join(", ")
        ));
    };
    let stem = &v[..v.len() - suffix.len()];
    if stem.is_empty() {
        return Err(format!(
            "systemdUnit `{v}` has an empty name before `{suffix}`"
        ));
    }
    if stem.ends_with('@') {
        return Err(format!(
            "systemdUnit `{v}` is a template; templates have no cgroup, name an instance \
             such as `{stem}NAME{suffix}`"
        ));
    }
    Ok(v.to_owned())
}

/// A Kubernetes label key: an optional DNS-1123 subdomain prefix and `/`, then a name of 1 to
/// 63 alphanumerics, `-`, `_`, `.`, starting and ending with an alphanumeric.
pub(crate) fn check_label_key(v: &str) -> Result<String, String> {
    let (prefix, name) = match v.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, v),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 {
            return Err(format!(
                "label key `{v}`: the prefix must be a DNS subdomain of 1 to 253 characters"
            ));
        }
        for part in p.split('.') {
            check_dns_label(part).map_err(|why| {
                format!("label key `{v}`: prefix `{p}` is not a DNS subdomain: {why}")
            })?;
        }
    }
    check_label_name(name, false).map_err(|why| format!("label key `{v}`: {why}"))?;
    Ok(v.to_owned())
}

/// A Kubernetes label value: empty, or a label name.
pub(crate) fn check_label_value(v: &str) -> Result<String, String> {
    check_label_name(v, true).map_err(|why| format!("label value `{v}`: {why}"))?;
    Ok(v.to_owned())
}

fn check_label_name(v: &str, empty_ok: bool) -> Result<(), String> {
    if v.is_empty() {
        return if empty_ok {
            Ok(())
        } else {
            Err("the name is empty".into())
        };
    }
    if v.len() > 63 {
        return Err(format!("it is {} characters long; at most 63", v.len()));
    }
    if v.chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err("only letters, digits, `-`, `_` and `.` are allowed".into());
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(v.chars().next()) || !alnum(v.chars().last()) {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

fn dns_label_field<'de, D: Deserializer<'de>>(
    what: &'static str,
    d: D,
) -> Result<String, D::Error> {
    checked_str(d, "a DNS-1123 label", move |v| {
        check_dns_label(v)
            .map(|()| v.to_owned())
            .map_err(|why| format!("invalid {what} `{v}`: {why}"))
    })
}

fn namespace<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    dns_label_field("namespace", d)
}

fn container<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    dns_label_field("container name", d).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Selector.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default, deserialize_with = "cgroup")]
    cgroup: Option<String>,
    #[serde(default, deserialize_with = "systemd_unit")]
    systemd_unit: Option<String>,
    #[serde(default, deserialize_with = "section")]
    kubernetes: Option<RawKubernetes>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[serde(
    expecting = "a kubernetes selector: a mapping with namespace, podLabels and optional container"
)]
struct RawKubernetes {
    #[serde(deserialize_with = "namespace")]
    namespace: String,
    #[serde(deserialize_with = "pod_labels")]
    pod_labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "container")]
    container: Option<String>,
}

fn cgroup<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked_str(d, "a cgroup path", check_cgroup_path).map(Some)
}

fn systemd_unit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked_str(d, "a systemd unit name", check_systemd_unit).map(Some)
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Selector;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a selector: a mapping with exactly one of cgroup, systemdUnit, kubernetes",
                )
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Selector, A::Error> {
                let raw = RawSelector::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let mut found = Vec::new();
                if let Some(c) = raw.cgroup {
                    found.push(("cgroup", Selector::Cgroup(c)));
                }
                if let Some(u) = raw.systemd_unit {
                    found.push(("systemdUnit", Selector::SystemdUnit(u)));
                }
                if let Some(k) = raw.kubernetes {
                    found.push((
                        "kubernetes",
                        Selector::Kubernetes {
                            namespace: k.namespace,
                            pod_labels: k.pod_labels,
                            container: k.container,
                        },
                    ));
                }
                match found.len() {
                    1 => Ok(found.pop().expect("one element").1),
                    0 => Err(de::Error::custom(
                        "the selector names no workload; give exactly one of cgroup, systemdUnit, kubernetes",
                    )),
                    _ => Err(de::Error::custom(format!(
                        "the selector has {}; give exactly one of cgroup, systemdUnit, kubernetes",
                        found.iter().map(|f| f.0).collect::<Vec<_>>().join(" and ")
                    ))),
                }
            }
        }
        d.deserialize_map(V)
    }
}

fn pod_labels<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("podLabels: a non-empty mapping of label keys to values")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut labels = BTreeMap::new();
            while let Some(key) = map.next_key_seed(CheckedSeed("a label key", check_label_key))? {
                let value = map.next_value_seed(CheckedSeed("a label value", check_label_value))?;
                if labels.insert(key.clone(), value).is_some() {
                    return Err(de::Error::custom(format!(
                        "podLabels: label `{key}` is given twice"
                    )));
                }
            }
            if labels.is_empty() {
                return Err(de::Error::custom(
                    "podLabels is empty; name at least one label (an empty selector would match every pod)",
                ));
            }
            Ok(labels)
        }
    }
    d.deserialize_map(V)
}

// ---------------------------------------------------------------------------------------------
// File rules.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a file rule: a mapping with path, access and action")]
struct RawFileRule {
    path: RulePath,
    #[serde(deserialize_with = "access_list")]
    access: (bool, bool),
    action: Verdict,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Access {
    Read,
    Write,
}

impl<'de> Deserialize<'de> for FileRuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawFileRule::deserialize(d)?;
        Ok(FileRuleSpec {
            path: raw.path,
            read: raw.access.0,
            write: raw.access.1,
            action: raw.action,
        })
    }
}

/// `access: [read, write]`: non-empty, no duplicates. Returns (read, write).
fn access_list<'de, D: Deserializer<'de>>(d: D) -> Result<(bool, bool), D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = (bool, bool);

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of access kinds: [read], [write] or [read, write]")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let (mut read, mut write) = (false, false);
            while let Some(a) = seq.next_element::<Access>()? {
                let (flag, name) = match a {
                    Access::Read => (&mut read, "read"),
                    Access::Write => (&mut write, "write"),
                };
                if *flag {
                    return Err(de::Error::custom(format!(
                        "access `{name}` is listed twice"
                    )));
                }
                *flag = true;
            }
            if !read && !write {
                return Err(de::Error::custom(
                    "access is empty; list the access kinds the rule decides: read, write",
                ));
            }
            Ok((read, write))
        }
    }
    d.deserialize_seq(V)
}

// ---------------------------------------------------------------------------------------------
// Network rules.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(expecting = "a connect rule: a mapping with cidr and optional ports and protocol")]
struct RawNetRule {
    #[serde(deserialize_with = "cidr")]
    cidr: IpNet,
    #[serde(default, deserialize_with = "port_list")]
    ports: Option<Vec<u16>>,
    #[serde(default, deserialize_with = "protocol")]
    protocol: Option<Protocol>,
}

fn protocol<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
    Protocol::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for NetRuleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawNetRule::deserialize(d)?;
        Ok(NetRuleSpec {
            cidr: raw.cidr,
            ports: raw.ports.unwrap_or_default(),
            protocols: match raw.protocol {
                Some(p) => vec![p],
                None => vec![Protocol::Tcp, Protocol::Udp],
            },
        })
    }
}

/// A network (`10.0.0.0/8`, `fd00::/8`) or a single address (a /32 or /128). Host bits are
/// cleared; an IPv4-mapped IPv6 network (inside `::ffff:0:0/96`) becomes the IPv4 network it
/// denotes, since mapped destinations are matched as IPv4.
pub(crate) fn parse_cidr(v: &str) -> Result<IpNet, String> {
    let net = match v.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match v.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a),
            Err(_) => {
                return Err(format!(
                    "invalid CIDR `{v}`: expected an IPv4 or IPv6 network such as 10.0.0.0/8 or \
                     fd00::/8, or a single address"
                ));
            }
        },
    };
    Ok(super::normalize_net(net))
}

fn cidr<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
    checked_str(d, "a CIDR such as 10.0.0.0/8", parse_cidr)
}

struct Port;

impl<'de> DeserializeSeed<'de> for Port {
    type Value = u16;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u16, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = u16;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1 to 65535)")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u16, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(p),
                    _ => Err(E::custom(format!(
                        "port {v} is out of range; ports are 1 to 65535"
                    ))),
                }
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u16, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "port {v} is out of range; ports are 1 to 65535"
                    ))),
                }
            }
        }
        d.deserialize_u64(V)
    }
}

/// `ports: [80, 443]`: each 1 to 65535, sorted and deduplicated. An explicit empty list is
/// refused: leave `ports` out to mean every port.
fn port_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u16>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<u16>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of port numbers (1 to 65535)")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ports = Vec::new();
            while let Some(p) = seq.next_element_seed(Port)? {
                ports.push(p);
            }
            if ports.is_empty() {
                return Err(de::Error::custom(
                    "ports is empty; leave `ports` out to match every port",
                ));
            }
            ports.sort_unstable();
            ports.dedup();
            Ok(ports)
        }
    }
    d.deserialize_seq(V).map(Some)
}
