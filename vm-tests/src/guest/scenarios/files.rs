//! files: rules match the path the kernel resolved, read/write comes from the open mode, and
//! the most specific rule wins.

use crate::guest::fixtures::{
    self, CONNECT_ALLOW_ALL, DATA_DIR, EXEC_ALLOW_ALL, PUBLIC, REPORT, REPORT_CONTENT, SECRET,
    UPLOADS,
};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, open_op, write_op};
use anyhow::Result;
use libc::{O_APPEND, O_CREAT, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};

const LINK_TO_SECRET: &str = "/tmp/files-link-to-key";
const LINK_TO_DATA_DIR: &str = "/srv/data-alias";

pub fn file_rules_follow_resolved_paths_and_longest_match(ctx: &mut Ctx) -> Result<()> {
    fixtures::srv_tree()?;
    fixtures::symlink(SECRET, LINK_TO_SECRET)?;
    fixtures::symlink(DATA_DIR, LINK_TO_DATA_DIR)?;

    let cg = Cgroup::create("/files")?;
    let free = Cgroup::create("/files_ungoverned")?;
    let dir = fixtures::profile_dir("files")?;
    let body = format!(
        "{EXEC_ALLOW_ALL}  files:
    default: allow
    rules:
      - {{path: {SECRET}, access: [read, write], action: deny}}
      - {{path: {DATA_DIR}/, access: [write], action: deny}}
      - {{path: {UPLOADS}/, access: [write], action: allow}}
{CONNECT_ALLOW_ALL}"
    );
    fixtures::write_profile(
        &dir,
        "files.yaml",
        &fixtures::profile("files", &cg.rel, "enforce", "deny", &body),
    )?;
    ctx.start_daemon(&dir, "daemon_ready")?;
    let g = Some(&cg);
    let eperm = Outcome::EPERM;

    let r = ctx.op(g, &format!("open({SECRET}, O_RDONLY)"), || {
        open_op(SECRET, O_RDONLY)
    });
    ctx.expect("denied_file_read_denied", &eperm, &r);
    let r = ctx.op(g, &format!("open({SECRET}, O_WRONLY|O_APPEND)"), || {
        write_op(SECRET, O_WRONLY | O_APPEND, b"x")
    });
    ctx.expect("denied_file_write_denied", &eperm, &r);

    let r = ctx.op(
        g,
        &format!("open({REPORT}, O_WRONLY|O_TRUNC) + write"),
        || write_op(REPORT, O_WRONLY | O_TRUNC, b"overwritten\n"),
    );
    ctx.expect("write_in_read_only_subtree_denied", &eperm, &r);
    let content = fixtures::read(REPORT);
    ctx.check(
        "read_only_subtree_file_unchanged",
        content == REPORT_CONTENT,
        format!("{REPORT} contains {REPORT_CONTENT:?}"),
        format!("{REPORT} contains {content:?}"),
        None,
    );
    let r = ctx.op(g, &format!("open({REPORT}, O_RDWR)"), || {
        open_op(REPORT, O_RDWR)
    });
    ctx.expect("read_write_open_in_read_only_subtree_denied", &eperm, &r);
    let r = ctx.op(g, &format!("open({REPORT}, O_RDONLY)"), || {
        open_op(REPORT, O_RDONLY)
    });
    ctx.expect("read_in_read_only_subtree_allowed", &Outcome::Ok, &r);

    let upload = format!("{UPLOADS}/upload.txt");
    let r = ctx.op(
        g,
        &format!("open({upload}, O_WRONLY|O_CREAT) + write"),
        || write_op(&upload, O_WRONLY | O_CREAT | O_TRUNC, b"uploaded\n"),
    );
    ctx.expect(
        "longer_allow_rule_inside_denied_subtree_wins",
        &Outcome::Ok,
        &r,
    );
    let content = fixtures::read(&upload);
    ctx.check(
        "write_under_longer_allow_rule_happened",
        content == "uploaded\n",
        format!("{upload} contains \"uploaded\\n\""),
        format!("{upload} contains {content:?}"),
        None,
    );

    let r = ctx.op(
        g,
        &format!("open({LINK_TO_SECRET} -> {SECRET}, O_RDONLY)"),
        || open_op(LINK_TO_SECRET, O_RDONLY),
    );
    ctx.expect("denied_file_through_symlink_denied", &eperm, &r);
    let aliased = format!("{LINK_TO_DATA_DIR}/report.txt");
    let r = ctx.op(
        g,
        &format!("open({aliased}, O_WRONLY) via a symlinked directory"),
        || write_op(&aliased, O_WRONLY | O_APPEND, b"x"),
    );
    ctx.expect("write_through_symlinked_directory_denied", &eperm, &r);
    let content = fixtures::read(REPORT);
    ctx.check(
        "read_only_subtree_file_still_unchanged",
        content == REPORT_CONTENT,
        format!("{REPORT} contains {REPORT_CONTENT:?}"),
        format!("{REPORT} contains {content:?}"),
        None,
    );

    let r = ctx.op(g, &format!("open({PUBLIC}, O_RDONLY)"), || {
        open_op(PUBLIC, O_RDONLY)
    });
    ctx.expect("unrelated_file_readable", &Outcome::Ok, &r);

    let r = ctx.op(Some(&free), &format!("open({SECRET}, O_RDONLY)"), || {
        open_op(SECRET, O_RDONLY)
    });
    ctx.expect(
        "denied_file_readable_from_ungoverned_cgroup",
        &Outcome::Ok,
        &r,
    );
    let r = ctx.op(None, &format!("open({REPORT}, O_WRONLY|O_APPEND)"), || {
        open_op(REPORT, O_WRONLY | O_APPEND)
    });
    ctx.expect(
        "read_only_subtree_writable_from_root_cgroup",
        &Outcome::Ok,
        &r,
    );

    ctx.stop_daemon("daemon_stops_on_sigterm");
    // SIGTERM detaches: nothing stays enforced.
    let r = ctx.op(
        g,
        &format!("open({SECRET}, O_RDONLY) after the daemon stopped"),
        || open_op(SECRET, O_RDONLY),
    );
    ctx.expect("nothing_enforced_after_daemon_stopped", &Outcome::Ok, &r);
    Ok(())
}
