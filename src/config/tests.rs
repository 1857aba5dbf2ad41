use super::*;

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
    let bad = |t: &str| {
        Config::from_toml(t)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert!(bad("[admin]\nlisten = \"0.0.0.0:9477\"\n").contains("admin.token"));
    assert!(bad("[proxy]\nmax_frame_bytes = 50000000\n").contains("max_frame_bytes"));
    assert!(
        bad("[[rewrite.rule]]\ncommands = [\"getMore\"]\ndefault_max_time_ms = 5\n")
            .contains("never rewrites")
    );
    assert!(bad("[[rewrite.rule]]\ncommands = [\"find\"]\n").contains("no action"));
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
    let bad = |t: &str| {
        Config::from_toml(t)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string()
    };
    assert!(bad("[health]\ninterval_ms = 10\n").contains("health.interval_ms 10"));
    assert!(bad("[health]\ntimeout_ms = 0\n").contains("health.timeout_ms"));
    let err = Config::from_toml("[health]\nperiod_ms = 5\n").unwrap_err();
    assert!(err.contains("period_ms"), "{err}");
}
