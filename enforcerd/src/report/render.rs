//! One readable line per decision, for `enforcerd events` in a terminal.
//!
//! ```text
//! 2026-11-23T22:10:01.123Z DENY  file    web-frontend  pid 812 cat (/usr/bin/cat) uid 33  read /etc/shadow  [rule]  cgroup /web
//! 2026-11-23T22:10:02.000Z DENY  connect web-frontend  pid 9 curl (/usr/bin/curl) uid 0  tcp 10.0.0.1:443  [default]  cgroup /web
//! 2026-11-23T22:10:03.000Z KILL  exec    web-frontend  pid 77 sh (/bin/sh) uid 0  /usr/bin/nc  [rule]  cgroup /web
//! 2026-11-23T22:10:09.000Z DENY  file    web-frontend  ×1999 repeats of pid 812 cat since 2026-11-23T22:10:01.123Z  read /etc/shadow  [rule]  cgroup /web
//! ```
//!
//! Groups are separated by two spaces; the decision word and the hook are padded so the
//! profile column lines up. Text that comes from the watched workload (names, paths) has its
//! control and bidirectional-override characters escaped, so a hostile file name cannot move
//! the cursor, recolour the terminal or forge a line.

use std::fmt::Write as _;

use super::Decision;

const RESET: &str = "\x1b[0m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA_BOLD: &str = "\x1b[1;35m";

/// Width of the decision word column (`AUDIT`).
const WORD_WIDTH: usize = 5;
/// Width of the hook column (`connect`).
const HOOK_WIDTH: usize = 7;

/// Whether to colour output written to `stream`: it is a terminal, NO_COLOR is unset or
/// empty, TERM is not "dumb".
pub fn colour(stream: &impl std::io::IsTerminal) -> bool {
    colour_for(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

fn colour_for(
    terminal: bool,
    no_color: Option<&std::ffi::OsStr>,
    term: Option<&std::ffi::OsStr>,
) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty()) && term.is_none_or(|t| t != "dumb")
}

/// One line, no trailing newline: time, decision, hook, profile, who (or the repeats of a
/// summary), what (access or protocol, then the target), `[reason]`, cgroup. A truncated
/// target ends with `…`; an unknown exe is `?`, an unknown cgroup path shows the cgroup id.
/// With colour the decision word is red (deny), bold magenta (kill) or yellow (audit) and the
/// target bold.
pub fn line(d: &Decision, colour: bool) -> String {
    let mut s = String::with_capacity(160);
    let word = match d.decision.as_str() {
        "deny" => "DENY".to_string(),
        "kill" => "KILL".to_string(),
        "audit" => "AUDIT".to_string(),
        other => clean(other).to_uppercase(),
    };
    let word_style = match d.decision.as_str() {
        "deny" => RED,
        "kill" => MAGENTA_BOLD,
        "audit" => YELLOW,
        _ => "",
    };
    s.push_str(&clean(&d.ts));
    s.push(' ');
    // Pad outside the escape sequences so columns line up with and without colour.
    styled(&mut s, colour, word_style, &word);
    pad(&mut s, word.chars().count(), WORD_WIDTH);
    s.push(' ');
    let hook = clean(&d.hook);
    s.push_str(&hook);
    pad(&mut s, hook.chars().count(), HOOK_WIDTH);
    s.push(' ');
    s.push_str(&clean(&d.profile));
    s.push_str("  ");

    if d.summary {
        let _ = write!(
            s,
            "×{} repeats of pid {} {}",
            d.count,
            d.pid,
            clean(&d.comm)
        );
        if let Some(first) = &d.first_ts {
            let _ = write!(s, " since {}", clean(first));
        }
    } else {
        let _ = write!(
            s,
            "pid {} {} ({}) uid {}",
            d.pid,
            clean(&d.comm),
            d.exe.as_deref().map_or_else(|| "?".to_string(), clean),
            d.uid
        );
    }
    s.push_str("  ");

    if let Some(verb) = d.access.as_deref().or(d.protocol.as_deref()) {
        s.push_str(&clean(verb));
        s.push(' ');
    }
    let mut target = clean(&d.target);
    if d.target_truncated == Some(true) {
        target.push('…');
    }
    styled(&mut s, colour, BOLD, &target);

    let _ = write!(s, "  [{}]  cgroup ", clean(&d.reason));
    match &d.cgroup {
        Some(path) => s.push_str(&clean(path)),
        None => {
            let _ = write!(s, "{}", d.cgroup_id);
        }
    }
    if let Some(k) = &d.k8s {
        let _ = write!(s, "  pod {}/{}", clean(&k.namespace), clean(&k.pod));
        if let Some(c) = &k.container {
            let _ = write!(s, " container {}", clean(c));
        }
    }
    s
}

fn styled(s: &mut String, colour: bool, style: &str, text: &str) {
    if colour && !style.is_empty() {
        s.push_str(style);
        s.push_str(text);
        s.push_str(RESET);
    } else {
        s.push_str(text);
    }
}

fn pad(s: &mut String, len: usize, width: usize) {
    s.extend(std::iter::repeat_n(' ', width.saturating_sub(len)));
}

/// `text` with control characters (C0, DEL, C1) and bidirectional formatting characters
/// escaped (`\n`, `\u{1b}`, `\u{202e}`), so it cannot act on the terminal.
fn clean(text: &str) -> String {
    if !text.chars().any(unsafe_char) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
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
            pid: 812,
            tid: 812,
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

    fn connect_deny() -> Decision {
        Decision {
            hook: "connect".into(),
            reason: "default".into(),
            pid: 9,
            tid: 9,
            uid: 0,
            comm: "curl".into(),
            exe: Some("/usr/bin/curl".into()),
            target: "10.0.0.1:443".into(),
            access: None,
            protocol: Some("tcp".into()),
            ..file_deny()
        }
    }

    #[test]
    fn file_deny_line() {
        assert_eq!(
            line(&file_deny(), false),
            "2026-11-23T22:10:01.123Z DENY  file    web-frontend  pid 812 cat (/usr/bin/cat) uid 33  read /etc/shadow  [rule]  cgroup /web"
        );
    }

    #[test]
    fn connect_deny_line() {
        assert_eq!(
            line(&connect_deny(), false),
            "2026-11-23T22:10:01.123Z DENY  connect web-frontend  pid 9 curl (/usr/bin/curl) uid 0  tcp 10.0.0.1:443  [default]  cgroup /web"
        );
    }

    #[test]
    fn exec_kill_line_with_unknown_exe_and_cgroup_and_truncated_target() {
        let d = Decision {
            hook: "exec".into(),
            decision: "kill".into(),
            pid: 77,
            comm: "sh".into(),
            exe: None,
            cgroup: None,
            cgroup_id: 4242,
            target: "/tmp/very/long".into(),
            target_truncated: Some(true),
            access: None,
            ..file_deny()
        };
        assert_eq!(
            line(&d, false),
            "2026-11-23T22:10:01.123Z KILL  exec    web-frontend  pid 77 sh (?) uid 33  /tmp/very/long…  [rule]  cgroup 4242"
        );
    }

    #[test]
    fn audit_line() {
        let d = Decision {
            decision: "audit".into(),
            mode: "audit".into(),
            access: Some("read,write".into()),
            target: "/etc/passwd".into(),
            ..file_deny()
        };
        assert_eq!(
            line(&d, false),
            "2026-11-23T22:10:01.123Z AUDIT file    web-frontend  pid 812 cat (/usr/bin/cat) uid 33  read,write /etc/passwd  [rule]  cgroup /web"
        );
    }

    #[test]
    fn summary_line() {
        let d = Decision {
            ts: "2026-11-23T22:10:06.000Z".into(),
            count: 1999,
            summary: true,
            first_ts: Some("2026-11-23T22:10:01.123Z".into()),
            ..file_deny()
        };
        assert_eq!(
            line(&d, false),
            "2026-11-23T22:10:06.000Z DENY  file    web-frontend  ×1999 repeats of pid 812 cat since 2026-11-23T22:10:01.123Z  read /etc/shadow  [rule]  cgroup /web"
        );
    }

    #[test]
    fn colour_marks_decision_and_target() {
        let deny = line(&file_deny(), true);
        assert!(deny.contains("\x1b[31mDENY\x1b[0m  file"), "{deny:?}");
        assert!(deny.contains("\x1b[1m/etc/shadow\x1b[0m"), "{deny:?}");
        assert!(deny.ends_with("cgroup /web"));
        let kill = line(
            &Decision {
                decision: "kill".into(),
                ..file_deny()
            },
            true,
        );
        assert!(kill.contains("\x1b[1;35mKILL\x1b[0m"), "{kill:?}");
        let audit = line(
            &Decision {
                decision: "audit".into(),
                ..file_deny()
            },
            true,
        );
        assert!(audit.contains("\x1b[33mAUDIT\x1b[0m file"), "{audit:?}");
        // Without the escape sequences the line is the uncoloured one.
        let stripped = deny
            .replace("\x1b[31m", "")
            .replace("\x1b[1m", "")
            .replace("\x1b[0m", "");
        assert_eq!(stripped, line(&file_deny(), false));
    }

    #[test]
    fn workload_text_cannot_drive_the_terminal() {
        let d = Decision {
            comm: "a\x1b[2Jb".into(),
            target: "/tmp/x\nFAKE LINE\u{202e}".into(),
            ..file_deny()
        };
        let l = line(&d, false);
        assert!(!l.contains('\x1b') && !l.contains('\n') && !l.contains('\u{202e}'));
        assert!(l.contains(r"a\u{1b}[2Jb") && l.contains(r"/tmp/x\nFAKE LINE\u{202e}"));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color_or_dumb_term() {
        let file = tempfile_or_null();
        assert!(!colour(&file));
        let os = |s: &'static str| Some(std::ffi::OsStr::new(s));
        assert!(colour_for(true, None, os("xterm-256color")));
        assert!(colour_for(true, os(""), None));
        assert!(!colour_for(false, None, os("xterm")));
        assert!(!colour_for(true, os("1"), os("xterm")));
        assert!(!colour_for(true, None, os("dumb")));
    }

    fn tempfile_or_null() -> std::fs::File {
        std::fs::File::open("/dev/null").unwrap()
    }
}
