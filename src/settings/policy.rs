//! The rewrite policy: which rule applies to a command (first match on
//! command name, namespace glob and app glob), and the `rewritten` event.
//! The byte-level work is `mongotap_proto::rewrite`.

use crate::config::{RewriteConfig, RewriteMode};
use mongotap_proto::rewrite::{FieldChange, Limits};
use wildmatch::WildMatch;

pub struct Rule {
    commands: Vec<String>,
    namespaces: Vec<WildMatch>,
    /// Some namespace glob is "*": no need to build "db.collection".
    any_namespace: bool,
    apps: Vec<WildMatch>,
    pub limits: Limits,
}

/// The compiled `[rewrite]` section. Swapped whole on SIGHUP.
pub struct Policy {
    pub mode: RewriteMode,
    rules: Vec<Rule>,
}

impl Policy {
    pub fn compile(cfg: &RewriteConfig) -> Policy {
        let rules = cfg
            .rule
            .iter()
            .map(|r| Rule {
                any_namespace: r.namespaces.is_empty() || r.namespaces.iter().any(|g| g == "*"),
                commands: r.commands.clone(),
                namespaces: if r.namespaces.is_empty() {
                    vec![WildMatch::new("*")]
                } else {
                    r.namespaces.iter().map(|g| WildMatch::new(g)).collect()
                },
                apps: r.apps.iter().map(|g| WildMatch::new(g)).collect(),
                limits: Limits {
                    default_max_time_ms: r.default_max_time_ms.map(clamp_ms),
                    max_time_ms_cap: r.max_time_ms_cap.map(clamp_ms),
                    allow_disk_use: r.allow_disk_use,
                },
            })
            .collect();
        Policy {
            mode: cfg.mode,
            rules,
        }
    }

    /// The first rule that matches, when rewriting is on.
    pub fn matching(&self, command: &str, db: &str, collection: &str, app: &str) -> Option<&Rule> {
        if self.mode == RewriteMode::Off {
            return None;
        }
        // The "db.collection" string is built once, and only when a rule
        // naming this command has a namespace glob other than "*".
        let mut ns: Option<String> = None;
        self.rules.iter().find(|r| {
            r.commands.iter().any(|c| c == command || c == "*")
                && (r.any_namespace
                    || r.namespaces
                        .iter()
                        .any(|g| g.matches(ns.get_or_insert_with(|| format!("{db}.{collection}")))))
                && (r.apps.is_empty() || r.apps.iter().any(|g| g.matches(app)))
        })
    }
}

fn clamp_ms(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// "maxTimeMS: absent -> 30000, allowDiskUse: absent -> true".
pub fn describe(changes: &[FieldChange]) -> String {
    changes
        .iter()
        .map(|c| {
            let before = c.before.map_or("absent".to_string(), |v| v.to_string());
            let after = if c.field == "allowDiskUse" {
                "true".to_string()
            } else {
                c.after.to_string()
            };
            format!("{}: {before} -> {after}", c.field)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
