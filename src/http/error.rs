//! The one API error type: an HTTP status and an ACS-shaped body `{"error":{"code","message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::service::identity::IdentityError;

/// An error answered to a REST client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `IdentityNotFound`.
    pub code: &'static str,
    /// What is wrong, for humans.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with code `BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401 with code `Unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> ApiError {
        let msg = e.to_string();
        match e {
            IdentityError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "IdentityNotFound", msg)
            }
            IdentityError::BadId(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "InvalidIdentity", msg)
            }
            IdentityError::UnknownScope(_) | IdentityError::NoScopes => {
                ApiError::new(StatusCode::BAD_REQUEST, "InvalidScope", msg)
            }
            IdentityError::BadExpiry(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "InvalidExpiresInMinutes", msg)
            }
            _ => {
                tracing::error!(error = %msg, "identity service failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "internal error",
                )
            }
        }
    }
}
