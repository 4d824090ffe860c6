use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"), Path::new("."))
}

const MINIMAL: &str = r#"
brokers = "embedded"
[[routes]]
topic = "in"
handler = "echo"
publish-to = ["*"]
"#;

#[test]
fn defaults_fill_everything_not_given() {
    let config = parse(MINIMAL).unwrap();
    assert!(config.is_embedded());
    assert_eq!(config.group_id, "sluice");
    assert_eq!(config.limits.deadline, Duration::from_millis(1000));
    assert_eq!(config.limits.memory_mib, 64);
    assert_eq!(config.routes[0].dead_letter_topic(), "in.dlq");
    assert_eq!(
        config.routes[0].on_invalid_input,
        OnInvalidInput::DeadLetter
    );
}

fn error_of(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn unknown_keys_are_named() {
    let err = error_of(&format!("{MINIMAL}\nbrokerz = 1\n"));
    assert!(err.contains("brokerz"), "{err}");
    let err = error_of(&format!("{MINIMAL}\n[limits]\ndeadline = 5\n"));
    assert!(err.contains("deadline"), "{err}");
}

#[test]
fn out_of_range_values_name_key_and_range() {
    let err = error_of(&format!("{MINIMAL}\n[limits]\ndeadline-ms = 0\n"));
    assert!(err.contains("limits.deadline-ms"), "{err}");
    assert!(err.contains("1 to 600000"), "{err}");
}

#[test]
fn problems_are_typed_and_durations_keep_their_ms_keys() {
    let problem_at = |text: String| match parse(&text).unwrap_err() {
        ConfigError::Invalid { key, problem, .. } => (key, problem),
        other => panic!("not a validation error: {other}"),
    };
    let retry = format!("{MINIMAL}retry.initial-ms = 50\nretry.max-interval-ms = 20\n");
    assert_eq!(
        problem_at(retry),
        (
            "routes[0].retry.max-interval-ms".to_owned(),
            Problem::OutOfRange {
                value: 20,
                min: 50,
                max: 3_600_000
            }
        )
    );
    let semver = format!("{MINIMAL}\n[handlers.echo]\nshadow = \"two\"\n");
    assert_eq!(
        problem_at(semver),
        (
            "handlers.echo.shadow".to_owned(),
            Problem::NotSemver("two".into())
        )
    );
    let config = parse(&format!(
        "commit-interval-ms = 250\n{MINIMAL}breaker.open-ms = 1500\nhttp.timeout-ms = 70\n"
    ))
    .unwrap();
    assert_eq!(config.commit_interval, Duration::from_millis(250));
    assert_eq!(config.routes[0].breaker.open, Duration::from_millis(1500));
    assert_eq!(config.routes[0].http.timeout, Duration::from_millis(70));
    assert_eq!(config.routes[0].retry.initial, Duration::from_millis(100));
}

#[test]
fn route_errors_name_the_route() {
    let err = error_of(
        "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\n[[routes]]\ntopic = \"a\"\nhandler = \"y\"\npublish-to = [\"*\"]\n",
    );
    assert!(err.contains("routes[1].topic"), "{err}");
    let err = error_of(
        "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"Bad Name\"\npublish-to = [\"*\"]\n",
    );
    assert!(err.contains("routes[0].handler"), "{err}");
    let err = error_of(
        "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\nversion = \"one\"\n",
    );
    assert!(err.contains("routes[0].version"), "{err}");
}

#[test]
fn brokers_must_be_embedded_or_host_port() {
    let err = error_of(
        "brokers = \"localhost\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\n",
    );
    assert!(err.contains("brokers"), "{err}");
    assert!(
        parse("brokers = \"a:9092,b:9093\"\n[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\n")
            .is_ok()
    );
}

#[test]
fn reserved_kafka_properties_are_refused() {
    let err = error_of(&format!(
        "{MINIMAL}\n[kafka.consumer]\n\"enable.auto.offset.store\" = \"true\"\n"
    ));
    assert!(
        err.contains("kafka.consumer.\"enable.auto.offset.store\""),
        "{err}"
    );
    let err = error_of(&format!(
        "{MINIMAL}\n[kafka.common]\n\"group.id\" = \"other\"\n"
    ));
    assert!(err.contains("kafka.common.\"group.id\""), "{err}");
}

#[test]
fn transaction_timeout_must_be_milliseconds_in_range() {
    let with = |ms: &str| {
        parse(&format!(
            "{MINIMAL}\n[kafka.producer]\n\"transaction.timeout.ms\" = \"{ms}\"\n"
        ))
    };
    let err = with("ten seconds").unwrap_err().to_string();
    assert!(err.contains("transaction.timeout.ms"), "{err}");
    assert!(err.contains("not a number"), "{err}");
    let err = with("500").unwrap_err().to_string();
    assert!(err.contains("1000 to 900000"), "{err}");
    assert!(with("30000").is_ok());
    // Set for every client, it is checked (and named) there.
    let err = error_of(&format!(
        "{MINIMAL}\n[kafka.common]\n\"transaction.timeout.ms\" = \"500\"\n"
    ));
    assert!(
        err.contains("kafka.common.\"transaction.timeout.ms\""),
        "{err}"
    );
}

#[test]
fn exactly_once_routes_only_publish_on_a_broker_with_transactions() {
    let route = "[[routes]]\ntopic = \"a\"\nhandler = \"x\"\npublish-to = [\"*\"]\ndelivery = \"exactly-once\"\n";
    let err = error_of(&format!("brokers = \"embedded\"\n{route}"));
    assert!(err.contains("routes[0].delivery"), "{err}");
    let err = error_of(&format!(
        "brokers = \"k:9092\"\n{route}[routes.http]\nallow = [\"api\"]\n"
    ));
    assert!(err.contains("routes[0].http.allow"), "{err}");
    let config = parse(&format!("brokers = \"k:9092\"\n{route}")).unwrap();
    assert_eq!(
        config.transactional_topics(),
        HashSet::from(["a".to_owned()])
    );
}

#[test]
fn handler_sections_are_checked_and_route_pins_count_as_pins() {
    let config = parse(&format!(
        "{MINIMAL}version = \"1.2.0\"\n[handlers.echo]\nshadow = \"2.0.0\"\n[handlers.echo.canary]\nversion = \"3.0.0\"\npercent = 25\n"
    ))
    .unwrap();
    let settings = config.handler_settings("echo");
    assert_eq!(settings.version.as_deref(), Some("1.2.0"));
    assert_eq!(settings.shadow.as_deref(), Some("2.0.0"));
    assert_eq!(settings.canary.unwrap().percent, 25.0);

    let err = error_of(&format!("{MINIMAL}[handlers.echo.canary]\npercent = 0\n"));
    assert!(err.contains("handlers.echo.canary.percent"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}[handlers.echo.canary]\nmax-dead-letter-rate = 2\n"
    ));
    assert!(
        err.contains("handlers.echo.canary.max-dead-letter-rate"),
        "{err}"
    );
    let err = error_of(&format!("{MINIMAL}[handlers.echo]\nshadow = \"next\"\n"));
    assert!(err.contains("handlers.echo.shadow"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}[handlers.echo]\nversion = \"1.0.0\"\nshadow = \"1.0.0\"\n"
    ));
    assert!(err.contains("active, shadow or canary"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}version = \"1.0.0\"\n[handlers.echo]\nversion = \"2.0.0\"\n"
    ));
    assert!(err.contains("routes[0].version"), "{err}");
    let err = error_of(&format!("{MINIMAL}[admin]\nlisten = \"localhost\"\n"));
    assert!(err.contains("admin.listen"), "{err}");
}

