//! Builds the guest's initramfs: a gzip'd cpio (newc) archive with busybox and its applet
//! links, the guest runner, the daemon, every shared library `ldd` lists for them (at the same
//! paths) and an `/init` script.

use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `/init`: mounts what the scenarios need, takes the runner's mode and scenario filter from the
/// kernel command line (`enforcerd.mode=test enforcerd.scenarios=a,b`), runs it, reports its
/// exit status and powers the VM off.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
export PATH=/bin
echo "@@INIT"
mount -t securityfs securityfs /sys/kernel/security || echo "init: cannot mount securityfs"
mount -t bpf bpf /sys/fs/bpf || echo "init: cannot mount bpffs"
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup || echo "init: cannot mount cgroup2"
ip link set lo up || echo "init: cannot bring lo up"
mode=test
scenarios=
quick=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    enforcerd.mode=*) mode="${arg#*=}" ;;
    enforcerd.scenarios=*) scenarios="${arg#*=}" ;;
    enforcerd.quick=1) quick=--quick ;;
  esac
done
if [ -n "$scenarios" ]; then
  /bin/vm-guest "$mode" --scenarios "$scenarios"
else
  /bin/vm-guest "$mode" $quick
fi
status=$?
sync
echo "@@GUEST-EXIT $status"
poweroff -f
"#;

/// Applets linked into /bin when `busybox --list` is unavailable; the scenarios, the demo and a
/// human poking around need no more.
const FALLBACK_APPLETS: &[&str] = &[
    "sh", "ash", "mount", "umount", "mkdir", "ip", "poweroff", "cat", "ls", "echo", "sleep", "cp",
    "ln", "chmod", "true", "false", "rm", "mv", "ps", "grep", "head", "tail", "dmesg", "uname",
    "id", "env", "printf", "test", "[", "wc", "sed", "kill", "stat", "touch", "readlink", "sync",
    "nc", "wget",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    /// A regular file copied from the host (symlinks on the host are followed).
    File {
        source: PathBuf,
        mode: u32,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    CharDev {
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// The archive's contents, by absolute path. Parent directories are added implicitly.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn normalize(path: &str) -> String {
        let trimmed = path.trim_matches('/');
        assert!(!trimmed.is_empty(), "archive path must not be the root");
        format!("/{trimmed}")
    }

    fn add_parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len() - 1] {
            prefix.push('/');
            prefix.push_str(part);
            self.entries
                .entry(prefix.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
    }

    pub fn insert(&mut self, path: &str, node: Node) {
        let path = Self::normalize(path);
        self.add_parents(&path);
        self.entries.insert(path, node);
    }

    pub fn dir(&mut self, path: &str) {
        self.insert(path, Node::Dir { mode: 0o755 });
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(&Self::normalize(path))
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive in the kernel's "newc" cpio format. Entries come in path order, so
    /// every directory precedes its contents.
    pub fn write_newc<W: Write>(&self, mut w: W) -> Result<()> {
        for (ino, (path, node)) in (1u32..).zip(&self.entries) {
            let name = &path[1..];
            let (mode, data, rdev) = match node {
                Node::Dir { mode } => (libc::S_IFDIR | mode, Vec::new(), (0, 0)),
                Node::File { source, mode } => (
                    libc::S_IFREG | mode,
                    fs::read(source).with_context(|| format!("reading {}", source.display()))?,
                    (0, 0),
                ),
                Node::Bytes { data, mode } => (libc::S_IFREG | mode, data.clone(), (0, 0)),
                Node::Symlink { target } => {
                    (libc::S_IFLNK | 0o777, target.as_bytes().to_vec(), (0, 0))
                }
                Node::CharDev { mode, major, minor } => {
                    (libc::S_IFCHR | mode, Vec::new(), (*major, *minor))
                }
            };
            let nlink = if matches!(node, Node::Dir { .. }) {
                2
            } else {
                1
            };
            write_entry(&mut w, ino, mode, nlink, rdev, name, &data)?;
        }
        write_entry(&mut w, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        Ok(())
    }
}

fn pad4<W: Write>(w: &mut W, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])
}

fn write_entry<W: Write>(
    w: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) -> Result<()> {
    let size = u32::try_from(data.len()).context("file too large for cpio newc")?;
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
    // rdevminor, namesize, check
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, header.len() + namesize)?;
    w.write_all(data)?;
    pad4(w, data.len())?;
    Ok(())
}

