//! Loads the embedded BPF object with the running kernel's offsets, writes a compiled plan
//! into its maps, and attaches the programs. Owns the loaded object: dropping an `Enforcer`
//! detaches the programs.
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf, lpm_trie::{Key, LpmTrie}},
    programs::{Lsm, ProgramError},
};
use enforcerd_common::{
    ExecRule, FileRule, NetKey, NetRule, PathKey, ProfileConfig, counter, maps as names,
};

use super::btf::Offsets;
use crate::compile::CompiledProfile;

/// The BPF programs, built by build.rs from `lsm-ebpf`.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lsm-ebpf"));

/// (program name in the object, LSM hook).
pub const PROGRAMS: [(&str, &str); 3] = [
    ("bprm_check_security", "bprm_check_security"),
    ("file_open", "file_open"),
    ("socket_connect", "socket_connect"),
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("this enforcerd binary was built without its BPF programs (AYA_BUILD_SKIP was set)")]
    NoObject,
    #[error("cannot read the kernel's BTF: {0}")]
    Btf(String),
    #[error("the kernel refused the BPF object: {0}")]
    Object(String),
    #[error("the kernel refused to load program {program}: {error}{log}")]
    Program { program: String, error: String, log: String },
    #[error("cannot attach program {program} to LSM hook {hook}: {error}")]
    Attach { program: String, hook: String, error: String },
    #[error("cannot write map {map}: {error}")]
    Map { map: &'static str, error: String },
}

/// What the kernel says about a loaded program.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    pub name: &'static str,
    pub verified_instructions: Option<u32>,
}

pub struct Enforcer {
    ebpf: Ebpf,
    pub programs: Vec<ProgramStats>,
    attached: bool,
}

impl Enforcer {
    /// Loads the object and verifies the programs, without attaching them.
    pub fn load(offsets: &Offsets) -> Result<Self, LoadError> {
        if BPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let globals = offsets.globals();
        let mut loader = EbpfLoader::new();
        for (name, value) in &globals {
            loader.override_global(name, value, true);
        }
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .map_err(|e| LoadError::Object(format!("{e:#}")))?;
        let btf = Btf::from_sys_fs().map_err(|e| LoadError::Btf(e.to_string()))?;
        let mut programs = Vec::new();
        for (name, hook) in PROGRAMS {
            let program: &mut Lsm = ebpf
                .program_mut(name)
                .ok_or_else(|| LoadError::Object(format!("program {name} missing")))?
                .try_into()
                .map_err(|e: ProgramError| LoadError::Object(e.to_string()))?;
            program.load(hook, &btf).map_err(|e| program_error(name, e))?;
            let verified_instructions =
                program.info().ok().and_then(|i| i.verified_instruction_count());
            programs.push(ProgramStats {
                name,
                verified_instructions,
            });
        }
        Ok(Enforcer {
            ebpf,
            programs,
            attached: false,
        })
    }

    /// Attaches the three programs. Call after `apply`, so that the first decision the
    /// programs make already sees every rule.
    pub fn attach(&mut self) -> Result<(), LoadError> {
        for (name, hook) in PROGRAMS {
            let program: &mut Lsm = self
                .ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| LoadError::Object(format!("program {name} missing")))?;
            program.attach().map_err(|e| LoadError::Attach {
                program: name.into(),
                hook: hook.into(),
                error: e.to_string(),
            })?;
        }
        self.attached = true;
        Ok(())
    }

    pub fn attached(&self) -> bool {
        self.attached
    }

    /// Writes profiles and their cgroups into the maps: rules first, then profile settings,
    /// then the cgroup -> profile entries, so a cgroup is never governed by a profile whose
    /// rules are not all in place.
    pub fn apply(
        &mut self,
        profiles: &[CompiledProfile],
        cgroups: &[(u64, u32)],
    ) -> Result<(), LoadError> {
        {
            let mut exec: LpmTrie<_, PathKey, ExecRule> = self.map(names::EXEC_RULES)?;
            for p in profiles {
                for (len, key, value) in &p.exec_rules {
                    exec.insert(&Key::new(*len, *key), value, 0)
                        .map_err(|e| map_error(names::EXEC_RULES, e))?;
                }
            }
        }
        {
            let mut files: LpmTrie<_, PathKey, FileRule> = self.map(names::FILE_RULES)?;
            for p in profiles {
                for (len, key, value) in &p.file_rules {
                    files
                        .insert(&Key::new(*len, *key), value, 0)
                        .map_err(|e| map_error(names::FILE_RULES, e))?;
                }
            }
        }
        {
            let mut net: LpmTrie<_, NetKey, NetRule> = self.map(names::NET_RULES)?;
            for p in profiles {
                for (len, key, value) in &p.net_rules {
                    net.insert(&Key::new(*len, *key), value, 0)
                        .map_err(|e| map_error(names::NET_RULES, e))?;
                }
            }
        }
        {
            let mut configs: HashMap<_, u32, ProfileConfig> = self.map(names::PROFILES)?;
            for p in profiles {
                configs
                    .insert(&p.id, &p.config, 0)
                    .map_err(|e| map_error(names::PROFILES, e))?;
            }
        }
        let mut governed: HashMap<_, u64, u32> = self.map(names::CGROUP_PROFILES)?;
        for (cgroup_id, profile_id) in cgroups {
            governed
                .insert(cgroup_id, profile_id, 0)
                .map_err(|e| map_error(names::CGROUP_PROFILES, e))?;
        }
        Ok(())
    }

    /// The decision ring buffer, for the event reader (can be taken once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.ebpf
            .take_map(names::EVENTS)
            .and_then(|m| RingBuf::try_from(m).ok())
    }

    /// Sum over CPUs of one per-hook counter (`enforcerd_common::counter`).
    pub fn counter(&self, hook: u8, kind: u32) -> u64 {
        let Some(map) = self.ebpf.map(names::COUNTERS) else {
            return 0;
        };
        let Ok(counters) = PerCpuArray::<_, u64>::try_from(map) else {
            return 0;
        };
        counters
            .get(&(u32::from(hook) * counter::KINDS + kind), 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::Map {
            map: name,
            error: "missing from the BPF object".into(),
        })?;
        T::try_from(map).map_err(|e| map_error(name, e))
    }
}

fn map_error(map: &'static str, e: aya::maps::MapError) -> LoadError {
    LoadError::Map {
        map,
        error: e.to_string(),
    }
}

fn program_error(name: &str, e: ProgramError) -> LoadError {
    let (error, log) = match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            // The end of the verifier's log says why it refused.
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            (io_error.to_string(), format!("\nverifier log (end):\n{}", tail.join("\n")))
        }
        other => (other.to_string(), String::new()),
    };
    LoadError::Program {
        program: name.into(),
        error,
        log,
    }
}
