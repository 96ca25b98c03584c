//! Static files (web SDK, calling page), JWKS, health and metrics, and the demo identity-management sample.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::service::identity::IdentityError;
use crate::service::unix_now;

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /` — the calling page.
pub async fn index() -> Response {
    file(
        "text/html; charset=utf-8",
        include_str!("../../web/index.html"),
    )
}

/// `GET /app.js`.
pub async fn app_js() -> Response {
    file(
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    )
}

/// `GET /app.css`.
pub async fn app_css() -> Response {
    file("text/css; charset=utf-8", include_str!("../../web/app.css"))
}

/// `GET /sdk/calling.js` — the web SDK (ES module).
pub async fn sdk() -> Response {
    file(
        "text/javascript; charset=utf-8",
        include_str!("../../web/sdk/calling.js"),
    )
}

/// `GET /.well-known/jwks.json` — public keys that verify user access tokens.
pub async fn jwks(State(s): State<AppState>) -> Response {
    Json(s.identity.jwks()).into_response()
}

/// `GET /healthz` — the process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz` — the store answers and the server is not draining.
pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match s.identity.store().deployment().await {
        Ok(Some(_)) => "ready\n".into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response(),
    }
}

/// `GET /metrics` — Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

fn demo_allowed(s: &AppState, peer: SocketAddr) -> Result<(), ApiError> {
    // The HTTPS listener is dual-stack: 127.0.0.1 arrives as ::ffff:127.0.0.1.
    if s.demo_for_all || peer.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "DemoDisabled",
            "the demo sign-in serves loopback clients only; start the server with --demo to open it",
        ))
    }
}

#[derive(Debug, Deserialize)]
struct SignIn {
    name: String,
}

/// `POST /demo/signin {"name"}` — the sample identity-management service: a name maps to one persistent
/// identity; answers `{"name","communicationUserId","token","expiresOn"}` with a `voip` token.
pub async fn demo_signin(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    demo_allowed(&s, peer)?;
    let body = body.map_err(|e| ApiError::new(e.status(), "InvalidRequestBody", e.body_text()))?;
    let req: SignIn = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("request body must be {{\"name\": string}}: {e}"))
    })?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "name must be 1 to 64 printable characters",
        ));
    }
    let now = unix_now();
    let store = s.identity.store();
    let existing = match store.demo_user(&name).await.map_err(IdentityError::from)? {
        Some(id)
            if store
                .identity(&id)
                .await
                .map_err(IdentityError::from)?
                .is_some() =>
        {
            Some(id)
        }
        _ => None,
    };
    let id = match existing {
        Some(id) => id,
        None => {
            // Two sign-ins with one new name may race: the first mapping wins, the loser's identity is dropped.
            let fresh = s.identity.create_identity(now).await?;
            let id = store
                .claim_demo_user(&name, &fresh, now)
                .await
                .map_err(IdentityError::from)?;
            if id != fresh {
                s.identity.delete(&fresh).await?;
            }
            id
        }
    };
    let t = s
        .identity
        .issue_token(&id, &["voip".to_string()], None, now)
        .await?;
    Ok(Json(json!({ "name": name, "communicationUserId": id, "token": t.token, "expiresOn": super::identity::iso8601(t.expires_on) })).into_response())
}

/// `GET /demo/users` — demo names, their identities, and whether they have a signaling connection open.
pub async fn demo_users(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, ApiError> {
    demo_allowed(&s, peer)?;
    let users = s
        .identity
        .store()
        .demo_users()
        .await
        .map_err(IdentityError::from)?;
    let online = s.hub.online().await;
    let list: Vec<_> = users
        .into_iter()
        .map(|(name, id)| json!({ "name": name, "online": online.contains(&id), "communicationUserId": id }))
        .collect();
    Ok(Json(json!({ "users": list })).into_response())
}
