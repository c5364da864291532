//! The LSM entry points. Each returns early, before any lookup, for what it does not govern,
//! respects a denial by an earlier LSM, then decides with one trie lookup (two for a network
//! destination, given to connect or to sendmsg: exact port and any port).
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::path,
    cty::c_char,
    helpers::{bpf_d_path, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::lsm,
    maps::lpm_trie::Key,
    programs::LsmContext,
};
use enforcerd_common::{
    NetKey, NetRule, PATH_BUF_BYTES, PathKey, RULE_PATH_BYTES, access, counter, family, hook,
    protocol, reason, verdict as v,
};

use crate::{
    aliases::root_mount_name_denied,
    decide::{Detail, Governed, count, governing_profile, verdict},
    file_verdicts::{opened_path, paths_generation, remember, remembered},
    maps::{
        CachedFileVerdict, EXEC_MARK_PENDING, EXEC_MARKS, EXEC_RULES, FILE_RULES, NET_RULES,
        PathScratch, SCRATCH,
    },
    offsets,
};

/// `__FMODE_EXEC` in `file->f_flags`: the kernel's open of a binary (or of the ELF
/// interpreter) for exec. Those are decided in `bprm_check_security`, not as file reads.
const FMODE_EXEC_FLAG: u32 = 0x20;
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const AF_UNSPEC: u16 = 0;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: i16 = 1;
const SOCK_DGRAM: i16 = 2;
/// LPM prefix length covering a whole `PathKey` / `NetKey`.
pub const PATH_KEY_BITS: u32 = 8 * (4 + RULE_PATH_BYTES as u32);
const NET_KEY_BITS: u32 = 8 * core::mem::size_of::<NetKey>() as u32;

/// Exec: decided on the file the kernel opened for execution (`bprm->file`), by its resolved
/// path, so relative paths, `..`, symlinks, `/proc/self/fd/N` and `execveat` all land on the
/// same rule. Called once per binary the kernel executes, including each `#!` interpreter.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let Some(governed) = governing_profile() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(0);
    // A direct load from the hook's typed argument: the verifier then knows the result is the
    // `struct file *` member, which `bpf_d_path` requires.
    let file = unsafe { *(bprm.add(offsets::bprm_file()) as *const *const u8) };
    let ret = decide_exec(&governed, file);
    if ret == 0 {
        mark_exec(bprm);
    }
    ret
}

/// The exec decision on `file` (a trusted `struct file *`): its resolved path against the
/// governing profile's exec rules, reported as hook "exec".
#[inline(always)]
fn decide_exec(governed: &Governed, file: *const u8) -> i32 {
    let f_path = unsafe { file.add(offsets::file_f_path()) };
    let mut detail = Detail::new(hook::EXEC);
    detail.file = file;
    let exec_rule = |key: &Key<PathKey>| EXEC_RULES.get(key).map_or(v::NONE, |r| r.verdict);
    let exec_denied = |verdict: u8| match verdict {
        v::NONE => governed.config.exec_default != v::ALLOW,
        verdict => verdict != v::ALLOW,
    };
    let denied = match lookup_path(governed, f_path, &mut detail, exec_rule) {
        Some(verdict) => {
            detail.reason = if verdict == v::NONE {
                reason::DEFAULT
            } else {
                reason::RULE
            };
            exec_denied(verdict)
                || root_mount_name_denied(governed, file, &mut detail, exec_rule, exec_denied)
        }
        None => true,
    };
    verdict(governed, denied, &mut detail)
}

/// `ET_DYN` in an ELF header's `e_type`: a PIE program, a shared object, or the dynamic
/// loader itself.
const ET_DYN: u16 = 3;
const PROT_EXEC: u64 = 0x4;

/// A governed exec that goes ahead marks its process when the binary is an `ET_DYN` ELF (the
/// dynamic loader `ld.so` is one; so are PIE programs, whose mark the kernel's mapping of
/// their ELF interpreter clears again during the exec). Any other binary clears the mark.
/// The ELF header is in `bprm->buf` (the file's first bytes, read by the kernel).
#[inline(always)]
fn mark_exec(bprm: *const u8) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let dynamic =
        match unsafe { bpf_probe_read_kernel(bprm.add(offsets::bprm_buf()) as *const [u8; 18]) } {
            Ok(h) => {
                h[0] == 0x7f
                    && h[1] == b'E'
                    && h[2] == b'L'
                    && h[3] == b'F'
                    && u16::from_le_bytes([h[16], h[17]]) == ET_DYN
            }
            // Cannot tell: mark, so that a loader cannot slip through.
            Err(_) => true,
        };
    if dynamic {
        let _ = EXEC_MARKS.insert(&tgid, &EXEC_MARK_PENDING, 0);
    } else {
        let _ = EXEC_MARKS.remove(&tgid);
    }
}

