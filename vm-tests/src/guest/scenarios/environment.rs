//! The VM itself: what every other scenario takes for granted.

use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, Proto, connect_op, errno_name, fs_magic};
use anyhow::Result;
use std::net::{SocketAddr, TcpListener};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SECURITYFS_MAGIC: i64 = 0x7363_6673;

pub fn vm_provides_bpf_lsm_btf_cgroup2_and_loopback(ctx: &mut Ctx) -> Result<()> {
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm")
        .unwrap_or_else(|e| format!("<cannot read /sys/kernel/security/lsm: {e}>"));
    ctx.note(&format!("active LSMs: {}", lsm.trim()));
    ctx.check(
        "bpf_lsm_active",
        lsm.trim().split(',').any(|l| l == "bpf"),
        "\"bpf\" in /sys/kernel/security/lsm",
        lsm.trim(),
        None,
    );

    let btf = std::fs::metadata("/sys/kernel/btf/vmlinux").map(|m| m.len());
    ctx.check(
        "btf_available",
        matches!(btf, Ok(n) if n > 0),
        "/sys/kernel/btf/vmlinux present",
        match btf {
            Ok(n) => format!("{n} bytes"),
            Err(e) => e.to_string(),
        },
        None,
    );

    for (check, path, magic, what) in [
        (
            "cgroup2_mounted",
            "/sys/fs/cgroup",
            CGROUP2_SUPER_MAGIC,
            "cgroup2",
        ),
        ("bpffs_mounted", "/sys/fs/bpf", BPF_FS_MAGIC, "bpf"),
        (
            "securityfs_mounted",
            "/sys/kernel/security",
            SECURITYFS_MAGIC,
            "securityfs",
        ),
    ] {
        let got = fs_magic(path);
        ctx.check(
            check,
            got == Ok(magic),
            format!("{what} on {path}"),
            match got {
                Ok(m) if m == magic => format!("{what} on {path}"),
                Ok(m) => format!("filesystem magic {m:#x} on {path}"),
                Err(e) => errno_name(e),
            },
            None,
        );
    }

    // A child really lands in a cgroup it joins.
    let cg = Cgroup::create("/environment")?;
    let run = ctx.op(
        Some(&cg),
        "read /proc/self/cgroup",
        || match std::fs::read_to_string("/proc/self/cgroup") {
            Ok(s) if s.trim() == "0::/environment" => Ok(()),
            Ok(_) => Err(libc::EINVAL),
            Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
        },
    );
    ctx.expect("child_joins_cgroup", &Outcome::Ok, &run);

    for (check, bind) in [
        ("loopback_ipv4", "127.0.0.1:0"),
        ("loopback_ipv6", "[::1]:0"),
    ] {
        let listener = TcpListener::bind(bind);
        let got = match listener.as_ref().map(TcpListener::local_addr) {
            Ok(Ok(addr)) => {
                let addr: SocketAddr = addr;
                match crate::guest::sys::op_in(None, || connect_op(addr, Proto::Tcp)).outcome {
                    Outcome::Ok => "connected".to_owned(),
                    o => format!("connect {addr}: {o}"),
                }
            }
            Ok(Err(e)) => format!("bind {bind}: {e}"),
            Err(e) => format!("bind {bind}: {e}"),
        };
        ctx.check(check, got == "connected", "connected", got, None);
    }

    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ctx.check(
        "runner_is_root",
        euid == 0,
        "uid 0",
        format!("uid {euid}"),
        None,
    );
    let _ = std::fs::remove_dir(cg.dir());
    Ok(())
}