#[test]
fn every_route_says_where_its_handler_may_publish() {
    let route = |publish_to: &str| {
        format!(
            "brokers = \"embedded\"\n[[routes]]\ntopic = \"in\"\nhandler = \"h\"\n{publish_to}\n"
        )
    };
    let err = error_of(&route(""));
    assert!(err.contains("routes[0].publish-to: missing"), "{err}");
    assert!(err.contains("[] if it publishes nothing"), "{err}");
    let config = parse(&route("publish-to = [\"emails\", \"orders.*\"]")).unwrap();
    assert_eq!(config.routes[0].publish_to(), ["emails", "orders.*"]);
    assert!(parse(&route("publish-to = []")).is_ok());
    for (entry, why) in [
        ("in.dlq", "\"in.dlq\" is a dead-letter topic"),
        ("other.dlq", "is a dead-letter topic"),
        ("h.shadow-diffs", "is a shadow-diff topic"),
        ("__consumer_offsets", "is a Kafka-internal topic"),
        ("a b", "' ' is not allowed"),
        ("or*ders", "'*' is not allowed"),
        ("", "cannot be empty"),
    ] {
        let err = error_of(&route(&format!("publish-to = [\"{entry}\"]")));
        assert!(
            err.contains("routes[0].publish-to") && err.contains(why),
            "{entry}: {err}"
        );
    }
    // A configured dead-letter topic is reserved whatever it is called.
    let err = error_of(
        "brokers = \"embedded\"\n[[routes]]\ntopic = \"in\"\nhandler = \"h\"\npublish-to = [\"errors\"]\n[[routes]]\ntopic = \"b\"\nhandler = \"g\"\npublish-to = []\ndead-letter-topic = \"errors\"\n",
    );
    assert!(err.contains("\"errors\" is a dead-letter topic"), "{err}");
}

