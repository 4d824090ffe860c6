//! The command line: replay, inspect, refusals of bad files, config errors,
//! and the JSONL file source.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use sluice::embedded::EmbeddedBroker;

use crate::support::*;

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one `error:` line of a failed command.
fn error_line(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected failure, got {}",
        output.status
    );
    let stderr = stderr_of(output);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "want exactly one error line:\n{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some(errors[0]),
        "the error line comes last:\n{stderr}"
    );
    errors[0].to_owned()
}

fn shop_handler(name: &str) -> PathBuf {
    dist().join(name).join("0.1.0.wasm")
}

#[test]
fn replay_prints_exactly_the_expected_outputs_of_the_shop_samples() {
    for (handler, topic) in [
        ("order-shipped-email", "order-shipped"),
        ("cancel-order", "order-cancel-requests"),
        ("order-overdue", "orders"),
    ] {
        let output = sluice()
            .args(["replay", "--handler"])
            .arg(shop_handler(handler))
            .arg("--input")
            .arg(repo().join(format!("examples/shop/messages/{topic}.jsonl")))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
        let expected_file = repo().join(format!("examples/shop/expected/{topic}.replay.jsonl"));
        let expected = std::fs::read_to_string(&expected_file).unwrap();
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            expected,
            "replay of {handler} differs from {}",
            expected_file.display()
        );
    }
}

