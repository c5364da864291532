//! Rollback protection: the highest `serial` applied per profile name, persisted across
//! restarts. A profile whose serial is lower than the one already applied for its name is
//! refused.
//!
//! The file is JSON: `{"version": 1, "serials": {"web": 5}}`, replaced atomically on change.
use std::collections::BTreeMap;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::fsutil::{Existing, parent_dir, write_atomic};
use crate::paths::STATE_DIR;

/// File name of the serial store in [`STATE_DIR`].
pub const SERIALS_FILE_NAME: &str = "serials.json";
const FORMAT_VERSION: u32 = 1;

/// The default serial store: `/var/lib/enforcerd/serials.json`.
pub fn default_serials_path() -> PathBuf {
    Path::new(STATE_DIR).join(SERIALS_FILE_NAME)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    serials: BTreeMap<String, u64>,
}

/// Highest applied serial per profile name, persisted in a file.
#[derive(Debug)]
pub struct SerialStore {
    path: PathBuf,
    serials: BTreeMap<String, u64>,
    /// The file is behind the memory (a write failed).
    dirty: bool,
}

impl SerialStore {
    /// Opens the store at `path`. A missing file is an empty store; an unreadable or corrupt one
    /// is an error naming the file (rollback protection must not silently reset).
    pub fn open(path: &Path) -> Result<SerialStore, String> {
        let serials = match fs::read(path) {
            Ok(bytes) => {
                let file: StoreFile = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: corrupt serial store: {e}", path.display()))?;
                if file.version != FORMAT_VERSION {
                    return Err(format!(
                        "{}: unsupported serial store version {} (expected {FORMAT_VERSION})",
                        path.display(),
                        file.version
                    ));
                }
                file.serials
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: cannot read serial store: {e}", path.display())),
        };
        Ok(SerialStore {
            path: path.to_path_buf(),
            serials,
            dirty: false,
        })
    }

    /// The file this store persists to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest serial applied for profile `name`, if any.
    pub fn highest(&self, name: &str) -> Option<u64> {
        self.serials.get(name).copied()
    }

    /// Refuses `serial` for `name` if a higher one was already applied (the same serial again is
    /// fine: a restart or a reload re-applies it).
    pub fn check(&self, name: &str, serial: u64) -> Result<(), String> {
        match self.highest(name) {
            Some(highest) if serial < highest => Err(format!(
                "rolled back: serial {serial} is lower than serial {highest} already applied for profile {name}"
            )),
            _ => Ok(()),
        }
    }

    /// Raises the stored serials to the `applied` ones (never lowers any) and, if anything
    /// changed, writes the file atomically: a temporary file in the same directory, fsync,
    /// rename, fsync of the directory (created with mode 0700 if missing). If writing fails, the
    /// memory keeps the raised serials and the next call writes them again.
    pub fn record(&mut self, applied: &[(String, u64)]) -> Result<(), String> {
        for (name, serial) in applied {
            match self.serials.get_mut(name) {
                Some(highest) if *serial > *highest => {
                    *highest = *serial;
                    self.dirty = true;
                }
                Some(_) => {}
                None => {
                    self.serials.insert(name.clone(), *serial);
                    self.dirty = true;
                }
            }
        }
        if !self.dirty {
            return Ok(());
        }
        self.write()?;
        self.dirty = false;
        Ok(())
    }

    fn write(&self) -> Result<(), String> {
        let dir = parent_dir(&self.path);
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("{}: cannot create directory: {e}", dir.display()))?;
        }
        let file = StoreFile {
            version: FORMAT_VERSION,
            serials: self.serials.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        json.push(b'\n');
        write_atomic(&self.path, &json, 0o600, Existing::Replace)
            .map_err(|e| format!("{}: cannot write serial store: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn applied(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn default_path_is_under_the_state_dir() {
        assert_eq!(
            default_serials_path(),
            Path::new("/var/lib/enforcerd/serials.json")
        );
    }

    #[test]
    fn missing_file_is_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = SerialStore::open(&dir.path().join("nope/serials.json")).unwrap();
        assert_eq!(s.highest("web"), None);
        s.check("web", 0).unwrap();
        assert!(!dir.path().join("nope").exists(), "opening writes nothing");
    }

    #[test]
    fn refusal_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SerialStore::open(&dir.path().join("serials.json")).unwrap();
        s.record(&applied(&[("web", 5)])).unwrap();
        assert_eq!(
            s.check("web", 2).unwrap_err(),
            "rolled back: serial 2 is lower than serial 5 already applied for profile web"
        );
        s.check("web", 5).unwrap();
        s.check("web", 6).unwrap();
        s.check("db", 0).unwrap();
    }

