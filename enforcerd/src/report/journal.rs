//! Decisions to the systemd journal (spec.md "Decisions": the journald MESSAGE is the decision's
//! JSON line, with the same fields as journal fields).
//!
//! Each decision is one journal entry with:
//!
//! - `MESSAGE`: the decision's JSON line, exactly as printed by the JSON output.
//! - `MESSAGE_ID`: [`MESSAGE_ID`], the same for every decision, so that
//!   `journalctl MESSAGE_ID=6c1e0f3a9b7d4e52a8f06d19c3b2e7a4` selects all decisions.
//! - `PRIORITY`: 4 (warning) for `deny` and `kill`, 5 (notice) for `audit`.
//! - `SYSLOG_IDENTIFIER=enforcerd` (`journalctl -t enforcerd`), and `SYSLOG_PID`.
//! - `TARGET=enforcerd::decision`, added by the logging crate.
//! - Every field of the JSON line as `ENFORCERD_<FIELD>`, the JSON name upper-cased:
//!   `ENFORCERD_TS`, `ENFORCERD_HOOK`, `ENFORCERD_DECISION`, `ENFORCERD_REASON`,
//!   `ENFORCERD_PROFILE`, `ENFORCERD_SERIAL`, `ENFORCERD_SHA256`, `ENFORCERD_MODE`,
//!   `ENFORCERD_PID`, `ENFORCERD_TID`, `ENFORCERD_PPID`, `ENFORCERD_UID`, `ENFORCERD_COMM`,
//!   `ENFORCERD_EXE`, `ENFORCERD_CGROUP_ID`, `ENFORCERD_CGROUP`, `ENFORCERD_TARGET`,
//!   `ENFORCERD_TARGET_TRUNCATED`, `ENFORCERD_ACCESS`, `ENFORCERD_PROTOCOL`, `ENFORCERD_COUNT`,
//!   `ENFORCERD_SUMMARY`, `ENFORCERD_FIRST_TS`. Strings are sent as they are, numbers in
//!   decimal, booleans as `true`/`false`. A field absent from the JSON line, or `null` in it
//!   (an unknown `exe` or `cgroup`), is not sent: `ENFORCERD_SUMMARY` only appears (as `true`)
//!   on summaries, `ENFORCERD_TARGET_TRUNCATED` only on truncated targets,
//!   `ENFORCERD_ACCESS` on file decisions, `ENFORCERD_PROTOCOL` on connect decisions,
//!   `ENFORCERD_FIRST_TS` on summaries.
//!
//! For example `journalctl -t enforcerd ENFORCERD_PROFILE=web ENFORCERD_DECISION=deny -o cat`
//! prints the JSON lines of one profile's denials.

use log::{Level, Record};
use systemd_journal_logger::JournalLog;

use super::Decision;

/// The `MESSAGE_ID` of every decision entry (a random 128-bit id, chosen once).
pub const MESSAGE_ID: &str = "6c1e0f3a9b7d4e52a8f06d19c3b2e7a4";

/// The prefix of the journal fields that carry the decision's fields.
const PREFIX: &str = "ENFORCERD_";

/// True when enforcerd's stderr is connected to the journal (started by systemd): then
/// decisions go to the journal, not stdout.
pub fn connected() -> bool {
    systemd_journal_logger::connected_to_journal()
}

/// A connection to journald for decisions.
pub struct Journal {
    log: JournalLog,
}

impl Journal {
    /// Connects to journald's native socket; fails when journald is not there.
    pub fn open() -> std::io::Result<Journal> {
        Ok(Journal {
            log: JournalLog::empty()?.with_syslog_identifier("enforcerd".to_string()),
        })
    }

    /// Sends one decision: MESSAGE = `json_line` (the exact JSON line), PRIORITY 4 (warning)
    /// for deny/kill, 5 (notice) for audit, SYSLOG_IDENTIFIER=enforcerd, MESSAGE_ID
    /// [`MESSAGE_ID`], and the decision's fields as `ENFORCERD_*` fields (see the module
    /// documentation).
    pub fn send(&self, d: &Decision, json_line: &str) -> std::io::Result<()> {
        with_record(d, json_line, |record| self.log.journal_send(record))
    }
}