/// The libraries (and the ELF interpreter) in `ldd` output. `linux-vdso` has no file and is
/// skipped; a static binary yields nothing; a library `ldd` cannot find is an error.
pub fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.contains("not a dynamic executable")
            || line.contains("statically linked")
        {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("library {} not found", name.trim()));
                }
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"; vdso-like entries
                // have nothing before the address.
                let p = rest.split(" (").next().unwrap_or("").trim();
                if p.is_empty() || p.starts_with('(') {
                    continue;
                }
                p
            }
            // "/lib64/ld-linux-x86-64.so.2 (0x...)" or "linux-vdso.so.1 (0x...)"
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            let path = PathBuf::from(path);
            if !libs.contains(&path) {
                libs.push(path);
            }
        }
    }
    Ok(libs)
}

/// Runs the system `ldd` on a binary.
pub fn system_ldd(binary: &Path) -> Result<String> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd (package libc-bin)")?;
    // ldd exits 1 for static binaries ("not a dynamic executable"), which parse_ldd accepts.
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(text)
}

/// The applets a busybox binary provides (`busybox --list`), or a fixed list.
pub fn busybox_applets(busybox: &Path) -> Vec<String> {
    let listed = Command::new(busybox)
        .arg("--list")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty() && !l.contains('/'))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut applets = listed;
    for a in FALLBACK_APPLETS {
        if !applets.iter().any(|x| x == a) {
            applets.push((*a).to_owned());
        }
    }
    applets
}

/// Everything that goes into the archive, decided without touching the archive format.
pub struct Inputs<'a> {
    pub busybox: &'a Path,
    pub applets: Vec<String>,
    /// (host file, name under /bin)
    pub binaries: Vec<(PathBuf, &'a str)>,
}

pub fn plan(inputs: &Inputs<'_>, mut ldd: impl FnMut(&Path) -> Result<String>) -> Result<Archive> {
    let mut a = Archive::new();
    for d in [
        "/proc", "/sys", "/dev", "/tmp", "/run", "/etc", "/root", "/srv", "/opt", "/var",
    ] {
        a.dir(d);
    }
    a.insert(
        "/dev/console",
        Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    );
    a.insert(
        "/dev/null",
        Node::CharDev {
            mode: 0o666,
            major: 1,
            minor: 3,
        },
    );
    a.insert(
        "/init",
        Node::Bytes {
            data: INIT_SCRIPT.as_bytes().to_vec(),
            mode: 0o755,
        },
    );
    a.insert(
        "/etc/passwd",
        Node::Bytes {
            data: b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            mode: 0o644,
        },
    );
    a.insert(
        "/etc/group",
        Node::Bytes {
            data: b"root:x:0:\n".to_vec(),
            mode: 0o644,
        },
    );
    a.insert(
        "/bin/busybox",
        Node::File {
            source: inputs.busybox.to_owned(),
            mode: 0o755,
        },
    );
    for applet in &inputs.applets {
        if applet == "busybox" || inputs.binaries.iter().any(|(_, n)| n == applet) {
            continue;
        }
        a.insert(
            &format!("/bin/{applet}"),
            Node::Symlink {
                target: "busybox".into(),
            },
        );
    }
    for (source, name) in &inputs.binaries {
        a.insert(
            &format!("/bin/{name}"),
            Node::File {
                source: source.clone(),
                mode: 0o755,
            },
        );
        let listing = ldd(source)?;
        let libs = parse_ldd(&listing).map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
        for lib in libs {
            let path = lib.to_str().context("non-UTF-8 library path")?.to_owned();
            if a.get(&path).is_none() {
                a.insert(
                    &path,
                    Node::File {
                        source: lib,
                        mode: 0o755,
                    },
                );
            }
        }
    }
    Ok(a)
}

/// Writes `archive` gzip'd to `out` with the system gzip.
pub fn write_gzip(archive: &Archive, out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-1", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running gzip")?;
    let stdin = gzip.stdin.take().expect("piped");
    let written = archive.write_newc(io::BufWriter::with_capacity(1 << 20, stdin));
    let status = gzip.wait()?;
    written?;
    if !status.success() {
        bail!("gzip failed: {status}");
    }
    Ok(())
}

