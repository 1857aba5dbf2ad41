//! The problems tests/diagnose.rs seeds in FerretDB and the assertions
//! that a diagnosis found each of them with the seeded types and counts
//! (the CLI's report and the live event carry the same findings).

use mongodb::bson::{doc, oid::ObjectId, Document};
use mongodb::Client;
use serde_json::Value;

/// A filter value that must never appear in any output.
pub const SECRET: &str = "secret-filter-value-0815";

/// What the seed puts in: orders.customerId as strings while customers._id
/// are ObjectIds; orders.sku and products.sku both strings, products.sku
/// without an index; `items` an array in ORDERS_WITH_ITEMS orders, absent
/// in the rest.
pub const CUSTOMERS: usize = 4;
pub const ORDERS: usize = 6;
pub const ORDERS_WITH_ITEMS: usize = 4;
pub const PRODUCTS: usize = 3;

pub fn pipeline() -> String {
    format!(
        r#"[{{"$match": {{"note": {{"$ne": "{SECRET}"}}}}}},
 {{"$lookup": {{"from": "customers", "localField": "customerId", "foreignField": "_id", "as": "customer"}}}},
 {{"$lookup": {{"from": "products", "localField": "sku", "foreignField": "sku", "as": "product"}}}},
 {{"$unwind": "$items"}},
 {{"$group": {{"_id": "$customerId", "n": {{"$sum": 1}}}}}}]"#
    )
}

pub const STAGES: &str = "$match>$lookup>$lookup>$unwind>$group";

pub async fn seed(uri: &str, db: &str) {
    let c = Client::with_uri_str(uri).await.expect("client");
    let db = c.database(db);
    let ids: Vec<ObjectId> = (0..CUSTOMERS).map(|_| ObjectId::new()).collect();
    let customers: Vec<Document> = ids
        .iter()
        .map(|id| doc! {"_id": id, "tier": "gold"})
        .collect();
    db.collection::<Document>("customers")
        .insert_many(customers)
        .await
        .expect("customers");
    let orders: Vec<Document> = (0..ORDERS)
        .map(|i| {
            let mut d = doc! {"customerId": ids[i % CUSTOMERS].to_hex(), "sku": format!("sku-{}", i % PRODUCTS), "total": i as i32};
            if i < ORDERS_WITH_ITEMS {
                d.insert("items", vec![1, 2]);
            }
            d
        })
        .collect();
    db.collection::<Document>("orders")
        .insert_many(orders)
        .await
        .expect("orders");
    let products: Vec<Document> = (0..PRODUCTS)
        .map(|i| doc! {"sku": format!("sku-{i}")})
        .collect();
    db.collection::<Document>("products")
        .insert_many(products)
        .await
        .expect("products");
}

pub fn with_check<'a>(
    findings: &'a [Value],
    check: &str,
    pred: impl Fn(&Value) -> bool,
) -> &'a Value {
    findings
        .iter()
        .find(|f| f["check"] == check && pred(f))
        .unwrap_or_else(|| panic!("no matching `{check}` finding in {findings:#?}"))
}

/// Every seeded problem, with the seeded types and counts.
pub fn assert_seeded(findings: &[Value], db: &str) {
    let join = with_check(findings, "join_types", |f| {
        f["evidence"]["foreign_field"] == "_id"
    });
    assert_eq!(join["stage"], "$lookup");
    assert_eq!(join["severity"], "error");
    let e = &join["evidence"];
    assert_eq!(e["stage_index"], 1);
    assert_eq!(e["local_collection"], "orders");
    assert_eq!(e["local_field"], "customerId");
    assert_eq!(e["foreign_collection"], "customers");
    assert_eq!(e["local"]["types"], serde_json::json!({"string": ORDERS}));
    assert_eq!(e["local"]["sampled"], ORDERS);
    assert_eq!(
        e["foreign"]["types"],
        serde_json::json!({"objectId": CUSTOMERS})
    );
    assert_eq!(e["foreign_field_indexed"], true);
    let msg = join["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("orders.customerId (string ×{ORDERS})"))
            && msg.contains(&format!("customers._id (objectId ×{CUSTOMERS})")),
        "{msg}"
    );

    let sku = with_check(findings, "join_types", |f| {
        f["evidence"]["foreign_field"] == "sku" && f["evidence"]["local"].is_object()
    });
    assert_eq!(sku["severity"], "info", "same types on both sides: {sku}");
    assert_eq!(
        sku["evidence"]["local"]["types"],
        serde_json::json!({"string": ORDERS})
    );
    assert_eq!(
        sku["evidence"]["foreign"]["types"],
        serde_json::json!({"string": PRODUCTS})
    );
    let unindexed = with_check(findings, "join_types", |f| {
        f["evidence"]["foreign_field_indexed"] == false && f["severity"] == "warning"
    });
    assert_eq!(unindexed["evidence"]["foreign_collection"], "products");
    assert_eq!(unindexed["evidence"]["foreign_field"], "sku");
    assert_eq!(unindexed["evidence"]["stage_index"], 2);

    let unwind = with_check(findings, "join_types", |f| f["stage"] == "$unwind");
    assert_eq!(unwind["severity"], "warning");
    assert_eq!(unwind["evidence"]["field"], "items");
    assert_eq!(
        unwind["evidence"]["missing_or_null"],
        ORDERS - ORDERS_WITH_ITEMS
    );
    assert_eq!(
        unwind["evidence"]["sample"]["types"],
        serde_json::json!({"array": ORDERS_WITH_ITEMS, "missing": ORDERS - ORDERS_WITH_ITEMS})
    );

    let group = with_check(findings, "join_types", |f| f["stage"] == "$group");
    assert_eq!(group["evidence"]["key"], "customerId");
    assert_eq!(
        group["evidence"]["sample"]["types"],
        serde_json::json!({"string": ORDERS})
    );

    // FerretDB lists the stages it implements; $lookup is not one.
    let ferret = with_check(findings, "driver_server", |f| {
        f["evidence"]["unsupported_stages"].is_array()
    });
    assert_eq!(
        ferret["evidence"]["unsupported_stages"],
        serde_json::json!(["$lookup"])
    );
    // FerretDB's explain is a SQLite plan.
    let explain = with_check(findings, "explain", |_| true);
    assert_eq!(explain["evidence"]["per_stage"], false);

    let heavy = with_check(findings, "guardrails", |f| {
        f["evidence"]["memory_heavy_stages"].is_array()
    });
    assert_eq!(
        heavy["evidence"]["memory_heavy_stages"],
        serde_json::json!(["$group"])
    );
    with_check(findings, "guardrails", |f| {
        f["evidence"].get("maxTimeMS").is_some_and(Value::is_null)
    });
    let rule = with_check(findings, "guardrails", |f| {
        f["evidence"]["rewrite_rule"].is_string()
    });
    let rule = rule["evidence"]["rewrite_rule"].as_str().unwrap();
    assert!(
        rule.contains(&format!("namespaces = [\"{db}.orders\"]"))
            && rule.contains("allow_disk_use = true"),
        "{rule}"
    );
}