    #[test]
    fn raise_only_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/serials.json");
        let mut s = SerialStore::open(&path).unwrap();
        s.record(&applied(&[("web", 5), ("db", 1)])).unwrap();
        s.record(&applied(&[("web", 3), ("db", 2)])).unwrap();
        assert_eq!(s.highest("web"), Some(5));
        assert_eq!(s.highest("db"), Some(2));
        let reopened = SerialStore::open(&path).unwrap();
        assert_eq!(reopened.highest("web"), Some(5));
        assert_eq!(reopened.highest("db"), Some(2));
        assert_eq!(
            reopened.check("web", 4).unwrap_err(),
            "rolled back: serial 4 is lower than serial 5 already applied for profile web"
        );
        // The directory is created private; the file is valid JSON in the documented shape.
        assert_eq!(
            fs::metadata(dir.path().join("state"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": 1, "serials": {"db": 2, "web": 5}})
        );
        // Atomic replacement leaves no temporary file behind.
        assert_eq!(names(&dir.path().join("state")), ["serials.json"]);
    }

    #[test]
    fn unchanged_serials_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serials.json");
        let mut s = SerialStore::open(&path).unwrap();
        s.record(&[]).unwrap();
        assert!(!path.exists());
        s.record(&applied(&[("web", 0)])).unwrap();
        assert!(path.exists(), "a new name is recorded even at serial 0");
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        s.record(&applied(&[("web", 0)])).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        assert_eq!(SerialStore::open(&path).unwrap().highest("web"), Some(0));
    }

    #[test]
    fn refusal_corrupt_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serials.json");
        for (content, why) in [
            (
                "",
                "corrupt serial store: EOF while parsing a value at line 1 column 0",
            ),
            (
                "{\"version\": 1, \"serials\": {\"web\": 5}",
                "corrupt serial store: EOF while parsing an object at line 1 column 36",
            ),
            (
                "{\"version\": 1, \"serials\": {\"web\": -1}}",
                "corrupt serial store: invalid value: integer `-1`, expected u64 at line 1 column 36",
            ),
            (
                "{\"version\": 1}",
                "corrupt serial store: missing field `serials` at line 1 column 14",
            ),
            (
                "{\"version\": 2, \"serials\": {}}",
                "unsupported serial store version 2 (expected 1)",
            ),
        ] {
            fs::write(&path, content).unwrap();
            assert_eq!(
                SerialStore::open(&path).unwrap_err(),
                format!("{}: {why}", path.display()),
                "{content}"
            );
        }
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert_eq!(
            SerialStore::open(&path).unwrap_err(),
            format!(
                "{}: cannot read serial store: Is a directory (os error 21)",
                path.display()
            )
        );
    }

    #[test]
    fn failed_write_is_retried_by_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serials.json");
        let mut s = SerialStore::open(&path).unwrap();
        // A directory in the way makes the rename fail.
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), "").unwrap();
        assert!(
            s.record(&applied(&[("web", 3)]))
                .unwrap_err()
                .starts_with(&format!("{}: cannot write serial store: ", path.display()))
        );
        assert_eq!(s.highest("web"), Some(3), "memory keeps what was applied");
        assert_eq!(
            names(dir.path()),
            ["serials.json"],
            "no temporary file left"
        );
        fs::remove_dir_all(&path).unwrap();
        s.record(&applied(&[("web", 3)])).unwrap();
        assert_eq!(SerialStore::open(&path).unwrap().highest("web"), Some(3));
    }
}