/// Builds the initramfs for the given binaries into `out`.
pub fn build(busybox: &Path, binaries: Vec<(PathBuf, &str)>, out: &Path) -> Result<()> {
    if !busybox.exists() {
        bail!(
            "{} not found: install Debian's busybox-static (tools/setup does)",
            busybox.display()
        );
    }
    let inputs = Inputs {
        busybox,
        applets: busybox_applets(busybox),
        binaries,
    };
    let archive = plan(&inputs, system_ldd)?;
    write_gzip(&archive, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD_DYNAMIC: &str = "\tlinux-vdso.so.1 (0x00007ffc8a5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0d1c9a0000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0d1c8c1000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0d1c6e0000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0d1d2a8000)
";

    #[test]
    fn ldd_dynamic_binary_lists_libraries_and_interpreter() {
        let libs = parse_ldd(LDD_DYNAMIC).unwrap();
        let libs: Vec<_> = libs.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }

    #[test]
    fn ldd_static_binary_and_vdso_variants() {
        assert!(
            parse_ldd("\tnot a dynamic executable\n")
                .unwrap()
                .is_empty()
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert!(
            parse_ldd("\tlinux-vdso.so.1 =>  (0x00007fff)\n")
                .unwrap()
                .is_empty()
        );
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn plan_puts_libraries_at_their_paths_once() {
        let inputs = Inputs {
            busybox: Path::new("/bin/busybox"),
            applets: vec!["sh".into(), "busybox".into(), "mount".into(), "ip".into()],
            binaries: vec![
                (PathBuf::from("/x/enforcerd"), "enforcerd"),
                (PathBuf::from("/x/vm-guest"), "vm-guest"),
            ],
        };
        let mut asked = Vec::new();
        let a = plan(&inputs, |p| {
            asked.push(p.to_owned());
            Ok(LDD_DYNAMIC.to_owned())
        })
        .unwrap();
        assert_eq!(asked.len(), 2);
        assert!(matches!(a.get("/bin/busybox"), Some(Node::File { .. })));
        assert_eq!(
            a.get("/bin/sh"),
            Some(&Node::Symlink {
                target: "busybox".into()
            })
        );
        assert!(matches!(
            a.get("/init"),
            Some(Node::Bytes { mode: 0o755, .. })
        ));
        assert!(matches!(a.get("/bin/vm-guest"), Some(Node::File { .. })));
        assert!(matches!(
            a.get("/lib64/ld-linux-x86-64.so.2"),
            Some(Node::File { .. })
        ));
        assert!(matches!(
            a.get("/lib/x86_64-linux-gnu"),
            Some(Node::Dir { .. })
        ));
        assert!(matches!(a.get("/dev/console"), Some(Node::CharDev { .. })));
        let libc = a.paths().filter(|p| p.ends_with("libc.so.6")).count();
        assert_eq!(libc, 1);
        // every directory precedes its contents
        let paths: Vec<_> = a.paths().collect();
        for (i, p) in paths.iter().enumerate() {
            if let Some((parent, _)) = p.rsplit_once('/')
                && !parent.is_empty()
            {
                let at = paths.iter().position(|q| *q == parent).unwrap();
                assert!(at < i, "{parent} after {p}");
            }
        }
    }

    #[test]
    fn plan_fails_on_missing_library() {
        let inputs = Inputs {
            busybox: Path::new("/bin/busybox"),
            applets: vec![],
            binaries: vec![(PathBuf::from("/x/vm-guest"), "vm-guest")],
        };
        let err = plan(&inputs, |_| Ok("\tlibnope.so => not found\n".into())).unwrap_err();
        assert!(format!("{err:#}").contains("/x/vm-guest"));
    }

    /// Reads a newc archive back: (name, mode, data).
    fn read_newc(mut buf: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = buf.len();
        loop {
            let off = total - buf.len();
            assert_eq!(off % 4, 0, "entry not aligned");
            assert_eq!(&buf[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&buf[6 + i * 8..14 + i * 8]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let mode = field(1);
            let size = field(6) as usize;
            let namesize = field(11) as usize;
            let name = std::str::from_utf8(&buf[110..110 + namesize - 1])
                .unwrap()
                .to_owned();
            let data_start = (110 + namesize).div_ceil(4) * 4;
            let data = buf[data_start..data_start + size].to_vec();
            let next = (data_start + size).div_ceil(4) * 4;
            buf = &buf[next..];
            if name == "TRAILER!!!" {
                assert!(buf.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn newc_round_trip() {
        let mut a = Archive::new();
        a.insert(
            "/bin/hello",
            Node::Bytes {
                data: b"hi!\n!".to_vec(),
                mode: 0o755,
            },
        );
        a.insert(
            "/bin/sh",
            Node::Symlink {
                target: "busybox".into(),
            },
        );
        a.insert(
            "dev/console",
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        let mut buf = Vec::new();
        a.write_newc(&mut buf).unwrap();
        let entries = read_newc(&buf);
        let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/hello", "bin/sh", "dev", "dev/console"]);
        assert_eq!(entries[0].1, libc::S_IFDIR | 0o755);
        assert_eq!(entries[1].1, libc::S_IFREG | 0o755);
        assert_eq!(entries[1].2, b"hi!\n!");
        assert_eq!(entries[2].1 & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(entries[2].2, b"busybox");
        assert_eq!(entries[4].1, libc::S_IFCHR | 0o600);
    }
}