#[test]
fn inspect_describes_a_handler_and_its_sandbox_check() {
    let output = sluice()
        .arg("inspect")
        .arg(shop_handler("order-shipped-email"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "contract  sluice:handler@0.4.0",
        "world     handler",
        "exports   sluice:handler/handle@0.4.0",
        "imports   sluice:handler/types@0.4.0",
        "wasi:cli/stdout@",
        "sandbox   instantiates",
    ] {
        assert!(
            text.contains(expected),
            "inspect lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn inspect_describes_a_decider_and_replay_decides_each_message_on_an_empty_stream() {
    let decider = dist().join("sku-coupon/0.1.0.wasm");
    let output = sluice().arg("inspect").arg(&decider).output().unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "contract  sluice:handler@0.4.0",
        "world     decider",
        "exports   sluice:handler/decide@0.4.0",
    ] {
        assert!(
            text.contains(expected),
            "inspect lacks {expected:?}:\n{text}"
        );
    }
    // Replay decides each message against an empty stream (no `history`
    // in the file): the first command of a SKU adds it, and so does every
    // later add, which a real stream would have refused.
    let output = sluice()
        .args(["replay", "--handler"])
        .arg(&decider)
        .arg("--input")
        .arg(repo().join("examples/shop/messages/sku-commands.jsonl"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr_of(&output));
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["stream"], "sku-SKU-1", "{}", lines[0]);
    assert_eq!(lines[0]["events"][0]["type"], "SkuAddedToAssortment");
    assert_eq!(
        lines[1]["outputs"][0]["publish"]["payload"],
        r#"{"coupon":"SPRING10","reason":"not-in-assortment","sku":"SKU-1","type":"CouponRejected"}"#,
        "{}",
        lines[1]
    );
}

/// Files that are not handlers, with a piece of the reason each must give.
fn bad_files(scratch: &Scratch) -> Vec<(PathBuf, &'static str)> {
    let real = std::fs::read(component("test-faults")).unwrap();
    vec![
        (
            scratch.write("text.wasm", "hello, not wasm"),
            "not a WebAssembly file",
        ),
        (
            scratch.write("core.wasm", b"\0asm\x01\0\0\0"),
            "a core WebAssembly module, not a component",
        ),
        (
            scratch.write("truncated.wasm", &real[..real.len() / 2]),
            "does not compile",
        ),
        (
            component("test-other-world"),
            "not a sluice handler: it exports run",
        ),
        // Refused on load, never at call time, naming what is missing.
        (
            component("test-unknown-import"),
            "needs imports the host does not provide: component imports instance `test:unknown-import/query`",
        ),
    ]
}

#[test]
fn inspect_and_replay_refuse_bad_files_with_one_line() {
    let scratch = Scratch::new();
    let input = scratch.write("in.jsonl", "{\"topic\":\"t\",\"payload\":\"x\"}\n");
    for (file, reason) in bad_files(&scratch) {
        let inspect = sluice().arg("inspect").arg(&file).output().unwrap();
        let line = error_line(&inspect);
        assert!(line.contains(reason), "inspect {}: {line}", file.display());
        assert!(
            line.contains(&*file.to_string_lossy()),
            "names the file: {line}"
        );

        let replay = sluice()
            .args(["replay", "--handler"])
            .arg(&file)
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        assert!(replay.stdout.is_empty());
        let line = error_line(&replay);
        assert!(line.contains(reason), "replay {}: {line}", file.display());
    }
}

fn run_with(config: &Path) -> Output {
    sluice()
        .args(["run", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn run_refuses_bad_handler_files_with_one_line() {
    let scratch = Scratch::new();
    for (file, reason) in bad_files(&scratch) {
        let handlers = scratch.path().join(format!(
            "handlers-{}",
            file.file_stem().unwrap().to_string_lossy()
        ));
        std::fs::create_dir_all(handlers.join("bad")).unwrap();
        std::fs::copy(&file, handlers.join("bad/0.1.0.wasm")).unwrap();
        let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"bad\"\npublish-to = [\"*\"]\n";
        // Nothing listens there: the handler must be refused before any connection.
        let config = scratch.write("bad.toml", config("127.0.0.1:9", "g", &handlers, routes));
        let line = error_line(&run_with(&config));
        assert!(line.contains(reason), "{}: {line}", file.display());
        assert!(line.contains("bad/0.1.0.wasm"), "names the file: {line}");
    }
}

#[test]
fn config_errors_name_the_offending_key() {
    let scratch = Scratch::new();
    let handlers = dist();
    let route = "[[routes]]\ntopic = \"order-shipped\"\nhandler = \"order-shipped-email\"\npublish-to = [\"*\"]\n";
    let cases = [
        (format!("brokerz = \"x:1\"\n{route}"), "brokerz"),
        (
            config(
                "127.0.0.1:9",
                "g",
                &handlers,
                &format!("[limits]\ndeadline-ms = 0\n{route}"),
            ),
            "limits.deadline-ms",
        ),
        (
            config("127.0.0.1:9", "g", &handlers, "[[routes]]\ntopic = \"a\"\n"),
            "handler",
        ),
        (config("localhost", "g", &handlers, route), "brokers"),
        (
            config(
                "127.0.0.1:9",
                "g",
                &handlers,
                "[[routes]]\ntopic = \"a\"\nhandler = \"nope\"\npublish-to = [\"*\"]\n",
            ),
            "no handler named \"nope\"",
        ),
    ];
    for (text, key) in cases {
        let file = scratch.write("config.toml", &text);
        let line = error_line(&run_with(&file));
        assert!(
            line.contains(key),
            "error for {key:?} does not name it: {line}"
        );
    }
}

#[test]
fn the_file_source_runs_routes_from_jsonl_and_stops_at_a_bad_line() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let input = scratch.write(
        "in.jsonl",
        "{\"topic\":\"local\",\"key\":\"a\",\"payload\":\"one\"}\n\
         {\"topic\":\"local\",\"key\":\"a\",\"payload\":{\"two\":2}}\n\
         {\"topic\":\"local\",\"key\":\"a\"}\n\
         {\"topic\":\"local\",\"key\":\"a\",\"payload\":\"four\"}\n",
    );
    let routes = format!(
        "[source]\nfile = \"{}\"\n\n[[routes]]\ntopic = \"local\"\nhandler = \"test-faults\"\npublish-to = [\"*\"]\n",
        input.display()
    );
    let config = scratch.write("file.toml", config(brokers, "file", &handlers, &routes));
    let exit = Host::start(&scratch, "file", &config, &[]).wait();
    assert!(!exit.status.success());
    let last = exit.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("in.jsonl:3: missing payload"),
        "{}",
        exit.stderr
    );
    // The lines before the bad one were still handled and published.
    let payloads: Vec<String> = read_topic(brokers, "echo")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(payloads, ["one", "{\"two\":2}"]);
}

#[test]
fn replay_keeps_compiled_components_in_its_artifact_cache_unless_told_not_to() {
    let scratch = Scratch::new();
    let cache = scratch.path().join("cache");
    let input = repo().join("examples/shop/messages/order-shipped.jsonl");
    let run = |extra: &[&std::ffi::OsStr]| {
        let output = sluice()
            .args(["replay", "--handler"])
            .arg(dist().join("order-shipped-email/0.1.0.wasm"))
            .arg("--input")
            .arg(&input)
            .args(extra)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", stderr_of(&output));
        output.stdout
    };
    let uncached = run(&["--no-artifact-cache".as_ref()]);
    let cached = run(&["--artifact-cache".as_ref(), cache.as_os_str()]);
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].ends_with(".cwasm"), "{artifacts:?}");
    // Loaded from the cache the second time: the same outcomes.
    let again = run(&["--artifact-cache".as_ref(), cache.as_os_str()]);
    assert_eq!(uncached, cached);
    assert_eq!(cached, again);
}

#[test]
fn a_reader_that_went_away_ends_a_command_quietly_with_its_own_status() {
    // stdout and stderr both go to a pipe whose reader is already closed,
    // as in `sluice run ... 2>&1 | head` once head has its lines.
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let quietly = |command: &mut std::process::Command| {
        let writer = closed_pipe();
        command
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .status()
            .unwrap()
    };

    let replay = quietly(
        sluice()
            .args(["replay", "--handler"])
            .arg(dist().join("order-shipped-email/0.1.0.wasm"))
            .arg("--input")
            .arg(repo().join("examples/shop/messages/order-shipped.jsonl")),
    );
    assert!(replay.success(), "replay: {replay}");

    let broker = EmbeddedBroker::start().unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let input = scratch.write(
        "in.jsonl",
        "{\"topic\":\"local\",\"key\":\"a\",\"payload\":\"one\"}\n",
    );
    let routes = format!(
        "[source]\nfile = \"{}\"\n\n[[routes]]\ntopic = \"local\"\nhandler = \"test-faults\"\npublish-to = [\"*\"]\n",
        input.display()
    );
    let config = scratch.write(
        "file.toml",
        config(broker.bootstrap_servers(), "file", &handlers, &routes),
    );
    let run = quietly(sluice().arg("run").arg("--config").arg(&config));
    assert!(run.success(), "run: {run}");
    assert_eq!(
        read_topic(broker.bootstrap_servers(), "echo").len(),
        1,
        "the run's work was done"
    );
}

#[test]
fn a_host_runs_from_the_environment_alone_and_a_missing_secret_file_stops_it_with_one_line() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let sent = ["one", "two", "three"];
    let messages: Vec<_> = sent.iter().map(|p| message("in", 0, "k", p)).collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-echo", "0.1.0", &component("test-echo"))]);
    let token = scratch.write("token", "from-a-mounted-secret-0123\n");
    let environment = |command: &mut std::process::Command| {
        command
            .args(["run", "--until-drained"])
            .env_clear()
            .env("SLUICE_BROKERS", brokers)
            .env("SLUICE_GROUP_ID", "from-env")
            .env("SLUICE_HANDLERS_DIR", &handlers)
            .env("SLUICE_ARTIFACT_CACHE", shared_artifact_cache())
            .env(
                "SLUICE_ROUTES",
                r#"[{ topic = "in", handler = "test-echo", publish-to = ["*"] }]"#,
            )
            .env("SLUICE_COMMIT_INTERVAL_MS", "200")
            .env("SLUICE_KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "3000")
            .env("SLUICE_ADMIN_TOKEN_FILE", &token)
            // What Kubernetes sets for a service named sluice: not a setting.
            .env("SLUICE_PORT", "tcp://10.0.0.1:9464");
    };
    let mut command = sluice();
    environment(&mut command);
    let output = command.output().unwrap();
    let stderr = stderr_of(&output);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("SLUICE_PORT") && stderr.contains("names no setting"),
        "{stderr}"
    );
    let echoed: Vec<String> = read_topic(brokers, "echo")
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(echoed, sent);
    assert_eq!(committed(brokers, "from-env", "in"), vec![(0, Some(3))]);

    let mut command = sluice();
    environment(&mut command);
    let missing = scratch.path().join("no-such-secret");
    let output = command
        .env("SLUICE_STORE_URL_FILE", &missing)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let line = error_line(&output);
    assert!(
        line.contains("SLUICE_STORE_URL_FILE: cannot read") && line.contains("no-such-secret"),
        "{line}"
    );
}

