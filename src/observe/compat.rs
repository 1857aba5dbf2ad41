//! Drivers too old for the server they talk to. The first hello reply on a
//! connection gives the server's maxWireVersion; the handshake gave the
//! driver's name and version. A driver older than the first release that
//! supports that server is warned about once per app.

use crate::observe::meta::ClientMeta;
use crate::observe::Observatory;
use tracing::warn;

/// Oldest driver versions that support a server of at least this
/// maxWireVersion (from the drivers' published compatibility tables:
/// 25 = MongoDB 8.0, 21 = 7.0, 17 = 6.0, 13 = 5.0).
/// (driver name, (major, minor)) pairs.
type Minimums = &'static [(&'static str, (u32, u32))];

const MINIMUMS: &[(i64, Minimums)] = &[
    (
        25,
        &[
            ("pymongo", (4, 9)),
            ("nodejs", (6, 7)),
            ("mongo-go-driver", (1, 17)),
            ("mongo-java-driver", (5, 2)),
            ("mongo-rust-driver", (3, 1)),
        ],
    ),
    (
        21,
        &[
            ("pymongo", (4, 4)),
            ("nodejs", (5, 7)),
            ("mongo-go-driver", (1, 12)),
            ("mongo-java-driver", (4, 10)),
            ("mongo-rust-driver", (2, 6)),
        ],
    ),
    (
        17,
        &[
            ("pymongo", (4, 2)),
            ("nodejs", (4, 8)),
            ("mongo-go-driver", (1, 10)),
            ("mongo-java-driver", (4, 7)),
            ("mongo-rust-driver", (2, 3)),
        ],
    ),
    (
        13,
        &[
            ("pymongo", (3, 12)),
            ("nodejs", (4, 0)),
            ("mongo-go-driver", (1, 5)),
            ("mongo-java-driver", (4, 3)),
            ("mongo-rust-driver", (2, 0)),
        ],
    ),
];

/// "PyMongo|c" → "pymongo"; "mongo-java-driver|sync" → "mongo-java-driver".
fn base_name(driver: &str) -> String {
    driver
        .split('|')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// "4.20.0|" → (4, 20); "v2.1.0" → (2, 1).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let v = version.split('|').next()?.trim().trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The minimum version of `driver` for `max_wire_version`, when the driver
/// is known and its version is below it.
pub fn too_old(driver: &str, version: &str, max_wire_version: i64) -> Option<(u32, u32)> {
    let name = base_name(driver);
    let have = major_minor(version)?;
    let (_, table) = MINIMUMS
        .iter()
        .find(|(wire, _)| max_wire_version >= *wire)?;
    let (_, min) = table.iter().find(|(d, _)| *d == name)?;
    (have < *min).then_some(*min)
}

pub fn check(obs: &Observatory, meta: &ClientMeta, max_wire_version: i64) {
    let Some(min) = too_old(&meta.driver, &meta.driver_version, max_wire_version) else {
        return;
    };
    if obs.warned_apps.insert(meta.app.to_string(), ()).is_some() {
        return;
    }
    warn!(
        event = "driver_too_old",
        app = &*meta.app,
        driver = &*meta.driver,
        driver_version = &*meta.driver_version,
        max_wire_version,
        minimum = %format!("{}.{}", min.0, min.1),
        "app {:?} uses {} {}, older than {}.{}, the first release that supports this server (maxWireVersion {max_wire_version})",
        &*meta.app, meta.driver, meta.driver_version, min.0, min.1
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_old_and_current_drivers() {
        assert_eq!(too_old("PyMongo|c", "4.20.0|", 21), None);
        assert_eq!(too_old("PyMongo", "4.1.1", 21), Some((4, 4)));
        assert_eq!(
            too_old("mongo-java-driver|sync", "4.9.0", 21),
            Some((4, 10))
        );
        assert_eq!(too_old("nodejs", "6.10.0", 25), None);
        assert_eq!(too_old("mongo-go-driver", "v1.11.4", 21), Some((1, 12)));
        assert_eq!(too_old("unknown-driver", "0.1", 21), None);
        assert_eq!(too_old("PyMongo", "3.0", 6), None);
    }
}
