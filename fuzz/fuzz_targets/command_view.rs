//! Arbitrary bytes as one BSON command document: when the outer framing is
//! valid, `CommandView` must scan it (or refuse it) without panicking, and
//! everything it exposes must be readable. The same document goes through
//! the rewriter (output must be valid BSON with the command name first) and
//! `ReplyView`.
#![no_main]

use bson::RawDocument;
use libfuzzer_sys::fuzz_target;
use mongotap_proto::rewrite::{rewrite, Limits};
use mongotap_proto::{CommandView, ReplyView};

fuzz_target!(|data: &[u8]| {
    // Give random bytes a valid length and terminator so the fuzzer spends
    // its time inside the elements, then also try them exactly as given.
    let mut framed = Vec::with_capacity(data.len() + 5);
    framed.extend_from_slice(&((data.len() + 5) as i32).to_le_bytes());
    framed.extend_from_slice(data);
    framed.push(0);
    for bytes in [&framed[..], data] {
        let Ok(doc) = RawDocument::from_bytes(bytes) else {
            continue;
        };
        if let Ok(v) = CommandView::parse(doc) {
            let _ = (
                v.collection(),
                v.stages().collect::<Vec<_>>(),
                v.is_sensitive(),
                v.is_awaitable_hello(),
                v.explain_view().map(|e| (e.name, e.collection())),
                v.comment.map(|c| format!("{c:?}")),
                v.cursors.map(|c| c.into_iter().count()),
                format!("{v:?}"),
            );
            let limits = Limits {
                default_max_time_ms: Some(30_000),
                max_time_ms_cap: Some(60_000),
                allow_disk_use: true,
            };
            if let Ok(Some(new)) = rewrite(&v, &limits) {
                let out =
                    RawDocument::from_bytes(&new.body).expect("rewrite emits a valid document");
                let keys: Vec<&str> = out
                    .iter()
                    .map(|kv| kv.expect("valid element").0.as_str())
                    .collect();
                assert_eq!(keys.first().copied(), Some(v.name));
                // A changed maxTimeMS replaces every copy (duplicates the
                // rewriter did not touch are the server's to refuse).
                if new.changes.iter().any(|c| c.field == "maxTimeMS") {
                    assert_eq!(keys.iter().filter(|k| **k == "maxTimeMS").count(), 1);
                }
            }
        }
        if let Ok(r) = ReplyView::parse(doc) {
            let _ = (r.is_error(), r.error_code(), r.batch_len(), format!("{r:?}"));
        }
    }
});