#[test]
fn check_says_what_it_found_one_line_each_and_fails_on_any_problem() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-echo", "0.1.0", &component("test-echo"))]);
    let store = "[store]\nbackend = \"postgres\"\nurl = \"host=127.0.0.1 port=5432 user=postgres dbname=test\"\nschema = \"sluice_check\"\n";
    let route = |topic: &str| {
        format!("[[routes]]\ntopic = \"{topic}\"\nhandler = \"test-echo\"\npublish-to = [\"*\"]\n")
    };
    let good = scratch.write(
        "good.toml",
        config(brokers, "g", &handlers, &format!("{}{store}", route("in"))),
    );
    let (ok, lines) = check(&good, &[], &[]);
    assert!(ok, "{lines}");
    for line in [
        "ok: config (1 routes)",
        "ok: route in -> handler test-echo 0.1.0",
        &format!("ok: brokers {brokers} answer (1 brokers)"),
    ] {
        assert!(
            lines.lines().any(|l| l == line),
            "{line:?} not in:\n{lines}"
        );
    }
    assert!(
        lines
            .lines()
            .any(|l| l.starts_with("ok: store ") && l.ends_with(" answers")),
        "{lines}"
    );
    assert!(!lines.contains("problem"), "{lines}");

    // A rejected version beside the served one, and a routed topic the
    // brokers do not have: two problems, each on its line.
    std::fs::copy(
        scratch.write("text.wasm", "hello, not wasm"),
        handlers.join("test-echo/0.2.0.wasm"),
    )
    .unwrap();
    let absent = scratch.write(
        "absent.toml",
        config(
            brokers,
            "g",
            &handlers,
            &format!("{}{}", route("in"), route("absent")),
        ),
    );
    let (ok, lines) = check(&absent, &[], &[]);
    assert!(!ok, "{lines}");
    let problems: Vec<&str> = lines
        .lines()
        .filter(|l| l.starts_with("problem: "))
        .collect();
    assert_eq!(problems.len(), 2, "{lines}");
    assert!(
        problems[0].contains("handler test-echo 0.2.0")
            && problems[0].contains("not a WebAssembly file"),
        "{lines}"
    );
    assert_eq!(
        problems[1],
        "problem: topic absent (routed) does not exist on the brokers"
    );
    assert!(lines.ends_with("2 problems\n"), "{lines}");
    std::fs::remove_file(handlers.join("test-echo/0.2.0.wasm")).unwrap();

    // Brokers that do not answer; --offline does not ask them.
    let nowhere = scratch.write(
        "nowhere.toml",
        config("127.0.0.1:9", "g", &handlers, &route("in")),
    );
    let (ok, lines) = check(&nowhere, &["--offline"], &[]);
    assert!(ok, "{lines}");
    assert!(
        lines.contains("ok: brokers and store not asked (--offline)"),
        "{lines}"
    );
    let (ok, lines) = check(&nowhere, &[], &[]);
    assert!(!ok, "{lines}");
    assert!(
        lines.contains("problem: brokers 127.0.0.1:9 do not answer"),
        "{lines}"
    );

    // A config that does not parse is one problem line.
    let broken = scratch.write("broken.toml", format!("brokerz = 1\n{}", route("in")));
    let (ok, lines) = check(&broken, &[], &[]);
    assert!(!ok);
    assert_eq!(lines.lines().count(), 1, "{lines}");
    assert!(
        lines.starts_with("problem: config ") && lines.contains("brokerz"),
        "{lines}"
    );
}

