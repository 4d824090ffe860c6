//! `sluice new`: a handler project in Rust, JavaScript, TypeScript or
//! Python, ready for its three commands: `sluice new`, `./build`, and
//! `sluice replay` on its conformance vectors. The files are templates
//! under host/templates, compiled into the binary so `sluice new` works
//! anywhere.

use std::path::{Path, PathBuf};

/// A language a handler project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Rust, with wit-bindgen.
    Rust,
    /// JavaScript, with componentize-js.
    JavaScript,
    /// TypeScript, compiled by tsc, then componentize-js.
    TypeScript,
    /// Python, with componentize-py.
    Python,
}

/// Why a project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot name a handler.
    #[error(
        "{0:?} cannot name a handler: use lowercase letters, digits and dashes, starting with a letter (at most 64)"
    )]
    Name(String),
    /// Something is in the way.
    #[error("{} already exists: choose another name or remove it", .0.display())]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// A template file: where it goes in the project, and its text.
type Template = (&'static str, &'static str);

const COMMON: [Template; 4] = [
    ("README.md", include_str!("../templates/README.md")),
    ("vectors.jsonl", include_str!("../templates/vectors.jsonl")),
    ("wit/handler.wit", include_str!("../../wit/handler.wit")),
    (".gitignore", include_str!("../templates/gitignore")),
];

impl Language {
    fn templates(self) -> &'static [Template] {
        match self {
            Language::Rust => &[
                ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
                ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
                ("build", include_str!("../templates/rust/build")),
            ],
            Language::JavaScript => &[
                ("package.json", include_str!("../templates/js/package.json")),
                ("handler.js", include_str!("../templates/js/handler.js")),
                ("build", include_str!("../templates/js/build")),
            ],
            Language::TypeScript => &[
                ("package.json", include_str!("../templates/ts/package.json")),
                (
                    "tsconfig.json",
                    include_str!("../templates/ts/tsconfig.json"),
                ),
                (
                    "src/sluice.ts",
                    include_str!("../templates/ts/src/sluice.ts"),
                ),
                (
                    "src/handler.ts",
                    include_str!("../templates/ts/src/handler.ts"),
                ),
                ("build", include_str!("../templates/ts/build")),
            ],
            Language::Python => &[
                (
                    "pyproject.toml",
                    include_str!("../templates/python/pyproject.toml"),
                ),
                (
                    "requirements.txt",
                    include_str!("../templates/python/requirements.txt"),
                ),
                ("app.py", include_str!("../templates/python/app.py")),
                ("build", include_str!("../templates/python/build")),
            ],
        }
    }

    /// The README's words for it: its name, the file to edit, the tool the
    /// build script installs, and its guide under docs/guests.
    fn words(self) -> [&'static str; 4] {
        match self {
            Language::Rust => ["Rust", "src/lib.rs", " (the wasm32-wasip2 target)", "rust"],
            Language::JavaScript => [
                "JavaScript",
                "handler.js",
                " (componentize-js, from npm)",
                "javascript",
            ],
            Language::TypeScript => [
                "TypeScript",
                "src/handler.ts",
                "s (typescript and componentize-js, from npm)",
                "javascript",
            ],
            Language::Python => [
                "Python",
                "app.py",
                " (componentize-py, from PyPI, in .venv)",
                "python",
            ],
        }
    }
}

fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Creates the project `name` in `parent/name`; returns its path.
pub fn scaffold(name: &str, language: Language, parent: &Path) -> Result<PathBuf, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    let root = parent.join(name);
    if root.exists() {
        return Err(ScaffoldError::Exists(root));
    }
    let [title, source, tool, guide] = language.words();
    let crate_name = name.replace('-', "_");
    for (file, text) in COMMON.iter().chain(language.templates()) {
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{language}}", title)
            .replace("{{source}}", source)
            .replace("{{tool}}", tool)
            .replace("{{guide}}", guide);
        let path = root.join(file);
        write(&path, &text, *file == "build").map_err(|source| ScaffoldError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(root)
}

fn write(path: &Path, text: &str, executable: bool) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)?;
    if executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_name_a_handler_are_refused() {
        for name in [
            "",
            "Greeter",
            "1greeter",
            "greet er",
            "greet_er",
            "../up",
            &"a".repeat(65),
        ] {
            assert!(!valid_name(name), "{name:?}");
        }
        for name in ["greeter", "order-shipped-email2"] {
            assert!(valid_name(name), "{name:?}");
        }
    }

    #[test]
    fn every_placeholder_is_filled_and_an_existing_directory_is_left_alone() {
        let parent = std::env::temp_dir().join(format!("sluice-scaffold-{}", std::process::id()));
        for language in [
            Language::Rust,
            Language::JavaScript,
            Language::TypeScript,
            Language::Python,
        ] {
            let _ = std::fs::remove_dir_all(&parent);
            let root = scaffold("my-greeter", language, &parent).unwrap();
            for (file, _) in COMMON.iter().chain(language.templates()) {
                let text = std::fs::read_to_string(root.join(file)).unwrap();
                assert!(!text.contains("{{"), "{language:?} {file}: {text}");
            }
            assert!(matches!(
                scaffold("my-greeter", language, &parent),
                Err(ScaffoldError::Exists(_))
            ));
        }
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
