//! The web UI: static files compiled into the binary with `include_str!`, so the
//! gateway is one self-contained executable (no asset directory to deploy or get out of
//! step with the code) and the page fetches nothing from the internet.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");
const TRACES_HTML: &str = include_str!("../ui/traces.html");
const TRACES_JS: &str = include_str!("../ui/traces.js");
const MESH_HTML: &str = include_str!("../ui/mesh.html");
const MESH_JS: &str = include_str!("../ui/mesh.js");

/// Strict enough to forbid anything but our own files and API, loose enough for them.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        body,
    )
}

/// `GET /`.
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /app.js`.
pub async fn app_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /style.css`.
pub async fn style_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /traces`: the last traces as a waterfall (`starling up`; see `traces`).
pub async fn traces_html() -> impl IntoResponse {
    asset("text/html; charset=utf-8", TRACES_HTML)
}

/// `GET /traces.js`.
pub async fn traces_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", TRACES_JS)
}

/// `GET /mesh`: the live mesh view (see `mesh_view`).
pub async fn mesh_html() -> impl IntoResponse {
    asset("text/html; charset=utf-8", MESH_HTML)
}

/// `GET /mesh.js`.
pub async fn mesh_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", MESH_JS)
}
