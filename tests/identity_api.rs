//! Identity REST API (ACS Identity shape): every success and error path over real HTTP.

mod common;

use common::{API, percent, server};
use serde_json::json;

#[tokio::test]
async fn create_issue_revoke_delete() {
    let s = server().await;
    let (st, v) = s
        .signed("POST", &format!("/identities?{API}"), None, None)
        .await;
    assert_eq!(st, 201);
    let id = v["identity"]["id"].as_str().unwrap().to_string();
    let rid = s.running.identity.resource_id().to_string();
    assert!(id.starts_with(&format!("8:acs:{rid}_")), "{id}");
    assert!(v.get("accessToken").is_none());

    let (st, v) = s
        .signed(
            "POST",
            &format!("/identities?{API}"),
            Some(json!({"createTokenWithScopes": ["voip"], "expiresInMinutes": 60})),
            None,
        )
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        v["accessToken"]["token"]
            .as_str()
            .unwrap()
            .split('.')
            .count(),
        3
    );
    assert!(
        v["accessToken"]["expiresOn"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let enc = percent(&id);
    let (st, v) = s
        .signed(
            "POST",
            &format!("/identities/{enc}/:issueAccessToken?{API}"),
            Some(json!({"scopes": ["chat", "voip"]})),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["token"].is_string() && v["expiresOn"].is_string());

    let (st, _) = s
        .signed(
            "POST",
            &format!("/identities/{enc}/:revokeAccessTokens?{API}"),
            None,
            None,
        )
        .await;
    assert_eq!(st, 204);
    let (st, _) = s
        .signed("DELETE", &format!("/identities/{enc}?{API}"), None, None)
        .await;
    assert_eq!(st, 204);
    let (st, v) = s
        .signed("DELETE", &format!("/identities/{enc}?{API}"), None, None)
        .await;
    assert_eq!(st, 404);
    assert_eq!(v["error"]["code"], "IdentityNotFound");
    s.running.shutdown().await;
}

#[tokio::test]
async fn api_version_is_checked() {
    let s = server().await;
    let (st, v) = s
        .signed("POST", "/identities?api-version=2099-01-01", None, None)
        .await;
    assert_eq!(st, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2099-01-01"),
        "{v}"
    );
    let (st, v) = s.signed("POST", "/identities", None, None).await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "MissingApiVersion");
    s.running.shutdown().await;
}

#[tokio::test]
async fn hmac_failures_are_401_with_json_body() {
    let s = server().await;
    let path = format!("/identities?{API}");
    let wrong = base64_of(&[7u8; 64]);
    let (st, v) = s.signed("POST", &path, None, Some(&wrong)).await;
    assert_eq!(st, 401);
    assert!(
        v["error"]["code"].is_string()
            && v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("signature"),
        "{v}"
    );

    // Date 16 minutes off.
    let (st, v) = s
        .signed_raw("POST", &path, Vec::new(), None, -16 * 60)
        .await;
    assert_eq!(st, 401);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("15 minutes"),
        "{v}"
    );

    // Unsigned.
    let resp = s
        .http
        .post(format!("{}{}", s.base, path))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization"),
        "{v}"
    );

    // Body changed after signing.
    let host = s.running.http_addr.to_string();
    let headers =
        switchboard::http::hmac::sign("POST", &path, &host, b"{}", &s.key, &common::http_date(0));
    let mut req = s.http.post(format!("{}{}", s.base, path));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req
        .body(r#"{"createTokenWithScopes":["voip"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Signed for another Host.
    let headers = switchboard::http::hmac::sign(
        "POST",
        &path,
        "evil.example:443",
        b"",
        &s.key,
        &common::http_date(0),
    );
    let mut req = s.http.post(format!("{}{}", s.base, path));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 401);
    s.running.shutdown().await;
}

#[tokio::test]
async fn secondary_key_and_rotation() {
    let s = server().await;
    let store = s.running.identity.store().clone();
    let dep = store.deployment().await.unwrap().unwrap();
    let (st, _) = s
        .signed(
            "POST",
            &format!("/identities?{API}"),
            None,
            Some(&dep.secondary_key),
        )
        .await;
    assert_eq!(st, 201);
    let rotated = switchboard::service::deployment::rotate_key(
        &store,
        switchboard::service::store::KeyKind::Primary,
    )
    .await
    .unwrap();
    let (st, _) = s
        .signed(
            "POST",
            &format!("/identities?{API}"),
            None,
            Some(&dep.primary_key),
        )
        .await;
    assert_eq!(st, 401, "the replaced key must stop working");
    let (st, _) = s
        .signed(
            "POST",
            &format!("/identities?{API}"),
            None,
            Some(&rotated.primary_key),
        )
        .await;
    assert_eq!(st, 201);
    s.running.shutdown().await;
}

