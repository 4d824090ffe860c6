//! `sluice new`: for every language, the project it creates builds with its
//! own script (installing its pinned tools) and meets its own vectors under
//! `sluice replay`: three commands from nothing to a tested handler.

use std::process::Command;

use crate::support::*;

fn new_build_replay(lang: &str) {
    let scratch = Scratch::new();
    let name = format!("greeter-{lang}");
    let created = sluice()
        .args(["new", &name, "--lang", lang, "--dir"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let project = scratch.path().join(&name);
    let built = Command::new(project.join("build"))
        // A Rust project shares one target directory across test runs, so
        // wit-bindgen and serde_json are compiled once.
        .env("CARGO_TARGET_DIR", repo().join("target/scaffold-test"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{lang} build: {}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let component = project.join(format!("dist/{name}/0.1.0.wasm"));
    assert!(component.is_file(), "{lang}: no {}", component.display());
    let replayed = sluice()
        .args(["replay", "--handler"])
        .arg(&component)
        .arg("--input")
        .arg(project.join("vectors.jsonl"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(replayed.status.success(), "{lang} replay: {stderr}");
    assert!(
        stderr.contains("3 of 3 expectations met; 0 not"),
        "{lang}: {stderr}"
    );
}

#[test]
fn a_new_rust_handler_builds_and_meets_its_vectors() {
    new_build_replay("rust");
}

#[test]
fn a_new_javascript_handler_builds_and_meets_its_vectors() {
    new_build_replay("js");
}

#[test]
fn a_new_typescript_handler_builds_and_meets_its_vectors() {
    new_build_replay("ts");
}

#[test]
fn a_new_python_handler_builds_and_meets_its_vectors() {
    new_build_replay("python");
}

#[test]
fn new_refuses_a_bad_name_and_an_existing_directory_saying_why() {
    let scratch = Scratch::new();
    let bad = sluice()
        .args(["new", "Order_Email", "--lang", "rust", "--dir"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("cannot name a handler"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    std::fs::create_dir(scratch.path().join("taken")).unwrap();
    let taken = sluice()
        .args(["new", "taken", "--lang", "python", "--dir"])
        .arg(scratch.path())
        .output()
        .unwrap();
    assert!(!taken.status.success());
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    assert_eq!(
        std::fs::read_dir(scratch.path().join("taken"))
            .unwrap()
            .count(),
        0,
        "new wrote into a directory that was there"
    );
}
