//! Generated commands: nothing panics, and equal hashes go with equal
//! documents.

use super::{hash, raw, shape};
use crate::command::CommandView;
use crate::shape::{shape_doc, shape_hash};
use bson::{doc, Bson, Document, RawDocument};
use proptest::prelude::*;

fn literal() -> impl Strategy<Value = Bson> {
    prop_oneof![
        any::<i32>().prop_map(Bson::Int32),
        any::<i64>().prop_map(Bson::Int64),
        any::<f64>().prop_map(Bson::Double),
        "[a-z$]{0,4}".prop_map(Bson::String),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
    ]
}

fn value() -> impl Strategy<Value = Bson> {
    literal().prop_recursive(4, 24, 4, |inner| {
        let key = prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("$gt".to_string()),
            Just("$in".to_string()),
            Just("$and".to_string()),
            Just("$expr".to_string()),
            Just("$sum".to_string()),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
            prop::collection::vec((key, inner), 0..4)
                .prop_map(|pairs| Bson::Document(pairs.into_iter().collect())),
        ]
    })
}

fn command() -> impl Strategy<Value = Document> {
    let name = prop_oneof![
        Just("find"),
        Just("aggregate"),
        Just("count"),
        Just("distinct"),
        Just("update"),
        Just("delete"),
        Just("findAndModify"),
    ];
    let field = prop_oneof![
        Just("filter"),
        Just("query"),
        Just("pipeline"),
        Just("sort"),
        Just("projection"),
        Just("updates"),
        Just("deletes"),
        Just("update"),
        Just("limit"),
        Just("let"),
        Just("key"),
    ];
    (name, prop::collection::vec((field, value()), 0..4)).prop_map(|(name, fields)| {
        let mut command = doc! { name: "orders" };
        for (field, value) in fields {
            command.insert(field, value);
        }
        command.insert("$db", "shop");
        command
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(doc) = RawDocument::from_bytes(&bytes) {
            if let Ok(view) = CommandView::parse(doc) {
                let h = shape_hash(&view, &[]);
                prop_assert_eq!(h.is_some(), shape_doc(&view, &[]).is_some());
            }
        }
    }

    /// Valid commands with bytes overwritten: malformed nested values.
    #[test]
    fn mutated_commands_never_panic(
        command in command(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = raw(&command).into_bytes();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(doc) = RawDocument::from_bytes(&bytes) {
            if let Ok(view) = CommandView::parse(doc) {
                let _ = shape_hash(&view, &[]);
                let _ = shape_doc(&view, &[]);
            }
        }
    }

    /// Other numbers of the same type, sign and zero-ness (which sorts,
    /// projections and delete limits read) leave the shape as it was.
    #[test]
    fn other_literals_keep_the_shape(a in command()) {
        let b = other_numbers(&a);
        prop_assert_eq!(hash(&a), hash(&b));
        prop_assert_eq!(shape(&a), shape(&b));
    }

    #[test]
    fn equal_hashes_go_with_equal_documents(a in command(), b in command()) {
        prop_assert_eq!(hash(&a) == hash(&b), shape(&a) == shape(&b));
    }
}

fn other_numbers(command: &Document) -> Document {
    command
        .iter()
        .map(|(k, v)| (k.clone(), other_number(v)))
        .collect()
}

fn other_number(value: &Bson) -> Bson {
    match value {
        Bson::Int32(n) => Bson::Int32(n.saturating_mul(3)),
        Bson::Int64(n) => Bson::Int64(n.saturating_mul(3)),
        Bson::Array(items) => Bson::Array(items.iter().map(other_number).collect()),
        Bson::Document(doc) => Bson::Document(other_numbers(doc)),
        other => other.clone(),
    }
}
