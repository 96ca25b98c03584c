//! Identity REST API, the ACS Identity shape (`api-version=2023-10-01`; spec/acs/identity.md).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::service::calls::HubCommand;
use crate::service::identity::AccessToken;
use crate::service::unix_now;

/// api-versions the ACS Identity SDKs send; the newest is the default of azure-communication-identity 1.5.0.
pub const API_VERSIONS: [&str; 4] = ["2021-03-07", "2022-06-01", "2022-10-01", "2023-10-01"];

fn check_api_version(q: &HashMap<String, String>) -> Result<(), ApiError> {
    match q.get("api-version") {
        Some(v) if API_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(v) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UnsupportedApiVersion",
            format!(
                "api-version {v:?} is not supported; use one of {}",
                API_VERSIONS.join(", ")
            ),
        )),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersion",
            "query parameter api-version is required",
        )),
    }
}

/// Parses an optional JSON body: empty means `T::default()`.
fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestBody",
            format!("request body: {e}"),
        )
    })
}

/// ISO-8601 UTC (`2026-11-29T12:34:18Z`).
pub fn iso8601(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn token_json(t: &AccessToken) -> serde_json::Value {
    json!({ "token": t.token, "expiresOn": iso8601(t.expires_on) })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    create_token_with_scopes: Option<Vec<String>>,
    expires_in_minutes: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IssueBody {
    scopes: Option<Vec<String>>,
    expires_in_minutes: Option<i64>,
}

/// `POST /identities` -> 201 `{"identity":{"id"}, "accessToken"?:{"token","expiresOn"}}`.
pub async fn create(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_api_version(&q)?;
    let b: CreateBody = parse_body(&body)?;
    let now = unix_now();
    // Validate before creating, so a bad request leaves no identity behind.
    if let Some(scopes) = &b.create_token_with_scopes
        && !scopes.is_empty()
    {
        crate::service::identity::validate_token_request(scopes, b.expires_in_minutes)?;
    }
    let id = s.identity.create_identity(now).await?;
    let mut out = json!({ "identity": { "id": id } });
    if let Some(scopes) = b.create_token_with_scopes.filter(|s| !s.is_empty()) {
        let t = s
            .identity
            .issue_token(&id, &scopes, b.expires_in_minutes, now)
            .await?;
        out["accessToken"] = token_json(&t);
    }
    metrics::counter!("switchboard_identities_created_total").increment(1);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `POST /identities/{id}/:issueAccessToken` (200 `{"token","expiresOn"}`) and `/:revokeAccessTokens` (204).
pub async fn action(
    State(s): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_api_version(&q)?;
    match action.as_str() {
        ":issueAccessToken" => {
            let b: IssueBody = parse_body(&body)?;
            let scopes = b.scopes.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestBody",
                    "field \"scopes\" is required",
                )
            })?;
            let t = s
                .identity
                .issue_token(&id, &scopes, b.expires_in_minutes, unix_now())
                .await?;
            Ok((StatusCode::OK, Json(token_json(&t))).into_response())
        }
        ":revokeAccessTokens" => {
            s.identity.revoke(&id, unix_now()).await?;
            s.hub.send(HubCommand::Kick {
                identity: id,
                code: 4401,
                reason: "token revoked".into(),
            });
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperation",
            format!(
                "unknown operation {:?}; use :issueAccessToken or :revokeAccessTokens",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// `DELETE /identities/{id}` -> 204.
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    check_api_version(&q)?;
    s.identity.delete(&id).await?;
    s.hub.send(HubCommand::Kick {
        identity: id,
        code: 4401,
        reason: "identity deleted".into(),
    });
    Ok(StatusCode::NO_CONTENT.into_response())
}
