//! The handlers directory: `<dir>/<name>/<version>.wasm` or
//! `<dir>/<name>@<version>.wasm`, versions in semver. Routes name a handler;
//! the highest version is used unless the route pins one.

use std::path::{Path, PathBuf};

use semver::Version;

use crate::config::is_handler_name;

/// A handler component file and the name and version its path gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerFile {
    /// Handler name.
    pub name: String,
    /// Handler version.
    pub version: Version,
    /// The file.
    pub path: PathBuf,
}

/// A handler that cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The directory cannot be read.
    #[error("cannot read handlers directory {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No file of that name.
    #[error(
        "no handler named {name:?} in {dir} (expected {dir}/{name}/<version>.wasm or {dir}/{name}@<version>.wasm)",
        dir = dir.display()
    )]
    NotFound {
        /// The handler name.
        name: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The pinned version is not there.
    #[error("handler {name:?} is pinned to {pinned}, but {} has only {available}", dir.display())]
    PinnedMissing {
        /// The handler name.
        name: String,
        /// The pinned version.
        pinned: String,
        /// The directory.
        dir: PathBuf,
        /// Versions present.
        available: String,
    },
}

impl HandlerFile {
    /// Reads name and version from a path of either layout.
    pub fn from_path(path: &Path) -> Option<HandlerFile> {
        let stem = path.file_name()?.to_str()?.strip_suffix(".wasm")?;
        let (name, version) = match stem.split_once('@') {
            Some((name, version)) => (name, version),
            None => (path.parent()?.file_name()?.to_str()?, stem),
        };
        let version = Version::parse(version).ok()?;
        is_handler_name(name).then(|| HandlerFile {
            name: name.to_owned(),
            version,
            path: path.to_owned(),
        })
    }
}

/// Every handler file in a directory, in either layout.
pub fn scan(dir: &Path) -> Result<Vec<HandlerFile>, RegistryError> {
    let read = |dir: &Path| {
        std::fs::read_dir(dir).map_err(|source| RegistryError::ReadDir {
            dir: dir.to_owned(),
            source,
        })
    };
    let mut files = Vec::new();
    for entry in read(dir)?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(
                read(&path)?
                    .flatten()
                    .filter_map(|e| HandlerFile::from_path(&e.path())),
            );
        } else if let Some(file) = HandlerFile::from_path(&path) {
            files.push(file);
        }
    }
    Ok(files)
}

/// The file serving handler `name`: the pinned version, or the highest.
pub fn find(dir: &Path, name: &str, pinned: Option<&str>) -> Result<HandlerFile, RegistryError> {
    let mut versions: Vec<HandlerFile> =
        scan(dir)?.into_iter().filter(|f| f.name == name).collect();
    versions.sort_by(|a, b| a.version.cmp(&b.version));
    let not_found = || RegistryError::NotFound {
        name: name.to_owned(),
        dir: dir.to_owned(),
    };
    match pinned {
        None => versions.pop().ok_or_else(not_found),
        Some(pinned) => {
            if versions.is_empty() {
                return Err(not_found());
            }
            let wanted = Version::parse(pinned).ok();
            let available = versions
                .iter()
                .map(|f| f.version.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            versions
                .into_iter()
                .find(|f| Some(&f.version) == wanted.as_ref())
                .ok_or_else(|| RegistryError::PinnedMissing {
                    name: name.to_owned(),
                    pinned: pinned.to_owned(),
                    dir: dir.to_owned(),
                    available,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_pick_the_highest_version_unless_pinned() {
        let dir = std::env::temp_dir().join(format!("sluice-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("echo")).unwrap();
        for file in [
            "echo/0.9.0.wasm",
            "echo/0.10.0.wasm",
            "echo@0.2.0.wasm",
            "other@1.0.0.wasm",
            "notes.txt",
        ] {
            std::fs::write(dir.join(file), b"").unwrap();
        }
        assert_eq!(
            find(&dir, "echo", None).unwrap().version,
            Version::new(0, 10, 0)
        );
        assert_eq!(
            find(&dir, "echo", Some("0.2.0")).unwrap().path,
            dir.join("echo@0.2.0.wasm")
        );
        let err = find(&dir, "echo", Some("3.0.0")).unwrap_err().to_string();
        assert!(err.contains("0.2.0, 0.9.0, 0.10.0"), "{err}");
        assert!(matches!(
            find(&dir, "nope", None),
            Err(RegistryError::NotFound { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
