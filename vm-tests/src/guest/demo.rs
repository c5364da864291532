//! `vm-guest demo`: a narrated walk-through for a human reading the VM's console. It writes two
//! profiles, starts the daemon, and shows an allowed action, a denied exec, a denied open, a
//! denied connect and a process killed by SIGKILL, each with the decision line enforcerd
//! printed; then kills the daemon to show that the kernel keeps enforcing.

use super::daemon::{DECISION_TIMEOUT, Daemon, ENFORCERD, run_command};
use super::fixtures;
use super::out::say;
use super::sys::{self, Cgroup, Exec, Outcome, exec_in};
use serde_json::Value;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

const PROFILES: &str = "/etc/enforcerd/profiles.d";
const TOOL: &str = "/opt/tools/wget";
const SECRET: &str = "/srv/secret/api-key";
const INDEX: &str = "/srv/www/index.html";
const REPORT: &str = "/srv/reports/summary.txt";
const REPORT_CONTENT: &str = "Q3 summary: all good\n";

const WEB_PROFILE: &str = "apiVersion: enforcerd/v1
kind: Profile
metadata:
  name: web-frontend
  serial: 1
spec:
  selector:
    cgroup: /demo
  mode: enforce
  onViolation: deny
  exec:
    default: deny            # allowlist: only busybox may run
    allow: [/bin/busybox]
  files:
    default: allow
    rules:
      - {path: /srv/secret/, access: [read, write], action: deny}
  network:
    connect:
      default: deny
      allow:
        - {cidr: 127.0.0.0/8, ports: [8080], protocol: tcp}
";

const BATCH_PROFILE: &str = "apiVersion: enforcerd/v1
kind: Profile
metadata:
  name: batch-report
  serial: 1
spec:
  selector:
    cgroup: /demo-batch
  mode: enforce
  onViolation: kill          # a violation kills the offender
  exec:
    default: allow
  files:
    default: allow
    rules:
      - {path: /srv/reports/, access: [write], action: deny}
  network:
    connect:
      default: allow
";

fn blank() {
    say("");
}

fn heading(n: usize, text: &str) {
    blank();
    say(&format!("--- {n}. {text}"));
}

fn words(o: &Outcome) -> String {
    match o {
        Outcome::Ok => "allowed: it succeeded".into(),
        Outcome::Exited(0) => "allowed: it ran and exited 0".into(),
        Outcome::Exited(c) => format!("it ran and exited {c}"),
        Outcome::Errno(e) => {
            // "EPERM (Operation not permitted)" -> "Operation not permitted (EPERM)"
            let name = sys::errno_name(*e);
            match name.split_once(" (") {
                Some((code, text)) => format!("denied: {} ({code})", text.trim_end_matches(')')),
                None => format!("denied: {name}"),
            }
        }
        Outcome::Signaled(s) => format!("killed: the process died by {}", sys::signal_name(*s)),
        Outcome::Harness(m) => format!("(demo problem: {m})"),
    }
}

/// Waits for the decision about `target` and prints it.
fn show_decision(d: &mut Daemon, target: &str, pid: i32) -> bool {
    let pid = i64::from(pid);
    match d.wait_decision_line(DECISION_TIMEOUT, |v: &Value| {
        v["target"] == target && v["pid"].as_i64() == Some(pid)
    }) {
        Some((line, _)) => {
            say("   enforcerd's decision line (stdout):");
            say(&format!("   {line}"));
            true
        }
        None => {
            say(&format!(
                "   (no decision line for {target} from pid {pid})"
            ));
            false
        }
    }
}

struct Demo {
    ok: bool,
}

impl Demo {
    /// A real command whose `what` the kernel refused: it prints its own error (with EPERM's
    /// text) and exits with `status`.
    fn expect_refused(&mut self, got: &Outcome, what: &str, status: i32) {
        if *got == Outcome::Exited(status) {
            say(&format!(
                "-> denied: the kernel refused the {what} with EPERM; the command exited {status}"
            ));
        } else {
            say(&format!("-> {}", words(got)));
            say(&format!(
                "   (unexpected: wanted exit status {status} after EPERM)"
            ));
            self.ok = false;
        }
    }

