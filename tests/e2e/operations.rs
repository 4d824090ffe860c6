//! What operators use: health and readiness of a running host.

use std::time::Duration;

use sluice::embedded::EmbeddedBroker;

use crate::http_target::{Behaviour, HttpTarget};
use crate::support::*;

/// The status line and body of an admin GET.
fn status_of(admin: &str, path: &str) -> (u16, String) {
    let response = http_get(admin, path);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[test]
fn readiness_is_lost_while_a_breaker_is_open_and_comes_back_with_the_target() {
    let target = HttpTarget::start(Behaviour::Ok {
        max_delay: Duration::ZERO,
    });
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let routes = format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-faults\"\n\
         [routes.retry]\ninitial-ms = 5\nmax-interval-ms = 50\n\
         [routes.breaker]\nfailures = 3\nopen-ms = 200\n\
         [routes.http]\nallow = [\"{}\"]\n\n[admin]\nlisten = \"0\"\n",
        target.host()
    );
    let config = scratch.write("r.toml", config(brokers, "r", &handlers, &routes));
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    assert!(
        admin.starts_with("127.0.0.1:"),
        "a bare port binds loopback: {admin}"
    );
    assert_eq!(status_of(&admin, "/healthz"), (200, "ok\n".to_owned()));
    wait_until("the host to be ready", || {
        status_of(&admin, "/readyz").0 == 200
    });

    target.go_down();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            message(
                "in",
                0,
                "k",
                &format!("http:{}", target.url(&format!("/{i}"))),
            )
        })
        .collect();
    broker.produce(&calls).unwrap();
    wait_until("readiness to be lost", || {
        status_of(&admin, "/readyz").0 == 503
    });
    let (_, body) = status_of(&admin, "/readyz");
    assert!(
        body.contains(&format!("circuit breaker open: host {}", target.host())),
        "{body}"
    );
    assert_eq!(status_of(&admin, "/healthz").0, 200, "alive all the same");

    target.come_up();
    wait_until("readiness to come back", || {
        status_of(&admin, "/readyz").0 == 200
    });
    wait_until("every call to get through", || {
        target.succeeded().len() >= 20
    });
    host.signal(libc::SIGTERM);
    host.wait_ok();
}

/// The value of one series in a Prometheus text page.
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_a_known_run_exactly() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    let payloads = ["a", "b", "reject", "c", "invalid", "d", "reject", "e", "f"];
    let messages: Vec<_> = payloads.iter().map(|p| message("in", 0, "k", p)).collect();
    broker.produce(&messages).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-faults", "0.1.0", &component("test-faults"))]);
    let routes =
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-faults\"\n\n[admin]\nlisten = \"0\"\n";
    let config = scratch.write("m.toml", config(brokers, "m", &handlers, routes));
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    let page = || status_of(&admin, "/metrics").1;
    wait_until("every message to be committed", || {
        committed(brokers, "m", "in") == vec![(0, Some(9))]
    });
    wait_until("nothing in flight and no lag", || {
        let page = page();
        metric(&page, "sluice_in_flight") == Some(0.0)
            && metric(&page, "sluice_consumer_lag{topic=\"in\",partition=\"0\"}") == Some(0.0)
    });
    let page = page();
    let expect = [
        ("sluice_consumed_total", 9.0),
        ("sluice_published_total", 6.0),
        ("sluice_dead_letters_total", 3.0),
        (
            "sluice_messages_total{handler=\"test-faults\",version=\"0.1.0\",outcome=\"handled\"}",
            6.0,
        ),
        (
            "sluice_messages_total{handler=\"test-faults\",version=\"0.1.0\",outcome=\"dead-lettered\"}",
            3.0,
        ),
        (
            "sluice_dead_letters_by_reason_total{stage=\"handle\",reason=\"rejected\"}",
            2.0,
        ),
        (
            "sluice_dead_letters_by_reason_total{stage=\"decode\",reason=\"invalid-input\"}",
            1.0,
        ),
        ("sluice_stage_seconds_count{stage=\"handle\"}", 9.0),
        ("sluice_stage_seconds_count{stage=\"interpret\"}", 9.0),
        ("sluice_stage_seconds_count{stage=\"end-to-end\"}", 9.0),
        (
            "sluice_stage_seconds_bucket{stage=\"end-to-end\",le=\"+Inf\"}",
            9.0,
        ),
        ("sluice_stage_seconds_count{stage=\"decide\"}", 0.0),
        ("sluice_breaker_state{target=\"topic echo\"}", 0.0),
        ("sluice_retries_total{target=\"topic echo\"}", 0.0),
        ("sluice_handler_swaps_total", 0.0),
    ];
    for (series, value) in expect {
        assert_eq!(metric(&page, series), Some(value), "{series} in:\n{page}");
    }
    // The worker that served keeps its instance, and the instance its memory.
    let version = "{handler=\"test-faults\",version=\"0.1.0\"}";
    let instances = metric(&page, &format!("sluice_instances{version}")).unwrap();
    assert!((1.0..=4.0).contains(&instances), "{instances} instances");
    let memory = metric(&page, &format!("sluice_guest_memory_bytes{version}")).unwrap();
    assert!(
        memory >= instances * 65536.0,
        "{memory} bytes of guest memory"
    );
    host.signal(libc::SIGTERM);
    host.wait_ok();
}