#[test]
fn topic_names_kafka_refuses_are_refused() {
    let err = error_of(
        "brokers = \"embedded\"\n[[routes]]\ntopic = \"a b\"\nhandler = \"h\"\npublish-to = []\n",
    );
    assert!(
        err.contains("routes[0].topic") && err.contains("not allowed"),
        "{err}"
    );
    let err = error_of(
        "brokers = \"embedded\"\n[[routes]]\ntopic = \"a\"\nhandler = \"h\"\npublish-to = []\ndead-letter-topic = \"a/dlq\"\n",
    );
    assert!(err.contains("routes[0].dead-letter-topic"), "{err}");
}

#[test]
fn host_memory_settings_default_and_are_checked() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.max_in_flight_mib, 256);
    assert_eq!(config.limits.max_component_mib, 48);
    assert_eq!(config.decider.cache_mib, 64);
    let err = error_of(&format!("max-in-flight-mib = 0\n{MINIMAL}"));
    assert!(err.contains("max-in-flight-mib"), "{err}");
    let err = error_of(&format!("{MINIMAL}\n[limits]\nmax-component-mib = 0\n"));
    assert!(err.contains("limits.max-component-mib"), "{err}");
}

#[test]
fn missing_routes_are_explained() {
    let err = error_of("brokers = \"embedded\"\nroutes = []\n");
    assert!(err.contains("routes"), "{err}");
    let err = error_of("brokers = \"embedded\"\n");
    assert!(err.contains("routes"), "{err}");
}

#[test]
fn a_handler_overrides_some_limits_and_keeps_the_rest() {
    let config = parse(&format!(
        "{MINIMAL}\n[limits]\ndeadline-ms = 200\nworkers = 3\n\n[handlers.echo.limits]\nmemory-mib = 8\ninstances = \"fresh\"\nfuel = 1000\n"
    ))
    .unwrap();
    let echo = config.limits_for("echo");
    assert_eq!(echo.memory_mib, 8);
    assert_eq!(echo.instances, InstanceStrategy::Fresh);
    assert_eq!(echo.calls_per_instance(), 1);
    assert_eq!(echo.fuel, Some(1000));
    assert_eq!(echo.deadline, Duration::from_millis(200), "from [limits]");
    assert!(echo.deterministic, "on by default");
    let other = config.limits_for("other");
    assert_eq!(other, config.limits);
    assert_eq!(other.calls_per_instance(), 10_000);
    assert_eq!(config.handler_limits().len(), 1);
}

#[test]
fn bad_handler_limits_are_named() {
    let section = format!("{MINIMAL}\n[handlers.echo.limits]\n");
    let err = error_of(&format!("{section}memory-mb = 8\n"));
    assert!(
        err.contains("handlers.echo.limits") && err.contains("memory-mb"),
        "{err}"
    );
    let err = error_of(&format!("{section}max-outputs = 0\n"));
    assert!(err.contains("handlers.echo.limits.max-outputs"), "{err}");
    let err = error_of(&format!("{section}instances = \"pooled\"\n"));
    assert!(err.contains("pooled") && err.contains("fresh"), "{err}");
    let err = error_of(&format!("{section}workers = 2\n"));
    assert!(err.contains("host-wide"), "{err}");
}

#[test]
fn an_admin_token_must_be_long_and_have_no_spaces() {
    let err = error_of(&format!(
        "{MINIMAL}[admin]\nlisten = \"0\"\ntoken = \"short\"\n"
    ));
    assert!(err.contains("admin.token") && err.contains("16"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}[admin]\ntoken = \"long enough but spaced\"\n"
    ));
    assert!(err.contains("admin.token"), "{err}");
    let config = parse(&format!("{MINIMAL}[admin]\ntoken = \"0123456789abcdef\"\n")).unwrap();
    assert_eq!(config.admin.token.as_deref(), Some("0123456789abcdef"));
}