/// `current->mm`, or null if the read fails.
#[inline(always)]
fn current_mm() -> *const u8 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    unsafe { bpf_probe_read_kernel(task.add(offsets::task_mm()) as *const *const u8) }
        .unwrap_or(core::ptr::null())
}

/// Past the exec's point of no return, with the new `mm` in place and nothing mapped yet: a
/// pending mark is bound to the new image (a mark whose exec failed stays pending and is
/// ignored). One hash lookup; no cgroup walk.
#[lsm(hook = "bprm_committed_creds")]
pub fn bprm_committed_creds(_ctx: LsmContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(mark) = EXEC_MARKS.get_ptr_mut(&tgid) {
        let mm = current_mm() as u64;
        unsafe { write_volatile(mark, mm) };
    }
    0
}

/// `ld.so /denied/binary` when the exec allowlist allows the loader: the kernel only execs
/// `ld.so`, which then maps the program itself with `PROT_EXEC`. For a marked process (see
/// `mark_exec`) the first executable mapping of a file other than its own executable is
/// decided as an exec of that file, and the mark is cleared, so the libraries mapped after it
/// are not. During the exec itself (`mm->saved_auxv` not yet written) that first mapping is
/// the kernel's mapping of the ELF interpreter of a dynamic program: the mark is cleared
/// without a decision. Returns before any lookup for mappings without `PROT_EXEC` or without
/// a file, and after one hash lookup for unmarked processes.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if file.is_null() || prot & PROT_EXEC == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mark = match unsafe { EXEC_MARKS.get(&tgid) } {
        Some(m) => *m,
        None => return 0,
    };
    if mark == EXEC_MARK_PENDING {
        return 0;
    }
    let mm = current_mm();
    if mm as u64 != mark {
        // Left by an earlier process with this tgid.
        let _ = EXEC_MARKS.remove(&tgid);
        return 0;
    }
    let exe = unsafe { bpf_probe_read_kernel(mm.add(offsets::mm_exe_file()) as *const *const u8) }
        .unwrap_or(core::ptr::null());
    if file == exe {
        // The kernel mapping the executable itself.
        return 0;
    }
    let _ = EXEC_MARKS.remove(&tgid);
    // A failed read counts as "exec finished": decided, never skipped.
    let auxv = unsafe { bpf_probe_read_kernel(mm.add(offsets::mm_saved_auxv()) as *const u64) }
        .unwrap_or(u64::MAX);
    if auxv == 0 {
        return 0;
    }
    let Some(governed) = governing_profile() else {
        return 0;
    };
    decide_exec(&governed, file)
}

/// Files: the resolved path and the access (read/write) from the open mode.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(1);
    if previous != 0 {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let flags = unsafe { *(file.add(offsets::file_f_flags()) as *const u32) };
    if flags & FMODE_EXEC_FLAG != 0 {
        return 0;
    }
    let Some(governed) = governing_profile() else {
        return 0;
    };
    let fmode = unsafe { *(file.add(offsets::file_f_mode()) as *const u32) };
    let mut detail = Detail::new(hook::FILE);
    detail.file = file;
    if fmode & FMODE_READ != 0 {
        detail.access |= access::READ;
    }
    if fmode & FMODE_WRITE != 0 {
        detail.access |= access::WRITE;
    }
    // A file this profile was allowed to open by the same path before: no path resolution.
    let mut seen = CachedFileVerdict {
        paths_generation: paths_generation(),
        root_dentry: 0,
        mnt: 0,
        parent: 0,
        hash_len: 0,
        inode: 0,
        ino: 0,
        profile_id: governed.profile_id,
        found: 0,
        _pad: 0,
    };
    let dentry = opened_path(file, &mut seen);
    if dentry != 0
        && let Some(found) = remembered(dentry, &seen)
        && !file_denied(&governed, found, detail.access)
    {
        count(hook::FILE, counter::ALLOWED);
        return 0;
    }
    let f_path = unsafe { file.add(offsets::file_f_path()) };
    // Both verdicts in one value (read in the low byte), 0 = no rule.
    let file_rule = |key: &Key<PathKey>| {
        FILE_RULES
            .get(key)
            .map_or(0, |r| u16::from(r.read) | (u16::from(r.write) << 8))
    };
    let wanted = detail.access;
    let denies = |found: u16| file_denied(&governed, found, wanted);
    let denied = match lookup_path(&governed, f_path, &mut detail, file_rule) {
        Some(found) => {
            detail.reason = if found == 0 {
                reason::DEFAULT
            } else {
                reason::RULE
            };
            // A remembered file is on the task's root mount: it has no other name to check.
            let denied = denies(found)
                || (dentry == 0
                    && root_mount_name_denied(&governed, file, &mut detail, file_rule, denies));
            if !denied && dentry != 0 {
                seen.found = found;
                remember(dentry, &seen);
            }
            denied
        }
        None => true,
    };
    verdict(&governed, denied, &mut detail)
}