/// The priority of a decision: warning (4) for deny and kill, notice (5) for audit.
fn level(d: &Decision) -> Level {
    match d.decision.as_str() {
        "audit" => Level::Info,
        _ => Level::Warn,
    }
}

/// Builds the log record of one decision and hands it to `f`. The record's key-values are
/// `MESSAGE_ID` and [`fields`]; the logging crate writes them as journal fields.
fn with_record<R>(d: &Decision, json_line: &str, f: impl FnOnce(&Record<'_>) -> R) -> R {
    let fields = fields(d);
    let mut kvs: Vec<(&str, &str)> = Vec::with_capacity(fields.len() + 1);
    kvs.push(("MESSAGE_ID", MESSAGE_ID));
    kvs.extend(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let kvs: &[(&str, &str)] = &kvs;
    f(&Record::builder()
        .args(format_args!("{json_line}"))
        .level(level(d))
        .target("enforcerd::decision")
        .key_values(&kvs)
        .build())
}

/// The (name, value) pairs sent, without MESSAGE: every field of the decision's JSON
/// serialization that is present and not null, as `ENFORCERD_<FIELD>`, sorted by name.
pub fn fields(d: &Decision) -> Vec<(String, String)> {
    let serde_json::Value::Object(map) = serde_json::to_value(d).unwrap_or_default() else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = map
        .into_iter()
        .filter_map(|(name, value)| {
            let value = match value {
                serde_json::Value::Null => return None,
                serde_json::Value::String(s) => s,
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            Some((field_name(&name), value))
        })
        .collect();
    out.sort();
    out
}

/// `ENFORCERD_` and the JSON name, upper-cased, with anything journald does not accept in a
/// field name replaced by `_` (the logging crate would do the same; doing it here keeps
/// [`fields`] exactly what is sent).
fn field_name(json_name: &str) -> String {
    let mut name: String = PREFIX
        .chars()
        .chain(json_name.chars().map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_') => c,
            _ => '_',
        }))
        .collect();
    name.truncate(64);
    name
}

#[cfg(test)]
mod tests {
    use log::kv::{Error, Key, Value, VisitSource};

    use super::*;

    fn file_deny() -> Decision {
        Decision {
            ts: "2026-11-23T22:10:01.123Z".into(),
            hook: "file".into(),
            decision: "deny".into(),
            reason: "rule".into(),
            profile: "web-frontend".into(),
            serial: 3,
            sha256: "sha256:ab12".into(),
            mode: "enforce".into(),
            pid: 42,
            tid: 43,
            ppid: 1,
            uid: 33,
            comm: "cat".into(),
            exe: Some("/usr/bin/cat".into()),
            cgroup_id: 99,
            cgroup: Some("/web".into()),
            target: "/etc/shadow".into(),
            target_truncated: None,
            access: Some("read".into()),
            protocol: None,
            count: 1,
            summary: false,
            first_ts: None,
            k8s: None,
        }
    }

    fn connect_audit() -> Decision {
        Decision {
            hook: "connect".into(),
            decision: "audit".into(),
            reason: "default".into(),
            mode: "audit".into(),
            pid: 9,
            tid: 9,
            uid: 0,
            comm: "curl".into(),
            exe: None,
            cgroup: None,
            target: "[2001:db8::1]:443".into(),
            access: None,
            protocol: Some("tcp".into()),
            ..file_deny()
        }
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_deny_fields() {
        assert_eq!(
            fields(&file_deny()),
            pairs(&[
                ("ENFORCERD_ACCESS", "read"),
                ("ENFORCERD_CGROUP", "/web"),
                ("ENFORCERD_CGROUP_ID", "99"),
                ("ENFORCERD_COMM", "cat"),
                ("ENFORCERD_COUNT", "1"),
                ("ENFORCERD_DECISION", "deny"),
                ("ENFORCERD_EXE", "/usr/bin/cat"),
                ("ENFORCERD_HOOK", "file"),
                ("ENFORCERD_MODE", "enforce"),
                ("ENFORCERD_PID", "42"),
                ("ENFORCERD_PPID", "1"),
                ("ENFORCERD_PROFILE", "web-frontend"),
                ("ENFORCERD_REASON", "rule"),
                ("ENFORCERD_SERIAL", "3"),
                ("ENFORCERD_SHA256", "sha256:ab12"),
                ("ENFORCERD_TARGET", "/etc/shadow"),
                ("ENFORCERD_TID", "43"),
                ("ENFORCERD_TS", "2026-11-23T22:10:01.123Z"),
                ("ENFORCERD_UID", "33"),
            ])
        );
    }

    #[test]
    fn connect_audit_fields_skip_unknown_exe_and_cgroup() {
        assert_eq!(
            fields(&connect_audit()),
            pairs(&[
                ("ENFORCERD_CGROUP_ID", "99"),
                ("ENFORCERD_COMM", "curl"),
                ("ENFORCERD_COUNT", "1"),
                ("ENFORCERD_DECISION", "audit"),
                ("ENFORCERD_HOOK", "connect"),
                ("ENFORCERD_MODE", "audit"),
                ("ENFORCERD_PID", "9"),
                ("ENFORCERD_PPID", "1"),
                ("ENFORCERD_PROFILE", "web-frontend"),
                ("ENFORCERD_PROTOCOL", "tcp"),
                ("ENFORCERD_REASON", "default"),
                ("ENFORCERD_SERIAL", "3"),
                ("ENFORCERD_SHA256", "sha256:ab12"),
                ("ENFORCERD_TARGET", "[2001:db8::1]:443"),
                ("ENFORCERD_TID", "9"),
                ("ENFORCERD_TS", "2026-11-23T22:10:01.123Z"),
                ("ENFORCERD_UID", "0"),
            ])
        );
    }

    #[test]
    fn summary_fields_carry_bools_and_first_ts() {
        let d = Decision {
            count: 1999,
            summary: true,
            first_ts: Some("2026-11-23T22:09:59Z".into()),
            target_truncated: Some(true),
            ..file_deny()
        };
        let f = fields(&d);
        for (name, value) in [
            ("ENFORCERD_COUNT", "1999"),
            ("ENFORCERD_SUMMARY", "true"),
            ("ENFORCERD_FIRST_TS", "2026-11-23T22:09:59Z"),
            ("ENFORCERD_TARGET_TRUNCATED", "true"),
        ] {
            assert!(
                f.contains(&(name.to_string(), value.to_string())),
                "{name}={value} missing from {f:?}"
            );
        }
    }

    #[test]
    fn message_id_is_128_bit_lowercase_hex() {
        assert_eq!(MESSAGE_ID.len(), 32);
        assert!(
            MESSAGE_ID
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    struct Collect(Vec<(String, String)>);

    impl<'kvs> VisitSource<'kvs> for Collect {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), Error> {
            self.0.push((key.as_str().to_string(), value.to_string()));
            Ok(())
        }
    }

    /// What `send` hands to the journal crate: the crate writes MESSAGE from the record's
    /// arguments, PRIORITY from its level, and every key-value as a field (upper-cased, which
    /// leaves ours unchanged).
    #[test]
    fn record_carries_message_priority_message_id_and_fields() {
        let line = r#"{"ts":"t","hook":"file"}"#;
        let (message, level, kvs) = with_record(&file_deny(), line, |r| {
            let mut c = Collect(Vec::new());
            r.key_values().visit(&mut c).unwrap();
            (r.args().to_string(), r.level(), c.0)
        });
        assert_eq!(message, line);
        assert_eq!(level, Level::Warn);
        assert_eq!(kvs[0], ("MESSAGE_ID".to_string(), MESSAGE_ID.to_string()));
        assert_eq!(kvs[1..], fields(&file_deny())[..]);
        assert!(kvs.contains(&("ENFORCERD_HOOK".to_string(), "file".to_string())));
        assert!(kvs.iter().all(|(k, _)| {
            k.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        }));

        let level = with_record(&connect_audit(), line, |r| r.level());
        assert_eq!(level, Level::Info);
        let kill = Decision {
            decision: "kill".into(),
            ..file_deny()
        };
        assert_eq!(with_record(&kill, line, |r| r.level()), Level::Warn);
    }
}
