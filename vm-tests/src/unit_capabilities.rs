//! The capabilities `packaging/enforcerd.service` allows the daemon (`CapabilityBoundingSet=`).
//! The `capability_bounding_set` scenario proves on every kernel that each is needed and that
//! together they are enough; a unit test keeps this list and the unit file equal.

/// In the unit file's order.
/// `CAP_BPF` and `CAP_PERFMON` load and attach the tracing-class LSM programs (the kernel also
/// accepts `CAP_SYS_ADMIN` for both, which the unit therefore leaves out); `CAP_SETPCAP` lets
/// the daemon drop everything but `CAP_BPF` from its bounding set once attached.
pub const UNIT_CAPABILITIES: [&str; 3] = ["CAP_BPF", "CAP_PERFMON", "CAP_SETPCAP"];

/// The capability's number (linux/capability.h).
pub fn number(name: &str) -> u32 {
    match name {
        "CAP_SETPCAP" => 8,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("unknown capability {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_file_bounds_exactly_these() {
        let unit = include_str!("../../packaging/enforcerd.service");
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .expect("the unit sets CapabilityBoundingSet=");
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            UNIT_CAPABILITIES
        );
        for c in UNIT_CAPABILITIES {
            number(c);
        }
    }
}