/// Whether the profile refuses `access` given the file rule found (read verdict | write
/// verdict << 8; 0 for none, which means the profile's defaults).
#[inline(always)]
pub fn file_denied(governed: &Governed, found: u16, access: u8) -> bool {
    let (read, write) = if found == 0 {
        (
            governed.config.file_read_default,
            governed.config.file_write_default,
        )
    } else {
        (found as u8, (found >> 8) as u8)
    };
    (access & access::READ != 0 && read != v::ALLOW)
        || (access & access::WRITE != 0 && write != v::ALLOW)
}

/// How often a path lookup is retried when another task's program run overwrote the scratch
/// buffer meanwhile (it takes a preemption inside the program each time).
const PATH_ATTEMPTS: u32 = 4;

/// Resolves `f_path` with `bpf_d_path` and looks it up with `lookup`: see `lookup_name`.
#[inline(always)]
fn lookup_path<T: Copy>(
    governed: &Governed,
    f_path: *const u8,
    detail: &mut Detail,
    lookup: impl Fn(&Key<PathKey>) -> T,
) -> Option<T> {
    let resolve = |scratch: *mut PathScratch| unsafe {
        bpf_d_path(
            f_path as *mut path,
            (*scratch).path.as_mut_ptr() as *mut c_char,
            PATH_BUF_BYTES as u32,
        )
    } as i32;
    lookup_name(governed, detail, resolve, lookup)
}

/// Has `fill` write a path into the per-CPU scratch key (returning its length with the NUL,
/// or a negative errno) and looks it up in the governing profile's part of a path trie with
/// `lookup` (which returns plain values: an `Option` payload would be undefined on `None`,
/// which the verifier rejects). `None` means undecidable — the path did not resolve (longer
/// than `PATH_MAX`, helper failure) or the buffer stayed contended — and the caller denies.
#[inline(always)]
pub fn lookup_name<T: Copy>(
    governed: &Governed,
    detail: &mut Detail,
    fill: impl Fn(*mut PathScratch) -> i32,
    lookup: impl Fn(&Key<PathKey>) -> T,
) -> Option<T> {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        detail.reason = reason::READ_FAILED;
        return None;
    };
    let me = bpf_get_current_pid_tgid();
    detail.scratch = scratch;
    let mut attempt = 0;
    while attempt < PATH_ATTEMPTS {
        attempt += 1;
        unsafe { write_volatile(&mut (*scratch).owner, me) };
        let len = fill(scratch);
        detail.path_len = len;
        if len <= 0 {
            detail.reason = reason::PATH_UNRESOLVED;
            return None;
        }
        let found = unsafe {
            (*scratch).prefix_len = PATH_KEY_BITS;
            (*scratch).profile_id = governed.profile_id.to_be_bytes();
            lookup(as_path_key(&*scratch))
        };
        if unsafe { read_volatile(&(*scratch).owner) } == me {
            return Some(found);
        }
    }
    detail.reason = reason::CONTENDED;
    None
}

/// The scratch buffer's head, seen as a path trie key.
#[inline(always)]
pub fn as_path_key(scratch: &PathScratch) -> &Key<PathKey> {
    // SAFETY: PathScratch starts with the same bytes as Key<PathKey> (prefix_len, profile id,
    // path) and is larger; both are plain bytes.
    unsafe { &*(scratch as *const PathScratch as *const Key<PathKey>) }
}

/// Connect: AF_INET/AF_INET6 destination address, port and protocol (from the socket type).
/// IPv4-mapped IPv6 destinations are looked up as IPv4.
#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let sock: *const u8 = ctx.arg(0);
    let address: *const u8 = ctx.arg(1);
    let Ok(sa_family) = (unsafe { bpf_probe_read_kernel(address as *const u16) }) else {
        return 0;
    };
    // AF_UNSPEC here disconnects a socket: no destination.
    if sa_family != AF_INET && sa_family != AF_INET6 {
        return 0;
    }
    decide_destination(sock, address, sa_family)
}

