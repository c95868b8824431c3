use super::*;

const BASE: &str = r#"
    [[listener]]
    listen = "127.0.0.1:8080"
    upstream = "web"

    [[upstream]]
    name = "web"
    [[upstream.server]]
    addr = "127.0.0.1:9001"
    [[upstream.server]]
    addr = "127.0.0.1:9002"
    weight = 3
    max_fails = 2
    fail_timeout = "30s"
"#;

fn err(text: &str) -> String {
    match Config::parse(text) {
        Ok(_) => panic!("config should have been rejected"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parses_minimal_config_with_nginx_defaults() {
    let c = Config::parse(BASE).unwrap();
    let up = c.upstream_named("web").unwrap();
    assert_eq!(up.algorithm, Algorithm::RoundRobin);
    assert_eq!(up.servers[0].weight, 1);
    assert_eq!(up.servers[0].max_fails, 1);
    assert_eq!(up.servers[0].fail_timeout, Duration::from_secs(10));
    assert_eq!(up.servers[1].weight, 3);
    assert_eq!(up.servers[1].max_fails, 2);
    assert_eq!(up.servers[1].fail_timeout, Duration::from_secs(30));
    assert_eq!(c.listeners[0].mode, Mode::Http);
    assert_eq!(c.listeners[0].name, "listener0");
}

#[test]
fn client_timeouts_parse_with_nginx_defaults() {
    let c = Config::parse(BASE).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.client_body_timeout, Duration::from_secs(60));
    assert_eq!(l.send_timeout, Duration::from_secs(60));
    assert_eq!(l.idle_timeout, Duration::from_secs(75));
    let text = BASE.replace(
        "upstream = \"web\"\n",
        "upstream = \"web\"\nclient_body_timeout = \"1500ms\"\nsend_timeout = 3\n",
    );
    let c = Config::parse(&text).unwrap();
    assert_eq!(
        c.listeners[0].client_body_timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(c.listeners[0].send_timeout, Duration::from_secs(3));
    let zero = BASE.replace(
        "upstream = \"web\"\n",
        "upstream = \"web\"\nsend_timeout = \"0s\"\n",
    );
    assert!(err(&zero).starts_with("listener \"listener0\".send_timeout: "));
    let tcp = BASE.replace(
        "upstream = \"web\"\n",
        "upstream = \"web\"\nmode = \"tcp\"\nclient_body_timeout = \"5s\"\n",
    );
    let e = err(&tcp);
    assert!(
        e.starts_with("listener \"listener0\".client_body_timeout: "),
        "{e}"
    );
}

#[test]
fn zero_weight_error_names_key_and_fix() {
    let text = BASE.replace("weight = 3", "weight = 0");
    assert_eq!(
        err(&text),
        "upstream \"web\".server[1].weight: 0 is invalid; use a positive integer up to 1000 (nginx default 1)"
    );
}

#[test]
fn unknown_upstream_reference_is_rejected() {
    let text = BASE.replace("upstream = \"web\"", "upstream = \"api\"");
    let e = err(&text);
    assert!(
        e.starts_with("listener \"listener0\".upstream: \"api\" is not defined"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_key() {
    let text = BASE.replace("\"30s\"", "\"thirty\"");
    let e = err(&text);
    assert!(
        e.starts_with("upstream \"web\".server[1].fail_timeout: \"thirty\" is not a duration"),
        "{e}"
    );
}

#[test]
fn unknown_key_is_rejected() {
    let text = BASE.replace("max_fails = 2", "max_fail = 2");
    let e = err(&text);
    assert!(e.contains("unknown field `max_fail`"), "{e}");
}

#[test]
fn backup_with_ip_hash_is_rejected_like_nginx() {
    let text = BASE
        .replace("name = \"web\"", "name = \"web\"\nalgorithm = \"ip_hash\"")
        .replace("weight = 3", "weight = 3\nbackup = true");
    let e = err(&text);
    assert!(e.starts_with("upstream \"web\".server[1].backup:"), "{e}");
}

#[test]
fn health_check_status_ranges() {
    let text = format!(
        "{BASE}\n[upstream.health_check]\ntype = \"http\"\npath = \"/ping\"\nexpect_status = [200, \"300-302\"]\nrise = 3\n"
    );
    let c = Config::parse(&text).unwrap();
    let hc = c.upstreams[0].health_check.as_ref().unwrap();
    assert_eq!(hc.rise, 3);
    assert_eq!(hc.fall, 3);
    assert!(hc.kind.status_ok(200));
    assert!(hc.kind.status_ok(301));
    assert!(!hc.kind.status_ok(204));
    let bad = text.replace("\"300-302\"", "\"302-300\"");
    assert!(err(&bad).starts_with("upstream \"web\".health_check.expect_status[1]:"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration("5 parsecs"), None);
}

#[test]
fn vrrp_tables_are_validated_by_the_vrrp_rules() {
    let ok = format!(
        "{BASE}\n[[vrrp]]\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nvirtual_ips = [\"10.0.0.100/24\"]\n"
    );
    let c = Config::parse(&ok).unwrap();
    let v = c.vrrp_config().unwrap().expect("vrrp instances");
    assert_eq!(v.instances.len(), 1);
    assert_eq!(v.instances[0].vrid, 51);
    assert_eq!(v.instances[0].priority, 150);
    assert!(Config::parse(BASE)
        .unwrap()
        .vrrp_config()
        .unwrap()
        .is_none());

    let bad = ok.replace("vrid = 51", "vrid = 300");
    let e = err(&bad);
    assert!(e.starts_with("vrrp[0].vrid: "), "{e}");
    // a single table instead of an array of tables is a syntax error naming the key
    let single = format!("{BASE}\n[vrrp]\ninterface = \"eth0\"\n");
    assert!(err(&single).contains("vrrp"), "{}", err(&single));
}

#[test]
fn duplicate_listen_address_is_rejected() {
    let text = format!(
        "{BASE}\n[[listener]]\nname = \"b\"\nlisten = \"127.0.0.1:8080\"\nupstream = \"web\"\n"
    );
    assert!(err(&text).starts_with("listener \"b\".listen: 127.0.0.1:8080 is already used"));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = BASE
        .replace("weight = 3", "weight = 0")
        .replace("upstream = \"web\"", "upstream = \"web\"\nmode = \"udp\"")
        + "\n[retry]\nbudget_ratio = -1.0\n[admin]\nlisten = \"nowhere\"\n";
    let e = Config::parse(&text).unwrap_err();
    for key in [
        "upstream \"web\".server[1].weight",
        "listener \"listener0\".mode",
        "retry.budget_ratio",
        "admin.listen",
    ] {
        assert!(e.names(key), "{key} not reported in:\n{e}");
    }
    assert_eq!(e.to_string().lines().count(), 4, "{e}");
}
