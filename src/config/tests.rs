use super::*;

/// The validation error for a config file that parses but cannot work.
fn invalid(text: &str) -> String {
    Config::from_toml(text)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml("[watch]\nstall_msec = 5\n").unwrap_err();
    assert!(err.contains("stall_msec"), "{err}");
    let err = Config::from_toml("[nope]\n").unwrap_err();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn file_overrides_defaults() {
    let c = Config::from_toml("[watch]\nstall_ms = 42\n").unwrap();
    assert_eq!(c.watch.stall_ms, 42);
    assert_eq!(c.watch.slow_ms, 100);
    assert_eq!(c.proxy.listen, "127.0.0.1:27018");
    assert_eq!(c.proxy.upstream, "127.0.0.1:27017");
    assert_eq!(c.admin.listen, "127.0.0.1:9477");
    c.validate().unwrap();
}

#[test]
fn shipped_example_is_valid() {
    let text = include_str!("../../config.toml");
    let c = Config::from_toml(text).unwrap();
    c.validate().unwrap();
    assert_eq!(c.rewrite.rule.len(), 1);
}

#[test]
fn invalid_values_say_what_to_do() {
    assert!(invalid("[admin]\nlisten = \"0.0.0.0:9477\"\n").contains("admin.token"));
    assert!(invalid("[proxy]\nmax_frame_bytes = 50000000\n").contains("max_frame_bytes"));
    assert!(
        invalid("[[rewrite.rule]]\ncommands = [\"getMore\"]\ndefault_max_time_ms = 5\n")
            .contains("never rewrites")
    );
    assert!(invalid("[[rewrite.rule]]\ncommands = [\"find\"]\n").contains("no action"));
    // Settings a flag also sets name the flag.
    assert_eq!(
        invalid("[proxy]\nupstream = \"db.internal\"\n"),
        "invalid config: proxy.upstream (or --upstream) \"db.internal\" must be HOST:PORT, e.g. 127.0.0.1:27017 or db.internal:27017"
    );
    assert_eq!(
        invalid("[watch]\nstall_ms = 0\n"),
        "invalid config: watch.stall_ms (or --stall-ms) must be at least 1"
    );
    assert_eq!(
        invalid("[watch]\nmax_shapes = 0\n"),
        "invalid config: watch.max_shapes must be at least 1"
    );
    let shipped = Config::from_toml(include_str!("../../config.toml")).unwrap();
    assert_eq!(shipped.watch.max_shapes, Config::default().watch.max_shapes);
}

#[test]
fn auto_runtime_is_current_thread_on_small_machines() {
    use super::RuntimeFlavor::*;
    assert_eq!(Config::default().proxy.runtime, Auto);
    assert_eq!(Auto.resolve(1), CurrentThread);
    assert_eq!(Auto.resolve(2), CurrentThread);
    assert_eq!(Auto.resolve(3), MultiThread);
    assert_eq!(MultiThread.resolve(1), MultiThread);
    assert_eq!(CurrentThread.resolve(64), CurrentThread);
}

#[test]
fn health_probe_settings_are_checked() {
    let c = Config::from_toml("[health]\ninterval_ms = 250\ntimeout_ms = 100\n").unwrap();
    c.validate().unwrap();
    assert_eq!((c.health.interval_ms, c.health.timeout_ms), (250, 100));
    let d = Config::default().health;
    assert_eq!((d.interval_ms, d.timeout_ms), (2_000, 1_000));
    assert!(invalid("[health]\ninterval_ms = 10\n").contains("health.interval_ms 10"));
    assert!(invalid("[health]\ntimeout_ms = 0\n").contains("health.timeout_ms"));
    let err = Config::from_toml("[health]\nperiod_ms = 5\n").unwrap_err();
    assert!(err.contains("period_ms"), "{err}");
}

#[test]
fn type_errors_name_the_key_line_and_type_in_words() {
    let err = |t: &str| Config::from_toml(t).unwrap_err();
    assert_eq!(
        err("[watch]\nslow_ms = \"x\"\n"),
        "watch.slow_ms (line 2, column 11): invalid type: string \"x\", expected a non-negative integer"
    );
    assert_eq!(
        err("[proxy]\nlisten = \"127.0.0.1:1\"\nmax_connections = -1\n"),
        "proxy.max_connections (line 3, column 19): invalid value: integer `-1`, expected a non-negative integer"
    );
    assert_eq!(
        err("[capture]\nenabled = 1\n"),
        "capture.enabled (line 2, column 11): invalid type: integer `1`, expected true or false"
    );
    assert_eq!(
        err("[capture]\nsample_rate = \"all\"\n"),
        "capture.sample_rate (line 2, column 15): invalid type: string \"all\", expected a number"
    );
    assert_eq!(
        err("[[rewrite.rule]]\ncommands = \"find\"\n"),
        "rewrite.rule[0].commands (line 2, column 12): invalid type: string \"find\", expected an array"
    );
    assert_eq!(
        err("[rewrite]\nmode = true\n"),
        "rewrite.mode (line 2, column 8): expected a string"
    );
    assert_eq!(
        err("proxy = 3\n"),
        "proxy (line 1, column 9): invalid type: integer `3`, expected a table"
    );
    // Syntax errors have no key yet, but keep the position.
    assert!(
        err("[watch]\nslow_ms = \n").starts_with("line 2, column 11: "),
        "{}",
        err("[watch]\nslow_ms = \n")
    );
}

#[test]
fn serde_names_become_words() {
    use super::wording::in_words;
    for (serde, words) in [
        (
            "invalid type: string \"x\", expected u64",
            "invalid type: string \"x\", expected a non-negative integer",
        ),
        (
            "invalid type: string \"x\", expected u32",
            "invalid type: string \"x\", expected a non-negative integer",
        ),
        (
            "invalid type: string \"x\", expected usize",
            "invalid type: string \"x\", expected a non-negative integer",
        ),
        (
            "invalid type: string \"x\", expected i64",
            "invalid type: string \"x\", expected an integer",
        ),
        (
            "invalid type: string \"x\", expected f64",
            "invalid type: string \"x\", expected a number",
        ),
        (
            "invalid type: integer `1`, expected a boolean",
            "invalid type: integer `1`, expected true or false",
        ),
        (
            "invalid type: map, expected a string",
            "invalid type: a table, expected a string",
        ),
        (
            "invalid type: sequence, expected struct WatchConfig",
            "invalid type: an array, expected a table",
        ),
        // Already in words: unchanged.
        (
            "unknown variant `on`, expected one of `off`, `dry-run`, `enforce`",
            "unknown variant `on`, expected one of `off`, `dry-run`, `enforce`",
        ),
    ] {
        assert_eq!(in_words(serde), words);
    }
}

#[test]
fn listen_addresses_may_be_host_names() {
    let check = |t: &str| Config::from_toml(t).unwrap().validate();
    for ok in [
        "[proxy]\nlisten = \"localhost:27018\"\n",
        "[proxy]\nlisten = \"[::1]:27018\"\n",
        "[proxy]\nlisten = \"0.0.0.0:0\"\n",
        // localhost resolves to loopback only: no token needed.
        "[admin]\nlisten = \"localhost:9477\"\n",
        "[admin]\nlisten = \"\"\n",
    ] {
        check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    assert_eq!(
        invalid("[proxy]\nlisten = \"localhost\"\n"),
        "invalid config: proxy.listen (or --listen) \"localhost\" must be HOST:PORT, e.g. 127.0.0.1:27018, [::1]:27018 or localhost:27018"
    );
    assert_eq!(
        invalid("[admin]\nlisten = \"localhost:99999\"\n"),
        "invalid config: admin.listen (or --admin) \"localhost:99999\" must be HOST:PORT, e.g. 127.0.0.1:27018, [::1]:27018 or localhost:27018; the port must be a number from 0 to 65535"
    );
    assert!(invalid("[proxy]\nlisten = \"::1:27018\"\n").contains("must be HOST:PORT"));
    assert!(invalid("[proxy]\nlisten = \":27018\"\n").contains("must be HOST:PORT"));
    assert_eq!(
        invalid("[admin]\nlisten = \"0.0.0.0:9477\"\n"),
        "invalid config: admin.listen \"0.0.0.0:9477\" is not loopback: set admin.token so the endpoint is not open to the network"
    );
}

/// What check-config prints is a config file that reads back to the same
/// settings, with every secret replaced.
#[test]
fn printed_toml_reads_back_to_the_same_settings() {
    let text = "[proxy]\nlisten = \"localhost:27100\"\n[admin]\nlisten = \"0.0.0.0:9477\"\ntoken = \"tok-secret\"\n\
                [watch]\nslow_ms = 250\n[explain]\nusername = \"u\"\npassword = \"pw-secret\"\n\
                [capture]\ncontrol_token = \"cap-secret\"\nsample_rate = 0.25\n\
                [[rewrite.rule]]\ncommands = [\"find\"]\nmax_time_ms_cap = 1000\n";
    let cfg = Config::from_toml(text).unwrap();
    cfg.validate().unwrap();
    let printed = cfg.redacted().to_toml().unwrap();
    for secret in ["tok-secret", "pw-secret", "cap-secret"] {
        assert!(!printed.contains(secret), "{printed}");
    }
    let back = Config::from_toml(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    back.validate().unwrap();
    assert_eq!(back.proxy.listen, "localhost:27100");
    assert_eq!(back.watch.slow_ms, 250);
    assert_eq!(back.watch.stall_ms, 5_000);
    assert_eq!(back.capture.sample_rate, 0.25);
    assert_eq!(back.admin.token.as_deref(), Some("<redacted>"));
    assert_eq!(back.explain.username.as_deref(), Some("u"));
    assert_eq!(back.rewrite.rule[0].max_time_ms_cap, Some(1000));
    assert_eq!(back.rewrite.rule[0].default_max_time_ms, None);
    // A fixed point: printing what was read back gives the same text.
    assert_eq!(back.to_toml().unwrap(), printed);

    // The shipped example and the defaults round-trip too.
    let shipped = Config::from_toml(include_str!("../../config.toml")).unwrap();
    let printed = shipped.to_toml().unwrap();
    assert_eq!(
        Config::from_toml(&printed).unwrap().to_toml().unwrap(),
        printed
    );
    let printed = Config::default().to_toml().unwrap();
    assert_eq!(
        Config::from_toml(&printed).unwrap().to_toml().unwrap(),
        printed
    );
}

#[test]
fn otel_is_off_without_its_table_and_the_env_tunes_it() {
    assert!(Config::from_toml("").unwrap().otel.is_none());
    let mut c = Config::from_toml(
        "[otel]\nendpoint = \"http://collector:4318/\"\nheaders = { \"x-api-key\" = \"k\" }\n",
    )
    .unwrap();
    c.validate().unwrap();
    let otel = c.otel.as_mut().unwrap();
    assert_eq!(otel.traces_url(), "http://collector:4318/v1/traces");
    assert_eq!(otel.service_name, "mongotap");
    assert_eq!(otel.sample_ratio, 1.0);
    otel.apply_env(|k| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:9999".into()),
        "OTEL_SERVICE_NAME" => Some("checkout-db".into()),
        _ => None,
    });
    assert_eq!(otel.traces_url(), "http://127.0.0.1:9999/v1/traces");
    assert_eq!(otel.service_name, "checkout-db");
    // An empty variable changes nothing.
    otel.apply_env(|_| Some(String::new()));
    assert_eq!(otel.service_name, "checkout-db");
    let shown = c.redacted().to_toml().unwrap();
    assert!(
        shown.contains("<redacted>") && !shown.contains("\"k\""),
        "{shown}"
    );
    assert!(invalid("[otel]\nsample_ratio = 1.5\n").contains("otel.sample_ratio"));
    assert!(invalid("[otel]\nendpoint = \"collector:4318\"\n").contains("http://"));
    assert!(invalid("[otel]\nmax_queue_size = 0\n").contains("max_queue_size"));
}
