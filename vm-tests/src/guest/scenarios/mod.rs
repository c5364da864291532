//! One function per scenario, each named for what it proves. A scenario sets up its own
//! fixtures, cgroup and profile directory, starts the daemon if it needs one, and records one
//! check per assertion with [`Ctx`](super::out::Ctx).

mod attacks;
mod audit_mode;
mod bad_input;
mod capability_bounding_set;
mod connect;
mod daemon_footprint;
mod decision_reports;
mod denial_burst;
mod environment;
mod exec_allowlist;
mod files;
mod kill_on_violation;
mod kubernetes_pods;
mod live_reload_without_gap;
mod nested_cgroups_and_namespaces;
mod remembered_file_verdicts;
mod restart_without_gap;
mod signed_profiles;
mod status_and_permissions;
mod systemd_unit_restart;

use super::out::Ctx;
use anyhow::{Result, bail};

pub fn run(name: &str, ctx: &mut Ctx) -> Result<()> {
    match name {
        "environment" => environment::vm_provides_bpf_lsm_btf_cgroup2_and_loopback(ctx),
        "exec_allowlist" => exec_allowlist::exec_is_decided_on_the_file_the_kernel_runs(ctx),
        "files" => files::file_rules_follow_resolved_paths_and_longest_match(ctx),
        "remembered_file_verdicts" => {
            remembered_file_verdicts::remembered_verdicts_follow_paths_and_rules(ctx)
        }
        "connect" => connect::connect_rules_match_cidr_port_and_protocol(ctx),
        "kill_on_violation" => kill_on_violation::offender_is_killed_and_action_never_happens(ctx),
        "audit_mode" => audit_mode::audit_blocks_nothing_and_reports_every_would_be_denial(ctx),
        "nested_cgroups_and_namespaces" => {
            nested_cgroups_and_namespaces::no_escape_through_child_cgroups_or_namespaces(ctx)
        }
        "bad_input" => bad_input::bad_profiles_are_refused_and_valid_ones_still_enforced(ctx),
        "signed_profiles" => {
            signed_profiles::only_profiles_signed_by_a_trusted_key_are_enforced(ctx)
        }
        "live_reload_without_gap" => {
            live_reload_without_gap::replacing_a_profile_never_leaves_a_gap(ctx)
        }
        "status_and_permissions" => {
            status_and_permissions::status_shows_what_is_enforced_to_root_only(ctx)
        }
        "decision_reports" => {
            decision_reports::each_decision_is_reported_with_every_field_and_counted(ctx)
        }
        "denial_burst" => {
            denial_burst::a_flood_of_denials_is_counted_exactly_with_bounded_memory(ctx)
        }
        "systemd_unit_restart" => {
            systemd_unit_restart::a_restarted_unit_is_governed_from_its_cgroups_creation(ctx)
        }
        "kubernetes_pods" => kubernetes_pods::pods_are_governed_from_their_first_exec(ctx),
        "capability_bounding_set" => {
            capability_bounding_set::the_units_capabilities_are_needed_and_enough(ctx)
        }
        "daemon_footprint" => daemon_footprint::footprint_with_100_profiles(ctx),
        "daemon_sigkill_and_restart" => restart_without_gap::sigkill_and_restart_leave_no_gap(ctx),
        "upgrade_to_rebuilt_binary" => {
            restart_without_gap::upgrade_to_a_rebuilt_binary_leaves_no_gap(ctx)
        }
        "attack_exec_via_dynamic_loader" => attacks::attack_exec_via_dynamic_loader(ctx),
        "attack_exec_from_fd" => attacks::attack_exec_from_fd(ctx),
        "attack_exec_via_link_in_allowed_dir" => attacks::attack_exec_via_link_in_allowed_dir(ctx),
        "attack_file_aliases" => attacks::attack_file_aliases(ctx),
        "attack_connect_bypass" => attacks::attack_connect_bypass(ctx),
        "attack_io_uring" => attacks::attack_io_uring(ctx),
        other => bail!("no scenario named {other}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_catalog_scenario_has_a_function() {
        for s in crate::catalog::SCENARIOS {
            let src = include_str!("mod.rs");
            assert!(src.contains(&format!("\"{}\" =>", s.name)), "{}", s.name);
        }
    }
}
