//! HTTP: the only axum user. Router, HMAC auth, REST handlers, WebSocket sessions, static web files.

pub mod error;
pub mod hmac;
pub mod identity;
pub mod listener;
pub mod web;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::service::calls::Hub;
use crate::service::identity::IdentityService;

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Identities and tokens.
    pub identity: IdentityService,
    /// Call control.
    pub hub: Hub,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// Demo sign-in open to non-loopback clients (`--demo`).
    pub demo_for_all: bool,
    /// Cancelled when the server drains.
    pub shutdown: CancellationToken,
}

/// Every route, served on both the HTTPS and the loopback HTTP listener.
pub fn router(state: AppState) -> Router {
    let admin_api = Router::new()
        .route("/identities", post(identity::create))
        .route("/identities/{id}/{action}", post(identity::action))
        .route("/identities/{id}", delete(identity::delete))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            hmac::require_hmac,
        ));
    Router::new()
        .merge(admin_api)
        .route("/calling/v1/ws", get(ws::upgrade))
        .route("/", get(web::index))
        .route("/app.js", get(web::app_js))
        .route("/app.css", get(web::app_css))
        .route("/sdk/calling.js", get(web::sdk))
        .route("/.well-known/jwks.json", get(web::jwks))
        .route("/healthz", get(web::healthz))
        .route("/readyz", get(web::readyz))
        .route("/metrics", get(web::metrics))
        .route("/demo/signin", post(web::demo_signin))
        .route("/demo/users", get(web::demo_users))
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed on this route",
            )
        })
        .fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "NotFound",
                "no such route",
            )
        })
        .layer(DefaultBodyLimit::max(hmac::MAX_BODY_BYTES))
        .with_state(state)
}
