//! hello_facts on real-shaped replies, damaged ones and whole frames.

use super::*;

#[test]
fn facts_read_state_name_me_and_members() {
    let facts = hello_facts(&secondary_hello());
    assert_eq!(facts.set_name.as_deref(), Some("rs0"));
    assert_eq!(facts.state, MemberState::Secondary);
    assert_eq!(facts.me.as_deref(), Some("db-b.internal:27017"));
    assert_eq!(
        facts.members,
        [
            "db-a.internal:27017",
            "db-b.internal:27017",
            "db-x.internal:27017",
            "db-c.internal:27017",
            "db-x.internal:27018",
        ]
    );

    let states = [
        (
            rawdoc! { "isWritablePrimary": true, "secondary": false },
            MemberState::Primary,
        ),
        (rawdoc! { "ismaster": true }, MemberState::Primary),
        (
            rawdoc! { "secondary": true, "hidden": true },
            MemberState::Hidden,
        ),
        (
            rawdoc! { "hidden": true, "secondary": true },
            MemberState::Hidden,
        ),
        (
            rawdoc! { "arbiterOnly": true, "secondary": false },
            MemberState::Arbiter,
        ),
        (
            rawdoc! { "isWritablePrimary": false, "secondary": false },
            MemberState::Unknown,
        ),
        (
            rawdoc! { "msg": "isdbgrid", "isWritablePrimary": true },
            MemberState::Primary,
        ),
    ];
    for (doc, state) in &states {
        assert_eq!(hello_facts(doc).state, *state, "{doc:?}");
    }
    // A malformed value (a boolean of 2) hides nothing that follows it.
    let mut bytes = secondary_hello().into_bytes();
    let needle = b"secondary\0\x01";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("secondary: true");
    bytes[at + needle.len() - 1] = 2;
    let damaged = hello_facts(RawDocument::from_bytes(&bytes).expect("framing intact"));
    assert_eq!(damaged.state, MemberState::Unknown);
    assert_eq!(damaged.me, facts.me);
    assert_eq!(damaged.members, facts.members);

    let mongos = hello_facts(&rawdoc! { "msg": "isdbgrid", "ok": 1 });
    assert_eq!(mongos, HelloFacts::default());

    let compressed =
        op_compressed::compress(&msg(&secondary_hello(), 0), Compressor::Zstd).expect("compresses");
    let framed = frame_hello_facts(&compressed, LIMIT)
        .expect("decodes")
        .expect("facts");
    assert_eq!(framed, facts);
}
