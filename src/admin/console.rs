//! The incident console, `GET /`: one page embedded in the binary (plain
//! HTML, CSS and JavaScript under `console/`), nothing fetched from
//! anywhere else, so it works on an offline machine. The page itself holds
//! no data and is served without the token; it reads the same routes as
//! anyone else, sending admin.token when one is set (it asks for it).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// No caching: the page must match the binary that serves it.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

pub async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), NO_STORE],
        INDEX,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            NO_STORE,
        ],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8"), NO_STORE],
        STYLE,
    )
}

#[cfg(test)]
mod tests {
    /// Offline: nothing in the page names another origin.
    #[test]
    fn the_page_fetches_nothing_from_elsewhere() {
        for text in [super::INDEX, super::SCRIPT, super::STYLE] {
            for needle in ["http://", "https://", "//cdn", "@import"] {
                let hits: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(needle) && !l.contains("http://www.w3.org/2000/svg"))
                    .collect();
                assert!(hits.is_empty(), "{needle}: {hits:?}");
            }
        }
    }
}
