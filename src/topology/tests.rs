use super::*;
use crate::config::{MemberConfig, TopologyMode};

fn config(member_ports: Option<String>) -> TopologyConfig {
    TopologyConfig {
        mode: TopologyMode::ReplicaSet,
        member: vec![MemberConfig {
            upstream: "DB-A.internal:27017".into(),
            listen: "127.0.0.1:0".into(),
            advertise: None,
        }],
        member_ports,
        advertise_host: Some("proxy.internal".into()),
    }
}

/// A free range of two ports: bound and released, so probably free.
fn free_range() -> String {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = a.local_addr().unwrap().port();
    drop(a);
    format!("{port}-{}", port + 1)
}

#[test]
fn listed_members_are_bound_and_advertised_as_their_listen_address() {
    let Bound { set, listeners, .. } = ReplicaSet::bind(&config(None)).unwrap();
    assert_eq!(listeners.len(), 1);
    let m = &set.members()[0];
    assert_eq!(&*m.name, "db-a.internal:27017");
    assert_eq!(m.listen, listeners[0].1.local_addr().unwrap());
    assert_eq!(m.advertise, format!("127.0.0.1:{}", m.listen.port()));
    assert_eq!(
        set.advertise("db-a.internal:27017"),
        Some(m.advertise.clone())
    );
    assert!(m.configured);
}

#[test]
fn new_members_get_a_port_from_the_range_once_then_none_are_left() {
    let range = free_range();
    let first: u16 = range.split('-').next().unwrap().parse().unwrap();
    let Bound {
        set,
        discovered: mut rx,
        ..
    } = ReplicaSet::bind(&config(Some(range))).unwrap();
    let b = set.advertise("db-b:27017").unwrap();
    assert!(b.starts_with("proxy.internal:"), "{b}");
    let port: u16 = b.rsplit_once(':').unwrap().1.parse().unwrap();
    assert!(
        port == first || port == first + 1,
        "{port} outside the range"
    );
    assert_eq!(
        set.advertise("db-b:27017"),
        Some(b.clone()),
        "the same member keeps its port"
    );
    let (member, listener) = rx.try_recv().unwrap();
    assert_eq!(&*member.name, "db-b:27017");
    assert_eq!(listener.local_addr().unwrap().port(), port);
    assert!(!member.configured);
    // The range has two ports: one more member fits at most, then none.
    let _ = set.advertise("db-c:27017");
    assert_eq!(set.advertise("db-d:27017"), None);
    assert!(set.members().iter().all(|m| &*m.name != "db-d:27017"));
}

#[test]
fn without_a_range_unknown_members_are_unmapped() {
    let Bound { set, .. } = ReplicaSet::bind(&config(None)).unwrap();
    assert_eq!(set.advertise("db-b:27017"), None);
    assert_eq!(set.members().len(), 1);
}

#[test]
fn state_and_hello_age_follow_what_was_seen() {
    let Bound { set, .. } = ReplicaSet::bind(&config(None)).unwrap();
    let m = &set.members()[0];
    let now = set.epoch + std::time::Duration::from_millis(1500);
    assert_eq!(m.last_hello_age_ms(set.epoch, now), None);
    m.saw_hello(
        MemberState::Primary,
        set.epoch,
        set.epoch + std::time::Duration::from_millis(1000),
    );
    assert_eq!(m.last_hello_age_ms(set.epoch, now), Some(500));
    assert_eq!(m.state(), MemberState::Primary);
    m.set_up(false);
    assert_eq!(m.state(), MemberState::Unknown);
    assert_eq!(m.up(), Some(false));
    assert_eq!(m.host(), "DB-A.internal");
}
