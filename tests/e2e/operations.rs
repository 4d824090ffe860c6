//! What operators use: health and readiness of a running host.

use std::time::Duration;

use sluice::embedded::EmbeddedBroker;

use crate::http_target::{Behaviour, HttpTarget};
use crate::support::*;
use crate::transactional_broker::TransactionalBroker;

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
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-faults\"\npublish-to = [\"*\"]\n\
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
    // The charts mark when the breaker opened (the target stays down, so
    // it stays open or half-open until a sample sees it).
    let breaker = format!("host {}", target.host());
    let mut at = 0;
    wait_until("a sample to mark the breaker opening", || {
        let (_, body) = status_of(&admin, "/api/history");
        let history: serde_json::Value = serde_json::from_str(&body).unwrap();
        at = history["markers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["kind"] == "breaker-opened" && m["target"] == breaker.as_str())
            .map_or(0, |m| m["at"].as_u64().unwrap());
        at > 0
    });

    target.come_up();
    wait_until("readiness to come back", || {
        status_of(&admin, "/readyz").0 == 200
    });
    let (_, page) = status_of(&admin, "/");
    assert!(
        page.contains(&format!("data-kind=\"breaker-opened\" data-at=\"{at}\"")),
        "{page}"
    );
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
    let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"test-faults\"\npublish-to = [\"*\"]\n\n[admin]\nlisten = \"0\"\n";
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
            "sluice_stage_seconds_bucket{le=\"+Inf\",stage=\"end-to-end\"}",
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
    // OpenMetrics text: every family typed once, and the end marked.
    assert!(page.ends_with("# EOF\n"), "{page}");
    assert_eq!(page.matches("# TYPE sluice_messages counter").count(), 1);
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

/// `sluice replay` on a topic: the (partition, offset) of each line, and
/// the lines, and what it said on stderr.
fn replay_topic(brokers: &str, args: &[&str]) -> (Vec<(i64, i64)>, Vec<serde_json::Value>, String) {
    let output = sluice()
        .args(["replay", "--handler"])
        .arg(component("test-echo"))
        .args(["--brokers", brokers, "--topic", "in"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut places: Vec<(i64, i64)> = lines
        .iter()
        .map(|l| {
            (
                l["partition"].as_i64().unwrap(),
                l["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    places.sort();
    (places, lines, stderr)
}

#[test]
fn replay_reads_a_topic_range_by_offset_or_time_and_compares_two_versions() {
    // 2026-01-01T00:00:00Z.
    const BASE: u64 = 1_767_225_600_000;
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 2).unwrap();
    let at = |partition: i32, i: u64, payload: &str, timestamp: u64| {
        let mut m = message("in", partition, "k", payload);
        m.timestamp = timestamp;
        let _ = i;
        m
    };
    let mut messages: Vec<_> = (0..5)
        .map(|i| {
            let payload = if i == 3 {
                "changed:x".to_owned()
            } else {
                format!("p0-{i}")
            };
            at(0, i, &payload, BASE + i * 1000)
        })
        .collect();
    messages.extend((0..3).map(|j| at(1, j, &format!("p1-{j}"), BASE + j * 1000 + 500)));
    broker.produce(&messages).unwrap();

    let (places, lines, _) = replay_topic(brokers, &["--from", "2", "--to", "4"]);
    assert_eq!(places, [(0, 2), (0, 3), (1, 2)]);
    assert!(lines.iter().all(|l| l["outputs"].is_array()), "{lines:?}");

    let (places, _, _) = replay_topic(brokers, &["--from", "2026-01-01T00:00:03Z"]);
    assert_eq!(
        places,
        [(0, 3), (0, 4)],
        "from the first message at or after the time"
    );
    let (places, _, _) = replay_topic(brokers, &["--to", "2026-01-01T00:00:01Z"]);
    assert_eq!(
        places,
        [(0, 0), (1, 0)],
        "up to the first message at or after the time"
    );

    let next = component("test-echo-next");
    let next = next.to_str().unwrap();
    let (places, lines, said) = replay_topic(brokers, &["--against", next]);
    assert_eq!(places.len(), 8, "the whole topic by default");
    let differing: Vec<_> = lines
        .iter()
        .filter(|l| l["differs"] == true)
        .map(|l| {
            (
                l["partition"].as_i64().unwrap(),
                l["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        differing,
        [(0, 3)],
        "only changed:x is upper-cased by the next version"
    );
    let changed = lines
        .iter()
        .find(|l| l["offset"] == 3 && l["partition"] == 0)
        .unwrap();
    assert_eq!(changed["outputs"][0]["publish"]["payload"], "changed:x");
    assert_eq!(
        changed["against"]["outputs"][0]["publish"]["payload"],
        "CHANGED:X"
    );
    assert!(said.contains("differs on 1"), "{said}");

    // A topic that does not exist is one line and a failure.
    let output = sluice()
        .args(["replay", "--handler"])
        .arg(component("test-echo"))
        .args(["--brokers", brokers, "--topic", "nope"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("reading nope"), "{said}");
}

/// The text Chromium laid out, tag by tag, joined by `|`.
fn rendered_text(dom: &str) -> String {
    dom.split('<')
        .filter_map(|part| part.split_once('>').map(|(_, text)| text.trim()))
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("|")
}

/// Renders a page in headless Chromium: its DOM after load, and a
/// screenshot saved as a test artifact.
fn render_in_chromium(url: &str, screenshot: &std::path::Path) -> String {
    let chromium = |extra: &[&str]| {
        std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1280,1800",
            ])
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium (scripts/setup installs it)")
    };
    let dom = chromium(&["--dump-dom"]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = format!("--screenshot={}", screenshot.display());
    let taken = chromium(&[&shot]);
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    String::from_utf8(dom.stdout).unwrap()
}

#[test]
fn the_status_page_shows_the_shop_as_it_runs_in_chromium() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    crate::shop::seed(&broker);
    let scratch = Scratch::new();
    let routes = format!("{}\n[admin]\nlisten = \"0\"\n", crate::shop::ROUTES);
    let config = scratch.write("shop.toml", config(brokers, "shop", &dist(), &routes));
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    wait_until("the shop's dead letters and its pending timers", || {
        status_of(&admin, "/metrics")
            .1
            .contains("sluice_dead_letters_total 10")
            && status_of(&admin, "/").1.contains("o-3005")
    });
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let dom = render_in_chromium(&format!("http://{admin}/"), &screenshot);
    host.signal(libc::SIGTERM);
    host.wait_ok();

    // Rendered, not just served: the text Chromium laid out, tag by tag.
    let text = rendered_text(&dom);
    for expected in [
        "ready",
        "order-shipped|order-shipped-email",
        "sku-commands|sku-coupon",
        "cancel-order|0.2.0|active",
        "cancel-order|0.1.0|standby",
        "order-shipped-email|0.1.0|active|4|3|0",
        "order-shipped/1/0|handle|rejected|order o-1003: customer has no email",
        "end-to-end",
        "invalid-input",
        "none",
        "0 messages compared, 0 differed",
        // o-3005's overdue alert is due in 48 hours.
        "orders|o-3005|",
    ] {
        assert!(
            text.contains(expected),
            "the page lacks {expected:?}:\n{text}"
        );
    }
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

/// The points of `series`' lines in the chart `id` of a rendered page.
fn chart_points(dom: &str, id: &str, series: &str) -> usize {
    let start = dom.find(&format!("<figure id=\"{id}\"")).expect(id);
    let figure = &dom[start..start + dom[start..].find("</figure>").unwrap()];
    figure
        .split("<polyline ")
        .skip(1)
        .filter(|line| line.contains(&format!("data-series=\"{series}\"")))
        .map(|line| {
            let points = &line[line.find("points=\"").unwrap() + 8..];
            points[..points.find('"').unwrap()].split(' ').count()
        })
        .sum()
}

/// The number in `data-samples` of the chart `id`.
fn chart_samples(dom: &str, id: &str) -> usize {
    let start = dom
        .find(&format!("<figure id=\"{id}\" data-samples=\""))
        .expect(id);
    let rest = &dom[start..];
    let rest = &rest[rest.find("data-samples=\"").unwrap() + 14..];
    rest[..rest.find('"').unwrap()].parse().unwrap()
}

#[test]
fn the_status_page_charts_a_swap_a_dead_letter_burst_and_a_paused_routes_lag_in_chromium() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker.create_topic("held", 1).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("faults", "1.0.0", &component("test-faults"))]);
    let routes = format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"faults\"\npublish-to = [\"echo\"]\n\
         [[routes]]\ntopic = \"held\"\nhandler = \"faults\"\npublish-to = [\"echo\"]\n\n\
         [admin]\nlisten = \"0\"\ntoken = \"{TOKEN}\"\n"
    );
    let config = scratch.write("charts.toml", config(brokers, "charts", &handlers, &routes));
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    let history = || -> serde_json::Value {
        let (status, body) = status_of(&admin, "/api/history");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let last_lag = |route: usize| {
        history()["samples"]
            .as_array()
            .unwrap()
            .last()
            .map(|s| s["routes"][route]["lag"].clone())
    };

    let ok: Vec<_> = (0..20)
        .map(|n| message("in", 0, "k", &format!("ok-{n}")))
        .collect();
    broker.produce(&ok).unwrap();
    wait_until("the first messages", || count(brokers, "echo") == 20);
    // A burst of dead letters.
    let invalid: Vec<_> = (0..10).map(|_| message("in", 0, "k", "invalid")).collect();
    broker.produce(&invalid).unwrap();
    wait_until("the dead letters", || count(brokers, "in.dlq") == 10);

    let (status, _) = http_post(&admin, "/routes/held/pause", Some(TOKEN));
    assert_eq!(status, 200);
    wait_until("a sample of the paused route before its backlog", || {
        last_lag(1) == Some(serde_json::json!(0))
    });
    let backlog: Vec<_> = (0..30)
        .map(|n| message("held", 0, "k", &format!("held-{n}")))
        .collect();
    broker.produce(&backlog).unwrap();
    wait_until("the paused route's lag in a sample", || {
        last_lag(1) == Some(serde_json::json!(30))
    });

    // A new version swaps in.
    let copied_at = now_ms();
    std::fs::copy(component("test-faults"), handlers.join("faults/1.1.0.wasm")).unwrap();
    wait_until("a swap marker", || {
        history()["markers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "swap" && m["version"] == "1.1.0")
    });

    let (status, _) = http_post(&admin, "/routes/held/resume", Some(TOKEN));
    assert_eq!(status, 200);
    wait_until(
        "the backlog handled and the lag drained in a sample",
        || count(brokers, "echo") == 50 && last_lag(1) == Some(serde_json::json!(0)),
    );

    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-charts.png");
    let _ = std::fs::remove_file(&screenshot);
    let dom = render_in_chromium(&format!("http://{admin}/"), &screenshot);
    let snapshot = history();
    let handler_shot = artifacts.join("status-handler.png");
    let _ = std::fs::remove_file(&handler_shot);
    let handler_dom = render_in_chromium(&format!("http://{admin}/handlers/faults"), &handler_shot);
    let (status, body) = status_of(&admin, "/api/handlers/faults");
    assert_eq!(status, 200, "{body}");
    let handler: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, body) = status_of(&admin, "/api/overview");
    assert_eq!(status, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, _) = status_of(&admin, "/api/handlers/nobody");
    assert_eq!(status, 404);
    host.signal(libc::SIGTERM);
    host.wait_ok();

    // The overview links to the handler's page, which shows its versions,
    // when each went active, its dead letters and what it may publish to.
    assert!(
        dom.contains("<a href=\"/handlers/faults\">faults</a>"),
        "{dom}"
    );
    let text = rendered_text(&handler_dom);
    for expected in [
        "in|echo|in.dlq|running",
        "held|echo|held.dlq|running",
        "1.0.0|standby|20|10|0",
        "1.1.0|active|30|0|0",
        "in/0/20|decode|invalid-input|invalid requested",
        "deadline per call|1000 ms",
    ] {
        assert!(
            text.contains(expected),
            "the handler page lacks {expected:?}:\n{text}"
        );
    }
    let swaps: Vec<(&str, u64)> = handler["swaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["version"].as_str().unwrap(), s["at"].as_u64().unwrap()))
        .collect();
    assert_eq!(swaps.len(), 2, "{handler}");
    assert_eq!(swaps[0].0, "1.0.0");
    assert_eq!(
        handler["dead_letters"].as_array().unwrap().len(),
        10,
        "{handler}"
    );

    // Every sample is a point of each route's throughput line.
    let samples = chart_samples(&dom, "chart-handled");
    assert!(samples >= 3, "{samples} samples");
    assert_eq!(chart_points(&dom, "chart-handled", "in"), samples);
    assert_eq!(chart_points(&dom, "chart-dead-letters", "in"), samples);
    assert_eq!(chart_samples(&dom, "chart-lag"), samples);

    // The burst is in the samples: 10 dead letters, every one counted once.
    let samples = snapshot["samples"].as_array().unwrap();
    // Counted per route, though both routes run one handler: the burst and
    // the backlog each where they happened.
    let total = |route: usize, field: &str| -> u64 {
        samples
            .iter()
            .map(|s| s["routes"][route][field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(total(0, "dead_lettered"), 10, "{snapshot}");
    assert_eq!(total(1, "dead_lettered"), 0, "{snapshot}");
    assert_eq!(total(1, "handled"), 30, "{snapshot}");
    // The paused route's lag rose to its backlog, then fell to nothing.
    let lags: Vec<i64> = samples
        .iter()
        .filter_map(|s| s["routes"][1]["lag"].as_i64())
        .collect();
    let peak = lags
        .iter()
        .position(|lag| *lag == 30)
        .expect("a sample at 30");
    assert!(lags[..peak].contains(&0), "{lags:?}");
    assert_eq!(lags.last(), Some(&0), "{lags:?}");
    // The swap is marked at the sample that first saw it, on the page too.
    let swap = snapshot["markers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "swap" && m["version"] == "1.1.0")
        .unwrap();
    let at = swap["at"].as_u64().unwrap();
    assert!(
        at >= copied_at,
        "marked at {at}, before the copy at {copied_at}"
    );
    assert!(samples.iter().any(|s| s["at"] == at), "no sample at {at}");
    assert!(
        dom.contains(&format!("data-kind=\"swap\" data-at=\"{at}\"")),
        "no swap marker at {at} on the page"
    );
    assert_eq!(swaps[1], ("1.1.0", at), "the page's swap is the chart's");

    // The handler's page charts each version's messages per second: the
    // old version's line carries the first messages and the burst, the new
    // one's the backlog, and both mark the swap.
    let handler_samples = chart_samples(&handler_dom, "chart-version-handled");
    assert!(handler_samples >= samples.len(), "{handler_samples}");
    for version in ["1.0.0", "1.1.0"] {
        assert_eq!(
            chart_points(&handler_dom, "chart-version-handled", version),
            handler_samples,
            "{version}"
        );
    }
    assert!(
        handler_dom.contains(&format!("data-kind=\"swap\" data-at=\"{at}\"")),
        "no swap marker at {at} on the handler's page"
    );
    let ended = |version: &str, field: &str| -> u64 {
        handler["throughput"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|line| line["version"] == version)
            .unwrap_or_else(|| panic!("no line of {version}: {handler}"))[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert_eq!(ended("1.0.0", "handled"), 20, "{handler}");
    assert_eq!(ended("1.0.0", "dead_lettered"), 10, "{handler}");
    assert_eq!(ended("1.1.0", "handled"), 30, "{handler}");
    assert_eq!(ended("1.1.0", "dead_lettered"), 0, "{handler}");

    // The overview's JSON holds what its tables show.
    let version = |v: &str| {
        overview["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["handler"] == "faults" && row["version"] == v)
            .cloned()
            .unwrap()
    };
    assert_eq!(version("1.0.0")["state"], "standby", "{overview}");
    assert_eq!(version("1.0.0")["dead_lettered"], 10, "{overview}");
    assert_eq!(version("1.1.0")["state"], "active", "{overview}");
    assert_eq!(version("1.1.0")["handled"], 30, "{overview}");
    assert_eq!(overview["routes"][1]["topic"], "held");
    assert_eq!(overview["routes"][1]["paused"], false);
    assert_eq!(overview["dead_letters"].as_array().unwrap().len(), 10);
    assert_eq!(overview["unready"], serde_json::json!([]));
    assert!(
        rendered_text(&dom).contains("faults|1.1.0|active|30|0|0"),
        "the page's versions table is not the overview's"
    );
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

const TOKEN: &str = "test-token-0123456789";

#[test]
fn state_changing_calls_need_the_token_and_a_paused_route_fetches_nothing_until_resumed() {
    let broker = EmbeddedBroker::start().unwrap();
    let brokers = broker.bootstrap_servers();
    broker.create_topic("in", 1).unwrap();
    broker.create_topic("side", 1).unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-echo", "0.1.0", &component("test-echo"))]);
    let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"test-echo\"\npublish-to = [\"*\"]\n\
                  [[routes]]\ntopic = \"side\"\nhandler = \"test-echo\"\npublish-to = [\"*\"]\n\n[admin]\nlisten = \"0\"\n";

    // Without a configured token, nothing that changes state is allowed.
    let open = scratch.write("open.toml", config(brokers, "open", &handlers, routes));
    let host = Host::start(&scratch, "open", &open, &[]);
    let admin = admin_address(&scratch, "open");
    let (status, body) = http_post(&admin, "/routes/in/pause", Some(TOKEN));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("[admin] token"), "{body}");
    host.signal(libc::SIGTERM);
    host.wait_ok();

    let routes = format!("{routes}token = \"{TOKEN}\"\n");
    let guarded = scratch.write(
        "guarded.toml",
        config(brokers, "guarded", &handlers, &routes),
    );
    let host = Host::start(&scratch, "guarded", &guarded, &[]);
    let admin = admin_address(&scratch, "guarded");
    for token in [None, Some("test-token-0123456780"), Some("short")] {
        let (status, body) = http_post(&admin, "/routes/in/pause", token);
        assert_eq!(status, 401, "token {token:?}: {body}");
    }
    let (status, body) = http_post(&admin, "/routes/nowhere/pause", Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    let (status, body) = http_post(&admin, "/routes/in/pause", Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, "paused in\n"));
    let (_, metrics) = status_of(&admin, "/metrics");
    assert_eq!(
        metric(&metrics, "sluice_route_paused{topic=\"in\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "sluice_route_paused{topic=\"side\"}"),
        Some(0.0)
    );

    // The paused route's messages wait; the other route's flow meanwhile.
    let held: Vec<_> = (0..5)
        .map(|n| message("in", 0, "k", &format!("held-{n}")))
        .collect();
    broker.produce(&held).unwrap();
    broker
        .produce(&[message("side", 0, "k", "side-0")])
        .unwrap();
    let echoed = || -> Vec<String> {
        read_topic(brokers, "echo")
            .into_iter()
            .map(|r| r.payload)
            .collect()
    };
    wait_until("the unpaused route to handle its message", || {
        echoed().contains(&"side-0".to_owned())
    });
    let (_, page) = status_of(&admin, "/");
    assert!(page.contains(">paused<"), "{page}");
    // Another full round of the unpaused route: the paused one still waits.
    broker
        .produce(&[message("side", 0, "k", "side-1")])
        .unwrap();
    wait_until("the second side message", || {
        echoed().contains(&"side-1".to_owned())
    });
    assert_eq!(echoed(), ["side-0", "side-1"], "the paused route fetched");

    let (status, body) = http_post(&admin, "/routes/in/resume", Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, "resumed in\n"));
    wait_until("the resumed route to catch up", || echoed().len() == 7);
    let in_order: Vec<String> = echoed()
        .into_iter()
        .filter(|p| p.starts_with("held-"))
        .collect();
    assert_eq!(
        in_order,
        (0..5).map(|n| format!("held-{n}")).collect::<Vec<_>>()
    );
    host.signal(libc::SIGTERM);
    host.wait_ok();
    assert_committed_to_the_end(brokers, "guarded");
}

#[test]
fn lag_counts_a_paused_routes_backlog_exactly_and_drains_after_resume() {
    let broker = EmbeddedBroker::start().unwrap();
    broker.create_topic("in", 2).unwrap();
    paused_backlog_is_counted_exactly(broker.bootstrap_servers(), |text| text);
}

#[test]
fn lag_on_noida_db_counts_a_paused_routes_backlog_exactly_too() {
    let broker = TransactionalBroker::start();
    broker.create_topic("in", 2);
    broker.create_topic("echo", 1);
    // Like Kafka, noida refuses session timeouts under 6 s.
    paused_backlog_is_counted_exactly(broker.bootstrap_servers(), |text| {
        text.replace(
            "\"session.timeout.ms\" = \"3000\"",
            "\"session.timeout.ms\" = \"6000\"",
        )
    });
}

/// A route paused on `brokers` (topic `in`, 2 partitions, made by the
/// caller): the backlog produced meanwhile is its lag, exactly, in
/// `/metrics` and on the status page; after resume, the lag drains to 0.
fn paused_backlog_is_counted_exactly(brokers: &str, settings: impl Fn(String) -> String) {
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-echo", "0.1.0", &component("test-echo"))]);
    let routes = format!(
        "[[routes]]\ntopic = \"in\"\nhandler = \"test-echo\"\npublish-to = [\"*\"]\n\n[admin]\nlisten = \"0\"\ntoken = \"{TOKEN}\"\n"
    );
    let config = scratch.write(
        "lag.toml",
        settings(config(brokers, "lag", &handlers, &routes)),
    );
    let host = Host::start(&scratch, "host", &config, &[]);
    let admin = admin_address(&scratch, "host");
    let lags = || {
        let metrics = status_of(&admin, "/metrics").1;
        [0, 1].map(|p| {
            metric(
                &metrics,
                &format!("sluice_consumer_lag{{topic=\"in\",partition=\"{p}\"}}"),
            )
        })
    };
    wait_until("both partitions assigned, with nothing behind", || {
        lags() == [Some(0.0), Some(0.0)]
    });
    let (status, body) = http_post(&admin, "/routes/in/pause", Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, "paused in\n"));

    // Nothing is fetched while paused, and nothing was ever committed: the
    // backlog is counted from the broker's end offsets and the partitions'
    // beginnings.
    let backlog: Vec<_> = (0..3)
        .map(|n| message("in", 0, "k", &format!("a-{n}")))
        .chain((0..5).map(|n| message("in", 1, "k", &format!("b-{n}"))))
        .collect();
    sluice::embedded::produce(brokers, &backlog).unwrap();
    wait_until("the paused backlog in /metrics", || {
        lags() == [Some(3.0), Some(5.0)]
    });
    let page = status_of(&admin, "/").1;
    for row in ["in[0]</td><td>3<", "in[1]</td><td>5<"] {
        assert!(page.contains(row), "{row} not on the status page:\n{page}");
    }

    let (status, body) = http_post(&admin, "/routes/in/resume", Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, "resumed in\n"));
    wait_until("the backlog to drain and be committed", || {
        lags() == [Some(0.0), Some(0.0)]
    });
    assert_eq!(
        committed(brokers, "lag", "in"),
        vec![(0, Some(3)), (1, Some(5))]
    );
    assert_eq!(read_topic(brokers, "echo").len(), 8);
    host.signal(libc::SIGTERM);
    host.wait_ok();
}

#[test]
fn an_unreachable_broker_is_logged_once_per_kind_with_its_reason_not_on_every_retry() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let scratch = Scratch::new();
    let handlers = scratch.handlers(&[("test-echo", "0.1.0", &component("test-echo"))]);
    let routes = "[[routes]]\ntopic = \"in\"\nhandler = \"test-echo\"\npublish-to = [\"*\"]\n";
    let config = scratch.write(
        "down.toml",
        config(&closed.to_string(), "down", &handlers, routes),
    );
    let host = Host::start(&scratch, "host", &config, &[]);
    wait_until("the consumer to report the refused connection", || {
        log_of(&scratch, "host")
            .lines()
            .any(|l| l.contains("client=\"consumer\"") && l.contains("Connection refused"))
    });
    // The measure: what three more seconds of retrying (about 60 attempts
    // by each client, ~140 lines before) add to the log.
    std::thread::sleep(Duration::from_secs(3));
    host.signal(libc::SIGTERM);
    let exit = host.wait_ok();
    let errors = exit
        .stderr
        .lines()
        .filter(|l| l.contains("kafka client error"))
        .count();
    // Two kinds (transport failure, all brokers down), by two clients.
    assert!(errors <= 4, "{errors} client errors:\n{}", exit.stderr);
    assert!(
        exit.stderr.lines().count() < 25,
        "{} lines:\n{}",
        exit.stderr.lines().count(),
        exit.stderr
    );
    assert!(!exit.stderr.contains("ERROR"), "{}", exit.stderr);
}
