//! Enforcement that outlives the daemon: every loaded object set (a "generation": the
//! programs, their links and their maps) is pinned in a directory of its own under
//! `/sys/fs/bpf/enforcerd/`. A pinned link keeps its program attached after the daemon's file
//! descriptors are gone, so a daemon that is SIGKILLed, OOM-killed or crashes leaves the
//! kernel enforcing the last applied profiles.
//!
//! Handover: a starting daemon loads a new generation beside the pinned one, fills its maps
//! from the profiles on disk, attaches it, pins it, and only then retires the older
//! generations (unlinking a generation's pins releases its links, which detaches its
//! programs). While both are attached, an action is allowed only if both allow it, so the
//! handover is an overlap, never a gap. This is the same whether the binary (and so the BPF
//! object) changed or not: the new generation never reuses the old maps, so an upgrade may
//! change their layout freely.
use std::{
    io,
    path::{Path, PathBuf},
};

/// `statfs` magic of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{parent} is not a BPF filesystem, so enforcement could not survive a restart of the \
         daemon: mount it (`mount -t bpf bpf {parent}`; systemd does at boot) or choose \
         another --pin-dir on one"
    )]
    NotBpffs { parent: String },
    #[error("cannot pin under {dir}: {error}")]
    Io { dir: String, error: String },
}

/// The pin directory (`/sys/fs/bpf/enforcerd`) and its generations.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Checks that `root`'s parent is a BPF filesystem and creates `root` (mode 0700).
    pub fn open(root: &Path) -> Result<PinDir, PinError> {
        let parent = root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) {
            return Err(PinError::NotBpffs {
                parent: parent.display().to_string(),
            });
        }
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| io_error(root, e))?;
        Ok(PinDir {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The generations pinned now, oldest first.
    pub fn generations(&self) -> Result<Vec<PathBuf>, PinError> {
        generations(&self.root).map_err(|e| io_error(&self.root, e))
    }

    /// Creates the directory of a new generation, named so that generations sort by age:
    /// `<unix seconds>_<nanoseconds>-<pid>-<first 12 hex digits of the object's sha256>`
    /// (bpffs refuses names with a dot).
    pub fn new_generation(&self, object_sha256: &str) -> Result<PathBuf, PinError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}_{:09}-{}-{}",
            now.as_secs(),
            now.subsec_nanos(),
            std::process::id(),
            &object_sha256[..object_sha256.len().min(12)]
        );
        let dir = self.root.join(name);
        std::fs::create_dir(&dir).map_err(|e| io_error(&dir, e))?;
        Ok(dir)
    }
}

/// Unpins everything in a generation's directory and removes it. Its links are released
/// (and their programs detached) unless a running process still holds them.
pub fn retire(generation: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(generation)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::remove_dir(generation)
}

/// Retires every generation under `root`, removes `root`, and waits until the kernel has
/// detached and freed their programs (so that enforcement has stopped when this returns);
/// returns how many generations there were. A missing `root` means nothing is pinned. Needs
/// `CAP_SYS_ADMIN` to list the kernel's programs.
pub fn retire_all(root: &Path) -> Result<usize, PinError> {
    let found = match generations(root) {
        Ok(g) => g,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_error(root, e)),
    };
    let mut programs = Vec::new();
    for generation in &found {
        programs.extend(program_ids(generation).map_err(|e| io_error(generation, e))?);
        retire(generation).map_err(|e| io_error(generation, e))?;
    }
    std::fs::remove_dir(root).map_err(|e| io_error(root, e))?;
    wait_freed(&programs, FREE_TIMEOUT).map_err(|error| PinError::Io {
        dir: root.display().to_string(),
        error,
    })?;
    Ok(found.len())
}

/// How long the kernel may take to detach and free unpinned programs.
const FREE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The kernel ids of the programs pinned in `generation` (its `prog_*` files).
fn program_ids(generation: &Path) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(generation)? {
        let path = entry?.path();
        let is_program = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("prog_"));
        if is_program {
            let info = aya::programs::ProgramInfo::from_pin(&path)
                .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
            ids.push(info.id());
        }
    }
    Ok(ids)
}

/// Waits until none of the programs `ids` exists. Unpinning drops the last references to a
/// generation's links and programs, but the kernel releases a link on a workqueue (6.4 and
/// later) and detaching it from its hook can take a while under emulation (seen: 150 ms on
/// 6.12 after the link's id was gone). A program is freed only after its last link has
/// detached it, so its id disappearing is the proof.
fn wait_freed(ids: &[u32], timeout: std::time::Duration) -> Result<(), String> {
    let started = std::time::Instant::now();
    loop {
        let live: Vec<u32> = kernel_program_ids()?
            .into_iter()
            .filter(|id| ids.contains(id))
            .collect();
        if live.is_empty() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "programs {live:?} still loaded {} s after they were unpinned",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The ids of every BPF program in the kernel (`BPF_PROG_GET_NEXT_ID`; needs
/// `CAP_SYS_ADMIN`). aya only lists programs it can also open, which one being freed cannot
/// be.
fn kernel_program_ids() -> Result<Vec<u32>, String> {
    /// `enum bpf_cmd` in linux/bpf.h.
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        // `union bpf_attr`'s start_id, next_id, open_flags.
        let mut attr = [start, 0u32, 0u32];
        // SAFETY: bpf(2) reads and writes the three u32s of `attr`, whose size it is given.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(ids);
            }
            return Err(format!("cannot list the kernel's BPF programs: {e}"));
        }
        start = attr[1];
        ids.push(start);
    }
}

fn generations(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            found.push(entry.path());
        }
    }
    // The name starts with the creation time, zero-padded nanoseconds: sorting by name sorts
    // by age for the next few centuries.
    found.sort();
    Ok(found)
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    magic == BPF_FS_MAGIC
}

fn io_error(path: &Path, e: io::Error) -> PinError {
    PinError::Io {
        dir: path.display().to_string(),
        error: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_parent_that_is_not_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        let e = PinDir::open(&dir.path().join("enforcerd")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{} is not a BPF filesystem", dir.path().display())),
            "{e}"
        );
        assert!(!dir.path().join("enforcerd").exists());
    }

    #[test]
    fn generations_sort_oldest_first_and_retire_all_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("enforcerd");
        // Plain directories stand in for bpffs (retire only unlinks and rmdirs).
        let pins = PinDir { root: root.clone() };
        std::fs::create_dir(&root).unwrap();
        let first = pins.new_generation("aaaaaaaaaaaaaaaa").unwrap();
        std::fs::write(first.join("map_COUNTERS"), b"").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = pins.new_generation("bbbb").unwrap();
        std::fs::write(second.join("map_EVENTS"), b"").unwrap();
        assert!(
            first
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with(&format!("-{}-aaaaaaaaaaaa", std::process::id()))
        );
        assert_eq!(pins.generations().unwrap(), vec![first, second]);
        assert_eq!(retire_all(&root).unwrap(), 2);
        assert!(!root.exists());
        assert_eq!(
            retire_all(&root).unwrap(),
            0,
            "nothing pinned is not an error"
        );
    }
}