    fn expect(&mut self, got: &Outcome, want: &Outcome) {
        say(&format!("-> {}", words(got)));
        if got != want {
            say(&format!("   (unexpected: wanted {want})"));
            self.ok = false;
        }
    }
}

fn setup() -> anyhow::Result<(Cgroup, Cgroup)> {
    std::fs::create_dir_all(PROFILES)?;
    std::fs::write(Path::new(PROFILES).join("web-frontend.yaml"), WEB_PROFILE)?;
    std::fs::write(Path::new(PROFILES).join("batch-report.yaml"), BATCH_PROFILE)?;
    std::fs::create_dir_all("/opt/tools")?;
    if !Path::new(TOOL).exists() {
        std::fs::copy(fixtures::BUSYBOX, TOOL)?;
    }
    fixtures::write(SECRET, "sk_live_51HxQ\n", 0o600)?;
    fixtures::write(INDEX, "<h1>It works!</h1>\n", 0o644)?;
    fixtures::write(REPORT, REPORT_CONTENT, 0o644)?;
    Ok((Cgroup::create("/demo")?, Cgroup::create("/demo-batch")?))
}

pub fn run() -> u8 {
    match walk() {
        Ok(true) => {
            blank();
            say("Demo complete: every action behaved as its profile says.");
            0
        }
        Ok(false) => {
            blank();
            say("Demo finished, but some actions did not behave as expected (see above).");
            1
        }
        Err(e) => {
            say(&format!("demo failed: {e:#}"));
            2
        }
    }
}

