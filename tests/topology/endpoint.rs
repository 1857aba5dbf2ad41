//! /topology and `mongotap_topology_member_up` against the set's own state.

use super::*;

pub(super) fn topology(tap: &Mongotap) -> Value {
    let (code, body) = tap.admin_get("/topology");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/topology is not JSON ({e}): {body}"))
}

/// /topology's row for member address `member`.
fn row<'a>(topology: &'a Value, member: &str) -> &'a Value {
    topology["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["member"] == member)
        .unwrap_or_else(|| panic!("no row for {member}: {topology}"))
}

fn member_up(tap: &Mongotap) -> Vec<prom::Sample> {
    let (code, body) = tap.admin_get("/metrics");
    assert_eq!(code, 200, "{body}");
    prom::parse(&body)
        .into_iter()
        .filter(|s| s.name == "mongotap_topology_member_up")
        .collect()
}

/// Polls `check` until it returns true or `timeout` passes.
pub(super) async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state /topology should give each member, from the set's truth.
fn states_of(set: &ReplSet) -> Vec<&'static str> {
    (0..set.len())
        .map(|i| {
            if set.primary() == Some(i) {
                "primary"
            } else {
                "secondary"
            }
        })
        .collect()
}

fn states_in(topology: &Value, set: &ReplSet) -> Vec<String> {
    (0..set.len())
        .map(|i| {
            row(topology, &set.host(i))["state"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_endpoint_follows_the_set() {
    let p = proxied(3).await;
    let want = states_of(&p.set);
    let shown = eventually(T, || states_in(&topology(&p.tap), &p.set) == want).await;
    let t = topology(&p.tap);
    assert!(
        shown,
        "states {:?}, want {want:?}: {t}",
        states_in(&t, &p.set)
    );
    assert_eq!(t["mode"], "replica-set", "{t}");
    assert_eq!(t["set_name"], SET_NAME, "{t}");
    assert_eq!(t["members"].as_array().unwrap().len(), 3, "{t}");
    for i in 0..3 {
        let r = row(&t, &p.set.host(i));
        assert_eq!(r["upstream"], p.set.host(i), "{r}");
        assert_eq!(r["listen"], host(p.listens[i]), "{r}");
        assert_eq!(r["advertise"], host(p.listens[i]), "{r}");
        assert_eq!(r["configured"], true, "{r}");
        assert_eq!(r["up"], true, "{r}");
        // Probed every 200 ms: a last hello much older than that is wrong.
        let age = r["last_hello_age_ms"].as_f64().unwrap_or(f64::MAX);
        assert!((0.0..3000.0).contains(&age), "last hello {age} ms ago: {r}");
    }
    let up = member_up(&p.tap);
    for i in 0..3 {
        let member = p.set.host(i);
        assert_eq!(
            prom::one(&up, "mongotap_topology_member_up", &[("member", &member)]),
            1.0
        );
    }

    // An election: /topology follows within a few probes.
    p.set.step_down();
    let want = states_of(&p.set);
    assert_eq!(want, ["secondary", "primary", "secondary"]);
    let shown = eventually(Duration::from_secs(5), || {
        states_in(&topology(&p.tap), &p.set) == want
    })
    .await;
    let t = topology(&p.tap);
    assert!(
        shown,
        "after the step-down {:?}: {t}",
        states_in(&t, &p.set)
    );

    // A member that goes away is down in both views; the others stay up.
    p.set.shutdown(2);
    let gone = p.set.host(2);
    let down = eventually(Duration::from_secs(5), || {
        let up = member_up(&p.tap);
        prom::one(&up, "mongotap_topology_member_up", &[("member", &gone)]) == 0.0
    })
    .await;
    assert!(down, "member_up never went to 0: {:?}", member_up(&p.tap));
    let t = topology(&p.tap);
    assert_eq!(row(&t, &gone)["up"], false, "{t}");
    let up = member_up(&p.tap);
    for i in 0..2 {
        let member = p.set.host(i);
        assert_eq!(
            prom::one(&up, "mongotap_topology_member_up", &[("member", &member)]),
            1.0,
            "{member}"
        );
        assert_eq!(row(&t, &member)["up"], true, "{t}");
    }
}
