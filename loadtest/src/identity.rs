//! Users and tokens from the identity API (ACS shape), requests signed with the deployment's access key exactly as
//! ACS SDKs sign them (`switchboard::http::hmac::sign`).

use serde_json::{Value, json};

/// The identity API's version parameter.
const API_VERSION: &str = "api-version=2023-10-01";

/// Why a user could not be created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The request failed on the way.
    #[error("identity API request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error.
    #[error("identity API answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// The answer lacked the identity or token.
    #[error("identity API answer without identity.id or accessToken.token: {0}")]
    Shape(String),
}

/// A communication user with a `voip` token.
#[derive(Debug, Clone)]
pub struct User {
    /// `8:acs:...` id.
    pub id: String,
    /// User access token (JWT).
    pub token: String,
}

/// Signed identity API client.
#[derive(Clone)]
pub struct IdentityApi {
    http: reqwest::Client,
    base: String,
    host: String,
    key: String,
}

impl IdentityApi {
    /// A client for the server at `base` (`http://host:port`), sending `Host: host` and signing with `key`.
    pub fn new(base: &str, host: &str, key: &str) -> IdentityApi {
        IdentityApi {
            http: reqwest::Client::new(),
            base: base.to_string(),
            host: host.to_string(),
            key: key.to_string(),
        }
    }

    /// `POST /identities {"createTokenWithScopes": ["voip"]}`: a new user and its token.
    pub async fn create_user(&self) -> Result<User, IdentityError> {
        let path = format!("/identities?{API_VERSION}");
        let body = json!({ "createTokenWithScopes": ["voip"] })
            .to_string()
            .into_bytes();
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let headers =
            switchboard::http::hmac::sign("POST", &path, &self.host, &body, &self.key, &date);
        let mut req = self.http.post(format!("{}{}", self.base, path));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        if status != 201 {
            return Err(IdentityError::Status { status, body: text });
        }
        let v: Value =
            serde_json::from_str(&text).map_err(|_| IdentityError::Shape(text.clone()))?;
        match (
            v["identity"]["id"].as_str(),
            v["accessToken"]["token"].as_str(),
        ) {
            (Some(id), Some(token)) => Ok(User {
                id: id.to_string(),
                token: token.to_string(),
            }),
            _ => Err(IdentityError::Shape(text)),
        }
    }

    /// `n` users, created `parallel` requests at a time.
    pub async fn create_users(
        &self,
        n: usize,
        parallel: usize,
    ) -> Result<Vec<User>, IdentityError> {
        use futures_util::StreamExt;
        let results: Vec<Result<User, IdentityError>> = futures_util::stream::iter(0..n)
            .map(|_| self.create_user())
            .buffered(parallel.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }
}