#[test]
fn store_and_decider_settings_default_and_bad_ones_are_named() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.store.backend, StoreBackend::Sqlite);
    assert_eq!(config.store.path, Path::new("sluice-events.db"));
    assert_eq!(config.decider.conflict_attempts, 10);
    assert_eq!(config.decider.snapshot_every, 100);
    let store = |body: &str| error_of(&format!("{MINIMAL}\n[store]\n{body}\n"));
    let err = store("backend = \"mysql\"");
    assert!(err.contains("mysql") && err.contains("postgres"), "{err}");
    let err = store("schema = \"Robert'); DROP\"");
    assert!(err.contains("store.schema"), "{err}");
    let err = store("backend = \"postgres\"\nurl = \"postgres://host:notaport/db\"");
    assert!(err.contains("store.url"), "{err}");
    let err = store("connections = 0");
    assert!(err.contains("store.connections"), "{err}");
    let err = store("pth = \"x.db\"");
    assert!(err.contains("pth"), "{err}");
    let err = error_of(&format!("{MINIMAL}\n[decider]\nconflict-attempts = 0\n"));
    assert!(err.contains("decider.conflict-attempts"), "{err}");
    let err = error_of(&format!(
        "{MINIMAL}\n[decider]\nconflict-backoff-initial-ms = 50\nconflict-backoff-max-ms = 10\n"
    ));
    assert!(err.contains("decider.conflict-backoff-max-ms"), "{err}");
}

#[test]
fn a_bare_admin_port_listens_on_loopback_only() {
    let admin = |listen: &str| Admin {
        listen: Some(listen.into()),
        token: None,
    };
    assert_eq!(admin("9464").address(), "127.0.0.1:9464".parse().ok());
    assert_eq!(admin(":9464").address(), "127.0.0.1:9464".parse().ok());
    assert_eq!(admin("0.0.0.0:80").address(), "0.0.0.0:80".parse().ok());
    assert_eq!(Admin::default().address(), None);
    let err = error_of(&format!("{MINIMAL}[admin]\nlisten = \"eth0\"\n"));
    assert!(
        err.contains("admin.listen") && err.contains("127.0.0.1"),
        "{err}"
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A route's lines: topic, handler, where it publishes, its
    /// in-flight cap.
    fn any_route() -> impl Strategy<Value = (String, String, Vec<String>, u64)> {
        (
            "[a-z][a-z0-9.-]{0,12}",
            "[a-z][a-z0-9-]{0,12}",
            proptest::collection::vec("[a-z][a-z0-9-]{0,8}(\\.\\*)?|\\*", 0..3),
            1..10_000u64,
        )
    }

    fn route_text(
        (topic, handler, publish_to, in_flight): &(String, String, Vec<String>, u64),
    ) -> String {
        let publish_to: Vec<String> = publish_to.iter().map(|p| format!("{p:?}")).collect();
        format!(
            "[[routes]]\ntopic = {topic:?}\nhandler = {handler:?}\npublish-to = [{}]\nmax-in-flight = {in_flight}\n",
            publish_to.join(", ")
        )
    }

    proptest! {
        /// Routes written out are read back as written.
        #[test]
        fn routes_read_back_as_written(
            routes in proptest::collection::vec(any_route(), 1..4),
        ) {
            // One route per topic.
            let routes: Vec<_> = routes
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| { r.0 = format!("{}{i}", r.0); r })
                .collect();
            let text: String = std::iter::once("brokers = \"embedded\"\n".to_owned())
                .chain(routes.iter().map(route_text))
                .collect();
            let config = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            prop_assert_eq!(config.routes.len(), routes.len());
            for (read, (topic, handler, publish_to, in_flight)) in config.routes.iter().zip(&routes) {
                prop_assert_eq!(&read.topic, topic);
                prop_assert_eq!(&read.handler, handler);
                prop_assert_eq!(read.publish_to(), publish_to.as_slice());
                prop_assert_eq!(read.max_in_flight as u64, *in_flight);
            }
        }

        /// A value of the wrong type anywhere in a route is an error
        /// that names the key.
        #[test]
        fn a_mistyped_value_is_an_error_naming_its_key(
            route in any_route(),
            which in 0..4usize,
            wrong in prop_oneof![Just("true"), Just("1.5"), Just("{}"), Just("\"text\""), Just("[1]")],
        ) {
            let key = ["topic", "handler", "publish-to", "max-in-flight"][which];
            let text = route_text(&route);
            let text: String = text
                .lines()
                .map(|line| match line.starts_with(&format!("{key} =")) {
                    true => format!("{key} = {wrong}\n"),
                    false => format!("{line}\n"),
                })
                .collect();
            // A right type may be the value picked: only wrong ones count.
            let right = match key {
                "topic" | "handler" => wrong.starts_with('"'),
                "publish-to" => false,
                _ => false,
            };
            let result = parse(&format!("brokers = \"embedded\"\n{text}"));
            if !right {
                let error = result.expect_err("a mistyped value is refused").to_string();
                prop_assert!(error.contains(key), "{} does not name {}", error, key);
            }
        }

        /// Any text is a config or an error, never a panic.
        #[test]
        fn any_text_is_a_config_or_an_error(
            text in prop_oneof![
                ".{0,80}",
                "(brokers = \"[a-z]{0,5}\"\n)?(\\[\\[routes\\]\\]\n)?([a-z-]{1,12} = [^\n]{0,10}\n){0,4}",
            ],
        ) {
            let _ = parse(&text);
        }
    }
}