/// Sends with a destination address (`sendto`, `sendmsg`, io_uring's send and sendmsg): an
/// unconnected datagram socket sends without ever calling connect, and TCP Fast Open
/// (`MSG_FASTOPEN`) connects from inside `sendmsg`. Decided exactly like connect, and reported
/// as hook "connect". A send without an address (`msg_name` NULL: a connected socket, decided
/// at connect) returns before the cgroup walk: this is the path of every send.
#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    // A direct load from the hook's typed argument (cannot fail). The kernel has already
    // copied a user's address into kernel memory here.
    let address = unsafe { *(msg.add(offsets::msghdr_msg_name()) as *const *const u8) };
    if address.is_null() {
        return 0;
    }
    let Ok(mut sa_family) = (unsafe { bpf_probe_read_kernel(address as *const u16) }) else {
        return 0;
    };
    // An AF_INET socket's UDP and raw sendmsg take an AF_UNSPEC address as an IPv4 one
    // (udp_sendmsg, raw_sendmsg); an AF_INET6 socket's treat it as "no address".
    if sa_family == AF_UNSPEC && socket_family(sock) == AF_INET {
        sa_family = AF_INET;
    }
    if sa_family != AF_INET && sa_family != AF_INET6 {
        return 0;
    }
    decide_destination(sock, address, sa_family)
}

/// `sock->sk->sk_family`, or AF_INET when it cannot be read (then an AF_UNSPEC address is
/// decided as IPv4 rather than skipped).
#[inline(always)]
fn socket_family(sock: *const u8) -> u16 {
    let Ok(sk) =
        (unsafe { bpf_probe_read_kernel(sock.add(offsets::socket_sk()) as *const *const u8) })
    else {
        return AF_INET;
    };
    unsafe { bpf_probe_read_kernel(sk.add(offsets::sock_family()) as *const u16) }
        .unwrap_or(AF_INET)
}

/// The connect decision, shared by `socket_connect` and `socket_sendmsg`: the governing
/// profile, then the `sa_family` (AF_INET or AF_INET6) destination at `address` (a kernel
/// copy of the caller's sockaddr), port and protocol (from the socket type) against the
/// profile's network rules: exact port first, then any port; the longer CIDR wins.
#[inline(always)]
fn decide_destination(sock: *const u8, address: *const u8, sa_family: u16) -> i32 {
    let Some(governed) = governing_profile() else {
        return 0;
    };
    let sock_type = unsafe { *(sock.add(offsets::socket_type()) as *const i16) };
    let mut detail = Detail::new(hook::CONNECT);
    detail.protocol = match sock_type {
        SOCK_STREAM => protocol::TCP,
        SOCK_DGRAM => protocol::UDP,
        _ => 0,
    };
    // The kernel refuses a sockaddr shorter than its family's (EINVAL) after this hook;
    // reading one anyway is harmless, but a failed read of a governed task's address is
    // undecidable and denied.
    let read_ok = if sa_family == AF_INET {
        // struct sockaddr_in: family, port (BE), address.
        match unsafe { bpf_probe_read_kernel(address as *const [u8; 8]) } {
            Ok(sin) => {
                detail.family = family::IPV4;
                detail.port = u16::from_be_bytes([sin[2], sin[3]]);
                detail.addr[..4].copy_from_slice(&sin[4..8]);
                true
            }
            Err(_) => false,
        }
    } else {
        // struct sockaddr_in6: family, port (BE), flowinfo, address.
        match unsafe { bpf_probe_read_kernel(address as *const [u8; 24]) } {
            Ok(sin6) => {
                detail.port = u16::from_be_bytes([sin6[2], sin6[3]]);
                let word =
                    |i: usize| u32::from_ne_bytes([sin6[i], sin6[i + 1], sin6[i + 2], sin6[i + 3]]);
                // ::ffff:a.b.c.d is matched (and reported) as IPv4 a.b.c.d.
                let mapped = word(8) == 0
                    && word(12) == 0
                    && word(16) == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
                if mapped {
                    detail.family = family::IPV4;
                    detail.addr[..4].copy_from_slice(&sin6[20..24]);
                } else {
                    detail.family = family::IPV6;
                    detail.addr.copy_from_slice(&sin6[8..24]);
                }
                true
            }
            Err(_) => false,
        }
    };
    let denied = if !read_ok {
        detail.reason = reason::READ_FAILED;
        true
    } else {
        let mut data = NetKey {
            profile_id: governed.profile_id.to_be_bytes(),
            protocol: detail.protocol,
            family: detail.family,
            port: detail.port.to_be_bytes(),
            addr: detail.addr,
        };
        // References, not copies: `Option<&T>` has no undefined payload for LLVM to spill.
        let exact = NET_RULES.get(&Key::new(NET_KEY_BITS, data));
        data.port = [0, 0];
        let any_port = NET_RULES.get(&Key::new(NET_KEY_BITS, data));
        let rule: Option<&NetRule> = match (exact, any_port) {
            (Some(e), Some(a)) => Some(if a.cidr_len > e.cidr_len { a } else { e }),
            (e, a) => e.or(a),
        };
        let verdict = match rule {
            Some(r) => {
                detail.reason = reason::RULE;
                r.verdict
            }
            None => {
                detail.reason = reason::DEFAULT;
                governed.config.connect_default
            }
        };
        verdict != v::ALLOW
    };
    verdict(&governed, denied, &mut detail)
}
