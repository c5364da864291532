//! Least privilege after start-up. Loading and attaching BPF programs needs root's
//! capabilities; running needs only `CAP_BPF`: every `bpf()` call (map updates at reloads, the
//! RCU barrier, counters) is checked against it, while the ring buffer, inotify, the control
//! socket and the metrics socket need none. Files the daemon reads at reloads
//! (`/etc/enforcerd`, the cgroup tree) and writes (`/var/lib/enforcerd`) belong to root, whose
//! uid it keeps. So once the programs are attached the daemon drops every other capability
//! from all its sets (bounding included, so nothing can regain them) and sets
//! `no_new_privs`. Capabilities are per thread: this runs before the daemon starts any thread.
use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon keeps.
pub const KEPT: [Capability; 1] = [Capability::CAP_BPF];

#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities after attaching: {0}")]
pub struct DropError(String);

/// Drops every capability but [`KEPT`] and sets `no_new_privs`.
pub fn drop_to_runtime() -> Result<(), DropError> {
    let err = |e: caps::errors::CapsError| DropError(e.to_string());
    let keep: CapsHashSet = KEPT.into_iter().collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, still effective here.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::set(None, CapSet::Effective, &keep).map_err(err)?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err)?;
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(DropError(format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