fn layered(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = file.map(|text| {
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::layered(path.as_deref(), &environment::settings(vars)?)
}

#[test]
fn the_environment_is_layered_over_the_file_with_each_value_typed_by_its_key() {
    let config = layered(
        Some(&format!(
            "group-id = \"from-file\"\nmax-in-flight = 7\n{MINIMAL}"
        )),
        &[
            ("SLUICE_BROKERS", "kafka-0:9092,kafka-1:9092"),
            ("SLUICE_GROUP_ID", "123"),
            ("SLUICE_ADMIN_LISTEN", "9464"),
            ("SLUICE_MAX_IN_FLIGHT", "500"),
            ("SLUICE_COMMIT_INTERVAL_MS", "250"),
            ("SLUICE_WATCH_HANDLERS", "false"),
            ("SLUICE_KAFKA_CONSUMER_SECURITY_PROTOCOL", "SASL_SSL"),
            ("SLUICE_KAFKA_PRODUCER_LINGER_MS", "5"),
        ],
    )
    .unwrap();
    assert_eq!(config.brokers, "kafka-0:9092,kafka-1:9092");
    assert_eq!(config.group_id, "123");
    assert_eq!(config.admin.listen.as_deref(), Some("9464"));
    assert_eq!(config.max_in_flight, 500);
    assert_eq!(config.commit_interval, Duration::from_millis(250));
    assert!(!config.watch_handlers);
    assert_eq!(config.kafka.consumer["security.protocol"], "SASL_SSL");
    assert_eq!(config.kafka.producer["linger.ms"], "5");
    // What the environment does not set stays the file's.
    assert_eq!(config.routes[0].topic, "in");
}

#[test]
fn the_environment_alone_is_enough_with_the_routes_as_toml() {
    let config = layered(
        None,
        &[
            ("SLUICE_BROKERS", "embedded"),
            (
                "SLUICE_ROUTES",
                r#"[{ topic = "in", handler = "echo", publish-to = ["*"] }]"#,
            ),
        ],
    )
    .unwrap();
    assert!(config.is_embedded());
    assert_eq!(config.routes[0].handler, "echo");
    let error = layered(None, &[("SLUICE_BROKERS", "embedded")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("routes"), "{error}");
}

#[test]
fn a_bad_value_from_the_environment_names_its_variable_and_a_stranger_is_ignored() {
    let error = layered(Some(MINIMAL), &[("SLUICE_WATCH_HANDLERS", "maybe")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("watch-handlers"), "{error}");
    assert!(error.contains("(from SLUICE_WATCH_HANDLERS)"), "{error}");
    let error = layered(Some(MINIMAL), &[("SLUICE_GROUP_ID", " ")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("group-id: must not be empty"), "{error}");
    assert!(
        error.contains("with SLUICE_* from the environment"),
        "{error}"
    );
    // Kubernetes' service links, and a misspelt section key.
    let config = layered(
        Some(MINIMAL),
        &[
            ("SLUICE_PORT", "tcp://10.0.0.1:9464"),
            ("SLUICE_ADMIN_LISTN", "9464"),
            ("SLUICE_SERVICE_HOST", "10.0.0.1"),
        ],
    )
    .unwrap();
    assert_eq!(config.admin.listen, None);
}