#[test]
fn the_kubernetes_manifests_validate_and_their_config_and_environment_pass_check() {
    let path = repo().join("deploy/kubernetes.yaml");
    // Against Kubernetes' own schemas, rejecting unknown fields (the
    // validator is installed by scripts/setup).
    let validated = std::process::Command::new(
        repo().join(".tools/kubernetes-validate/bin/kubernetes-validate"),
    )
    .arg("--strict")
    .arg(&path)
    .output()
    .unwrap();
    let report = String::from_utf8_lossy(&validated.stderr).into_owned()
        + &String::from_utf8_lossy(&validated.stdout);
    assert!(validated.status.success(), "{report}");
    for resource in [
        "configmap/sluice",
        "secret/sluice",
        "deployment/sluice",
        "service/sluice-admin",
        "poddisruptionbudget/sluice",
    ] {
        assert!(
            report.contains(&format!("passed for resource {resource} ")),
            "{resource}: {report}"
        );
    }
    let manifest = std::fs::read_to_string(&path).unwrap();
    // The ConfigMap's sluice.toml: the block under `sluice.toml: |`.
    let toml: String = manifest
        .split("sluice.toml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.trim_start_matches("    ")))
        .collect();
    let scratch = Scratch::new();
    let config = scratch.write("sluice.toml", &toml);
    let token = scratch.write("admin-token", "replace-with-a-long-random-token\n");
    let password = scratch.write("sasl-password", "secret\n");
    // The manifest's own variables, with its mounts' files here.
    for variable in [
        "SLUICE_GROUP_ID",
        "SLUICE_ADMIN_TOKEN_FILE",
        "SLUICE_KAFKA_COMMON_SASL_PASSWORD_FILE",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(
            manifest.contains(variable),
            "{variable} not in the manifest"
        );
    }
    let output = sluice()
        .args(["check", "--offline", "--config"])
        .arg(&config)
        .env_clear()
        .env("SLUICE_HANDLERS_DIR", dist())
        .env("SLUICE_ARTIFACT_CACHE", shared_artifact_cache())
        .env("SLUICE_GROUP_ID", "shop")
        .env("SLUICE_ADMIN_TOKEN_FILE", &token)
        .env("SLUICE_KAFKA_COMMON_SASL_PASSWORD_FILE", &password)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability:4318",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", stderr_of(&output));
    assert!(
        stdout.contains("ok: route order-shipped -> handler order-shipped-email"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "ok: otlp: spans to http://otel-collector.observability:4318/v1/traces (not asked: --offline)"
        ),
        "{stdout}"
    );
}

