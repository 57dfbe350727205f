//! The compliance console: one page and its script and style, embedded in the binary (no CDN,
//! nothing fetched from elsewhere), that calls the HTTP API with the key its user signs in
//! with. The page holds no secret: the key lives in the tab's sessionStorage and travels only
//! in the Authorization header of the API calls.

use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only this origin's own script, style and API; no framing; no referrer leaves the page.
const SECURITY_HEADERS: [(header::HeaderName, &str); 4] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
         form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-cache"),
];

pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|| asset("text/html; charset=utf-8", PAGE)))
        .route("/console/console.js", get(|| asset("text/javascript; charset=utf-8", SCRIPT)))
        .route("/console/console.css", get(|| asset("text/css; charset=utf-8", STYLE)))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], SECURITY_HEADERS, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        // Every src and href of the page is this server's own path: nothing from a CDN.
        for attribute in ["src=\"", "href=\""] {
            for (i, _) in PAGE.match_indices(attribute) {
                let value = &PAGE[i + attribute.len()..];
                assert!(
                    value.starts_with("/console/") || value.starts_with('#'),
                    "the page refers to {}",
                    &value[..value.find('"').unwrap_or(value.len())]
                );
            }
        }
        assert!(PAGE.contains("/console/console.js") && PAGE.contains("/console/console.css"));
    }

    #[test]
    fn the_script_keeps_the_key_in_session_storage_only() {
        assert!(SCRIPT.contains("sessionStorage"));
        assert!(!SCRIPT.contains("localStorage"), "a key must not outlive the browser session");
        assert!(!SCRIPT.contains("document.cookie"), "nor be kept in a cookie");
        assert!(!SCRIPT.contains("innerHTML"), "data is written as text, never parsed as HTML");
    }
}
