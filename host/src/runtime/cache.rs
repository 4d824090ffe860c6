//! Compiled handlers on disk, keyed by the component's content hash and the
//! engine's settings, so a restart deserializes instead of compiling again
//! (a JS or Python component takes seconds to compile, milliseconds to load).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components.
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    /// The engine's settings and wasmtime's version: an artifact only loads
    /// into an engine that matches both.
    engine_key: String,
}

/// The SHA-256 of a component, hex: the artifact's name and a file's identity.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl ArtifactCache {
    /// A cache in `dir` (created on first store) for artifacts of `engine`.
    pub(crate) fn new(dir: &Path, engine: &Engine) -> Self {
        // Within one build of sluice, `DefaultHasher::new()` is stable across
        // runs; a different build may miss the cache, never misuse it
        // (wasmtime checks compatibility again when deserializing).
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ArtifactCache {
            dir: dir.to_owned(),
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// The component compiled from `bytes`, from the cache if it is there,
    /// else compiled and stored. Whether it came from the cache is returned
    /// with it.
    pub(crate) fn component(
        &self,
        engine: &Engine,
        hash: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        let path = self.path(hash);
        if path.exists() {
            // SAFETY: artifacts in this directory are written only by
            // `store` below, from components this engine compiled; the
            // directory belongs to the host (see the config's
            // `artifact-cache`) and files are replaced by rename, never
            // changed in place while mapped.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(error) => tracing::warn!(
                    artifact = %path.display(),
                    error = %super::one_line(&error),
                    "cached artifact unusable; compiling again"
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(error) = self.store(&path, &component) {
            tracing::warn!(
                artifact = %path.display(),
                %error,
                "cannot cache compiled handler; the next start compiles it again"
            );
        }
        Ok((component, false))
    }

    fn store(&self, path: &Path, component: &Component) -> std::io::Result<()> {
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_sha256_hex() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