fn walk() -> anyhow::Result<bool> {
    blank();
    say(&format!(
        "=== enforcerd demo: BPF LSM enforcement on Linux {} ===",
        sys::uname_release()
    ));
    say("Two workloads, each in its own cgroup, each with a profile:");
    say("  /demo        web-frontend: only busybox may run, /srv/secret/ is off limits,");
    say("               outgoing connections only to 127.0.0.0/8 port 8080 (tcp)");
    say("  /demo-batch  batch-report: must not write /srv/reports/ -- and is killed if it tries");
    let (web, batch) = setup()?;
    let _listener = TcpListener::bind("0.0.0.0:8080")?;
    for (name, text) in [
        ("web-frontend.yaml", WEB_PROFILE),
        ("batch-report.yaml", BATCH_PROFILE),
    ] {
        blank();
        say(&format!("$ cat {PROFILES}/{name}"));
        for l in text.lines() {
            say(&format!("  {l}"));
        }
    }

    blank();
    let mut d = match Daemon::start(Path::new(PROFILES), "demo") {
        Ok(d) => d,
        Err(f) => {
            say(&format!("enforcerd did not start: {}", f.got));
            say(&f.stderr);
            return Ok(false);
        }
    };
    say(&format!(
        "-> enforcerd is enforcing {:.1} s after start (it sent READY=1)",
        d.ready_after.as_secs_f64()
    ));
    d.relay_stdout = false;
    let mut demo = Demo { ok: true };

    heading(1, "An allowed action, for contrast (cgroup /demo)");
    say(&format!("$ cat {INDEX}"));
    let r = exec_in(Some(&web), &Exec::path("/bin/cat", &["cat", INDEX]));
    demo.expect(&r.outcome, &Outcome::Exited(0));
    d.relay();
    say("   (allowed actions are counted, not reported: no decision line)");

    heading(
        2,
        "A denied exec: a binary the allowlist does not name (cgroup /demo)",
    );
    say(&format!("$ sh -c 'exec {TOOL} http://127.0.0.1:8080/'"));
    let script = format!("exec {TOOL} http://127.0.0.1:8080/");
    let r = exec_in(Some(&web), &Exec::path("/bin/sh", &["sh", "-c", &script]));
    demo.expect_refused(&r.outcome, "exec", 126);
    demo.ok &= show_decision(&mut d, TOOL, r.pid);

    heading(3, "A denied open (cgroup /demo)");
    say(&format!("$ cat {SECRET}"));
    let r = exec_in(Some(&web), &Exec::path("/bin/cat", &["cat", SECRET]));
    demo.expect_refused(&r.outcome, "open", 1);
    demo.ok &= show_decision(&mut d, SECRET, r.pid);

    heading(4, "A denied connect (cgroup /demo)");
    say("$ nc 127.0.0.1 8080 -e /bin/true     # allowed port");
    let ok = exec_in(
        Some(&web),
        &Exec::path("/bin/nc", &["nc", "127.0.0.1", "8080", "-e", "/bin/true"]),
    );
    demo.expect(&ok.outcome, &Outcome::Exited(0));
    say("$ nc 127.0.0.1 9090 -e /bin/true     # not in the profile");
    let r = exec_in(
        Some(&web),
        &Exec::path("/bin/nc", &["nc", "127.0.0.1", "9090", "-e", "/bin/true"]),
    );
    demo.expect_refused(&r.outcome, "connect", 1);
    demo.ok &= show_decision(&mut d, "127.0.0.1:9090", r.pid);

    heading(
        5,
        "A process killed on violation (cgroup /demo-batch, onViolation: kill)",
    );
    say(&format!("$ sh -c 'echo tampered > {REPORT}'"));
    let script = format!("echo tampered > {REPORT}");
    let r = exec_in(Some(&batch), &Exec::path("/bin/sh", &["sh", "-c", &script]));
    demo.expect(&r.outcome, &Outcome::KILLED);
    let content = fixtures::read(REPORT);
    say(&format!(
        "   and the file still reads: {:?}",
        content.trim_end()
    ));
    if content != REPORT_CONTENT {
        demo.ok = false;
    }
    demo.ok &= show_decision(&mut d, REPORT, r.pid);

    heading(
        6,
        "The same actions outside any profile's cgroup are untouched",
    );
    say(&format!("$ cat {SECRET}     # from the root cgroup"));
    let r = exec_in(None, &Exec::path("/bin/cat", &["cat", SECRET]));
    demo.expect(&r.outcome, &Outcome::Exited(0));

    heading(
        7,
        "The operator's view: every decision above, as `enforcerd events` shows it",
    );
    say(&format!("$ {ENFORCERD} events"));
    let events = run_command(ENFORCERD, &["events"]);
    for line in events.stdout.lines() {
        say(&format!("   {line}"));
    }
    // One readable line per decision: the exec, file, connect and kill denials above.
    if events.code != Some(0) || events.stdout.lines().count() < 4 {
        say(&format!("-> enforcerd events: {}", events.summary()));
        demo.ok = false;
    }

    heading(
        8,
        "The daemon is killed: the pinned programs keep enforcing, a new daemon takes over",
    );
    say("$ kill -KILL $(pidof enforcerd)");
    let ended = d.kill_keeping_pins();
    say(&format!("-> enforcerd {ended}"));
    let pinned = run_command("/bin/ls", &["/sys/fs/bpf/enforcerd"]);
    say(&format!(
        "$ ls /sys/fs/bpf/enforcerd\n   {}",
        pinned.stdout.trim_end()
    ));
    say(&format!(
        "$ cat {SECRET}     # in /demo, with no daemon running"
    ));
    let r = exec_in(Some(&web), &Exec::path("/bin/cat", &["cat", SECRET]));
    demo.expect_refused(&r.outcome, "open", 1);
    say("$ enforcerd run &     # attaches its own programs, then unpins the old ones");
    let mut d = match Daemon::start(Path::new(PROFILES), "demo-restart") {
        Ok(d) => d,
        Err(f) => {
            say(&format!("enforcerd did not start: {}", f.got));
            return Ok(false);
        }
    };
    d.relay_stdout = false;
    say(&format!(
        "-> enforcing again {:.1} s after start; the kernel never stopped",
        d.ready_after.as_secs_f64()
    ));

    blank();
    say("$ kill -TERM $(pidof enforcerd); enforcerd detach");
    match d.stop() {
        Ok(t) => say(&format!(
            "-> enforcerd exited 0 in {:.1} s leaving its programs pinned (--on-stop keep); \
             `enforcerd detach` unpinned them: enforcement has stopped",
            t.as_secs_f64()
        )),
        Err(e) => {
            say(&format!("-> enforcerd: {e}"));
            demo.ok = false;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    Ok(demo.ok)
}
