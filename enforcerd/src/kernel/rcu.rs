//! Waiting for an RCU grace period from userspace.
//!
//! The BPF programs run inside RCU read-side sections (and can be preempted there). After the
//! daemon flips a cgroup to a new profile id, a run that read the old id before the flip may
//! still be going; the old rules may be deleted only once every such run has finished, i.e.
//! after a grace period. The kernel waits for one (`synchronize_rcu`) whenever userspace
//! updates a map-of-maps, precisely so that userspace knows no program still sees the old
//! inner map. `membarrier(MEMBARRIER_CMD_GLOBAL)` is not enough: it skips the wait on a
//! single-CPU machine, where a preempted program run is still in flight.
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE` (the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    _rest: [u64; 13],
}

/// `union bpf_attr` for `BPF_MAP_UPDATE_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    _rest: [u64; 12],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, fully initialized bpf_attr prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn create(map_type: u32, value_size: u32, inner_map_fd: u32) -> std::io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type,
        key_size: 4,
        value_size,
        max_entries: 1,
        inner_map_fd,
        ..MapCreate::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A one-slot map-of-maps and the map that goes in its slot.
pub struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> std::io::Result<Self> {
        let inner = create(BPF_MAP_TYPE_ARRAY, 4, 0)?;
        let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, 4, inner.as_raw_fd() as u32)?;
        Ok(RcuBarrier { outer, inner })
    }

    /// Returns after an RCU grace period.
    pub fn wait(&self) -> std::io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = MapUpdate {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..MapUpdate::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_the_size_the_kernel_reads() {
        assert_eq!(std::mem::size_of::<MapCreate>(), 128);
        assert_eq!(std::mem::size_of::<MapUpdate>(), 128);
        assert_eq!(std::mem::offset_of!(MapCreate, inner_map_fd), 20);
        assert_eq!(std::mem::offset_of!(MapUpdate, key), 8);
    }
}
