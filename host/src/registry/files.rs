//! What the handlers directory holds: `<dir>/<name>/<version>.wasm` or
//! `<dir>/<name>@<version>.wasm`, versions in semver, optionally marked
//! `<version>.shadow.wasm` or `<version>.canary.wasm`. Anything else (other
//! extensions, hidden files, a copy's temporary name) is not a handler file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::config::is_handler_name;

/// What a file's name asks of its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Marker {
    /// A plain version: active if it is the highest (or pinned).
    None,
    /// `.shadow.wasm`: run in shadow.
    Shadow,
    /// `.canary.wasm`: run as the canary.
    Canary,
}

/// A handler component file and the name and version its path gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerFile {
    /// Handler name.
    pub name: String,
    /// Handler version.
    pub version: Version,
    /// What the name marks it as.
    pub marker: Marker,
    /// The file.
    pub path: PathBuf,
}

/// The handlers directory cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read handlers directory {}: {source}", dir.display())]
pub struct ReadDirError {
    /// The directory.
    pub dir: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

impl HandlerFile {
    /// Reads name, version and marker from a path of either layout.
    pub fn from_path(path: &Path) -> Option<HandlerFile> {
        let file_name = path.file_name()?.to_str()?;
        if file_name.starts_with('.') {
            return None;
        }
        let stem = file_name.strip_suffix(".wasm")?;
        let (stem, marker) = match (stem.strip_suffix(".shadow"), stem.strip_suffix(".canary")) {
            (Some(stem), _) => (stem, Marker::Shadow),
            (_, Some(stem)) => (stem, Marker::Canary),
            _ => (stem, Marker::None),
        };
        let (name, version) = match stem.split_once('@') {
            Some((name, version)) => (name, version),
            None => (path.parent()?.file_name()?.to_str()?, stem),
        };
        let version = Version::parse(version).ok()?;
        is_handler_name(name).then(|| HandlerFile {
            name: name.to_owned(),
            version,
            marker,
            path: path.to_owned(),
        })
    }
}

/// A handler file with what tells a change: size and modification time.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) file: HandlerFile,
    pub(crate) len: u64,
    pub(crate) modified: SystemTime,
}

/// Every handler file in a directory, in either layout.
pub(crate) fn scan(dir: &Path) -> Result<Vec<Seen>, ReadDirError> {
    let read = |dir: &Path| {
        std::fs::read_dir(dir).map_err(|source| ReadDirError {
            dir: dir.to_owned(),
            source,
        })
    };
    let mut found = Vec::new();
    for entry in read(dir)?.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if path.is_dir() && !hidden {
            // A folder removed while being read is simply gone.
            if let Ok(entries) = read(&path) {
                found.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            found.push(path);
        }
    }
    Ok(found
        .into_iter()
        .filter_map(|path| {
            let file = HandlerFile::from_path(&path)?;
            let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
            Some(Seen {
                file,
                len: meta.len(),
                modified: meta.modified().ok()?,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_and_markers_are_read_from_names() {
        let file = |p: &str| HandlerFile::from_path(Path::new(p));
        let echo = file("h/echo/0.10.0.wasm").unwrap();
        assert_eq!(
            (echo.name.as_str(), echo.version.to_string()),
            ("echo", "0.10.0".into())
        );
        assert_eq!(echo.marker, Marker::None);
        let at = file("h/echo@1.0.0-rc.1.shadow.wasm").unwrap();
        assert_eq!(at.version.to_string(), "1.0.0-rc.1");
        assert_eq!(at.marker, Marker::Shadow);
        assert_eq!(
            file("h/echo/2.0.0.canary.wasm").unwrap().marker,
            Marker::Canary
        );
        for not_a_handler in [
            "h/echo/notes.txt",
            "h/echo/1.0.0.wasm.part",
            "h/echo/.1.0.0.wasm",
            "h/echo/latest.wasm",
            "h/Echo@1.0.0.wasm",
        ] {
            assert!(file(not_a_handler).is_none(), "{not_a_handler}");
        }
    }

    #[test]
    fn scan_finds_files_of_both_layouts_and_skips_hidden_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("echo")).unwrap();
        std::fs::create_dir_all(dir.path().join(".cache/echo")).unwrap();
        for file in [
            "echo/0.9.0.wasm",
            "echo@0.2.0.wasm",
            ".cache/echo/1.0.0.wasm",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(file), b"x").unwrap();
        }
        let mut found: Vec<String> = scan(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| format!("{}@{}", s.file.name, s.file.version))
            .collect();
        found.sort();
        assert_eq!(found, ["echo@0.2.0", "echo@0.9.0"]);
    }
}
