//! The officer dashboard: the static files under `web/`, embedded in the
//! binary (no separate web server to deploy), served beside the API on the
//! same origin so the session cookie and the live stream just work.
//!
//! Every page goes out with a strict Content-Security-Policy: scripts,
//! styles and data only from this origin (the map library is vendored, not
//! fetched from a CDN), images also from the configured basemap's origin,
//! never framed. The dashboard runs without internet access; a basemap tile
//! URL is optional (`--basemap-url`).

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// The files of `web/`, compiled in (also in debug builds, so tests serve
/// exactly what ships).
#[derive(rust_embed::Embed)]
#[folder = "web/"]
#[exclude = "*.sh"]
#[exclude = "*.md"]
struct Assets;

/// What the page needs to know about this deployment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UiConfig {
    /// Tile URL template (`https://host/{z}/{x}/{y}.png`), if the deployment
    /// has a basemap; without one, maps draw zones and tracks on their own.
    pub basemap_url: Option<String>,
    /// Attribution the tile provider requires.
    pub basemap_attribution: Option<String>,
}

#[derive(Clone)]
struct WebState {
    ui: UiConfig,
    csp: HeaderValue,
}

/// The policy for a deployment: the basemap's origin is the one foreign
/// source allowed (images only).
fn csp(ui: &UiConfig) -> HeaderValue {
    let tiles = ui
        .basemap_url
        .as_deref()
        .and_then(|u| url::Url::parse(&u.replace(['{', '}'], "")).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .map(|o| format!(" {o}"))
        .unwrap_or_default();
    let policy = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:{tiles}; \
         connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy)
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"))
}

/// `/`, the assets and `/ui-config.json`.
pub fn router(ui: UiConfig) -> Router {
    let state = WebState { csp: csp(&ui), ui };
    Router::new()
        .route("/", get(index))
        .route("/ui-config.json", get(ui_config))
        .route("/{file}", get(top_level))
        .route("/js/{*path}", get(nested_js))
        .route("/vendor/{*path}", get(nested_vendor))
        .with_state(state)
}

async fn index(State(s): State<WebState>) -> Response {
    asset(&s, "index.html")
}

async fn ui_config(State(s): State<WebState>) -> Json<UiConfig> {
    Json(s.ui)
}

async fn top_level(State(s): State<WebState>, Path(file): Path<String>) -> Response {
    asset(&s, &file)
}

async fn nested_js(State(s): State<WebState>, Path(path): Path<String>) -> Response {
    asset(&s, &format!("js/{path}"))
}

async fn nested_vendor(State(s): State<WebState>, Path(path): Path<String>) -> Response {
    asset(&s, &format!("vendor/{path}"))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn asset(s: &WebState, path: &str) -> Response {
    // Embedded names never contain `..`; refuse them outright anyway.
    let Some(file) = (!path.contains("..")).then(|| Assets::get(path)).flatten() else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let mut r = file.data.into_owned().into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, s.csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidate every time: a new server version must not meet old scripts.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(tag) = HeaderValue::from_str(&format!(
        "\"{}\"",
        hex::encode(&file.metadata.sha256_hash()[..8])
    )) {
        h.insert(header::ETAG, tag);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_admits_only_the_basemap_origin_for_images() {
        let none = csp(&UiConfig::default());
        assert!(none
            .to_str()
            .unwrap()
            .contains("img-src 'self' data: blob:;"));
        let with = csp(&UiConfig {
            basemap_url: Some("https://tiles.example.org/{z}/{x}/{y}.png".into()),
            basemap_attribution: None,
        });
        let p = with.to_str().unwrap();
        assert!(
            p.contains("img-src 'self' data: blob: https://tiles.example.org;"),
            "{p}"
        );
        assert!(p.contains("script-src 'self';"));
    }
}