/// TLS reaches the brokers' wire (the build links OpenSSL, and
/// `[kafka.common]` reaches the client): against a TLS server that is not
/// Kafka (`openssl s_server`, installed by scripts/setup), a client trusting
/// its certificate gets through the handshake, and one trusting another CA
/// is refused there, which `check` says.
#[test]
fn tls_settings_reach_the_brokers_wire_and_check_says_a_handshake_failed() {
    let scratch = Scratch::new();
    let certificate = |name: &str| {
        let (cert, key) = (
            scratch.path().join(format!("{name}.pem")),
            scratch.path().join(format!("{name}.key")),
        );
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (scripts/setup installs it)");
        assert!(made.status.success(), "{}", stderr_of(&made));
        (cert, key)
    };
    let (cert, key) = certificate("broker");
    let (other, _) = certificate("other");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the TLS server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let handlers = scratch.handlers(&[("test-echo", "0.1.0", &component("test-echo"))]);
    let route = "[[routes]]\ntopic = \"in\"\nhandler = \"test-echo\"\npublish-to = [\"*\"]\n";
    let trusting = |ca: &Path, name: &str| {
        let text = config(&format!("127.0.0.1:{port}"), "tls", &handlers, route)
            + &format!(
                "\n[kafka.common]\n\"security.protocol\" = \"SSL\"\n\"ssl.ca.location\" = \"{}\"\n",
                ca.display()
            );
        let config = scratch.write(name, text);
        std::thread::spawn(move || check(&config, &[], &[]))
    };
    let (right, wrong) = (
        trusting(&cert, "right.toml"),
        trusting(&other, "wrong.toml"),
    );
    let (right, wrong) = (right.join().unwrap(), wrong.join().unwrap());
    let _ = server.kill();
    let _ = server.wait();
    let brokers_line = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!("brokers 127.0.0.1:{port}")))
            .unwrap_or_else(|| panic!("a brokers line in:\n{stdout}"))
            .to_owned()
    };
    // Neither is Kafka behind its TLS: both fail the check...
    assert!(!right.0 && !wrong.0);
    // ...the one trusting another CA at the handshake, saying so...
    let refused = brokers_line(&wrong.1);
    // (librdkafka words it "SSL handshake failed: ..." or "... (after Nms in
    // state SSL_HANDSHAKE)" depending on where the handshake stopped.)
    assert!(
        refused.contains("certificate verify failed")
            && (refused.contains("SSL handshake failed") || refused.contains("SSL_HANDSHAKE")),
        "{refused}"
    );
    // ...and the one trusting the server's certificate after it.
    let through = brokers_line(&right.1);
    assert!(!through.contains("certificate verify failed"), "{through}");
    assert!(!through.contains("SSL handshake failed"), "{through}");
    assert!(!through.contains("OpenSSL not available"), "{through}");
}