#[tokio::test]
async fn validation_errors_say_which() {
    let s = server().await;
    let id = s.create_identity().await;
    let enc = percent(&id);
    let issue = format!("/identities/{enc}/:issueAccessToken?{API}");
    for (body, needle, code) in [
        (
            json!({"scopes": ["voip"], "expiresInMinutes": 59}),
            "expiresInMinutes",
            "InvalidExpiresInMinutes",
        ),
        (
            json!({"scopes": ["voip"], "expiresInMinutes": 1441}),
            "1441",
            "InvalidExpiresInMinutes",
        ),
        (
            json!({"scopes": ["voip", "admin"]}),
            "admin",
            "InvalidScope",
        ),
        (json!({"scopes": []}), "at least one scope", "InvalidScope"),
        (
            json!({"scopes": "voip"}),
            "request body",
            "InvalidRequestBody",
        ),
        (json!({}), "scopes", "InvalidRequestBody"),
    ] {
        let (st, v) = s.signed("POST", &issue, Some(body.clone()), None).await;
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    let (st, v) = s
        .signed(
            "POST",
            &format!("/identities?{API}"),
            Some(json!({"createTokenWithScopes": ["voip"], "expiresInMinutes": 5})),
            None,
        )
        .await;
    assert_eq!(st, 400, "{v}");

    let (st, v) = s
        .signed_raw("POST", &issue, b"{not json".to_vec(), None, 0)
        .await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "InvalidRequestBody");

    let rid = s.running.identity.resource_id().to_string();
    let unknown = percent(&format!("8:acs:{rid}_00000000-0000-4000-8000-000000000000"));
    let (st, v) = s
        .signed(
            "POST",
            &format!("/identities/{unknown}/:issueAccessToken?{API}"),
            Some(json!({"scopes": ["voip"]})),
            None,
        )
        .await;
    assert_eq!(st, 404, "{v}");
    assert_eq!(v["error"]["code"], "IdentityNotFound");
    let (st, v) = s
        .signed(
            "POST",
            &format!("/identities/{unknown}/:revokeAccessTokens?{API}"),
            None,
            None,
        )
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s
        .signed(
            "DELETE",
            &format!("/identities/8%3Aacs%3Aother_x?{API}"),
            None,
            None,
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["code"], "InvalidIdentity");
    let (st, v) = s
        .signed(
            "POST",
            &format!("/identities/{enc}/:explode?{API}"),
            None,
            None,
        )
        .await;
    assert_eq!(st, 404, "{v}");
    s.running.shutdown().await;
}

#[tokio::test]
async fn jwks_health_metrics_and_files() {
    let s = server().await;
    let jwks: serde_json::Value = s
        .http
        .get(format!("{}/.well-known/jwks.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let k = &jwks["keys"][0];
    assert_eq!(
        (k["kty"].as_str(), k["crv"].as_str(), k["alg"].as_str()),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    assert!(k["kid"].is_string());
    for (path, needle) in [
        ("/healthz", "ok"),
        ("/readyz", "ready"),
        ("/sdk/calling.js", "CallClient"),
        ("/", "<html"),
    ] {
        let resp = s
            .http
            .get(format!("{}{}", s.base, path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        assert!(resp.text().await.unwrap().contains(needle), "{path}");
    }
    let resp = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let cs_file = std::fs::read_to_string(s.dir.join("connection-string.txt")).unwrap();
    assert!(cs_file.starts_with("endpoint=https://127.0.0.1:") && cs_file.contains(";accesskey="));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(s.dir.join("connection-string.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert!(s.dir.join("tls/cert.pem").exists());
    s.running.shutdown().await;
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn demo_sign_in_over_https_loopback_and_concurrently() {
    let s = server().await;
    let cert =
        reqwest::Certificate::from_pem(&std::fs::read(&s.running.cert_path).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(cert)
        .build()
        .unwrap();
    let url = format!(
        "https://127.0.0.1:{}/demo/signin",
        s.running.https_addr.port()
    );
    let resp = https
        .post(&url)
        .body(r#"{"name":"Carol"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "127.0.0.1 over the dual-stack HTTPS listener is loopback"
    );

    let calls = (0..8).map(|_| {
        s.http
            .post(format!("{}/demo/signin", s.base))
            .body(r#"{"name":"Dora"}"#)
            .send()
    });
    let mut ids = std::collections::HashSet::new();
    for r in futures_util::future::join_all(calls).await {
        let v: serde_json::Value = r.unwrap().json().await.unwrap();
        ids.insert(v["communicationUserId"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "one name maps to one identity: {ids:?}");

    let resp = s
        .http
        .get(format!("{}/identities?{API}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "MethodNotAllowed");
    let resp = s
        .http
        .post(format!("{}/demo/signin", s.base))
        .body(vec![b'x'; 2 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert!(resp.json::<serde_json::Value>().await.unwrap()["error"]["message"].is_string());
    s.running.shutdown().await;
}
