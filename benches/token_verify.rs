//! Token verification (`switchboard::proto::token`): what every signaling `auth` and every identity API call with
//! a user token costs. ES256 (P-256 ECDSA) verification dominates; signing is measured beside it because the
//! identity API issues tokens. Reports time per token (criterion's `time`), i.e. seconds per verification.

use std::hint::black_box;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use switchboard::proto::token::{Claims, SigningKey, TokenVerifier, VerifyingKey};

/// A fixed P-256 key (PKCS#8 DER, base64), made for tests and benches only.
const BENCH_PKCS8_B64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIV1A1X1LI++4LvezyiM96b4po9uEIOmfezM82I4IDyihRANCAASTbXIcW9AJiyPiyfAqWhEUd0Z9ZRLvWj+ch65ZofSlnQIpv7DfaIlzURHLJrdHPrAvQS0706LXaekOh9Nwhol9";
/// Its public point, uncompressed SEC1 (base64).
const BENCH_POINT_B64: &str =
    "BJNtchxb0AmLI+LJ8CpaERR3Rn1lEu9aP5yHrlmh9KWdAim/sN9oiXNREcsmt0c+sC9BLTvTotdp6Q6H03CGiX0=";
/// Issued-at of the bench token, seconds since the epoch.
const IAT: i64 = 1_800_000_000;

fn keys() -> (SigningKey, TokenVerifier) {
    let b64 = base64::engine::general_purpose::STANDARD;
    // Constants above are valid base64 of a valid key and point.
    let der = b64.decode(BENCH_PKCS8_B64).expect("bench key base64");
    let point = b64.decode(BENCH_POINT_B64).expect("bench point base64");
    let sk = SigningKey::from_pkcs8_der("k1", &der);
    let vk = VerifyingKey::from_sec1_uncompressed("k1", &point).expect("bench point");
    (sk, TokenVerifier::new(vec![vk], Some("res".into())))
}

fn claims() -> Claims {
    Claims {
        sub: "8:acs:res_0f6c7b1e-2c1d-4c55-9a56-1f1b5c9d2e11".into(),
        scp: vec!["voip".into()],
        resource_id: "res".into(),
        iat: IAT,
        exp: IAT + 86_400,
    }
}

fn bench_tokens(c: &mut Criterion) {
    let (sk, verifier) = keys();
    let claims = claims();
    // The key and claims are valid.
    let token = sk.sign(&claims).expect("sign");
    let tampered = {
        let mut t = token.clone().into_bytes();
        let i = t.len() - 5;
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).expect("ascii token")
    };
    let mut g = c.benchmark_group("token");
    g.bench_function("verify_valid", |b| {
        b.iter(|| verifier.verify(black_box(&token), black_box(IAT + 60)))
    });
    g.bench_function("verify_bad_signature", |b| {
        b.iter(|| verifier.verify(black_box(&tampered), black_box(IAT + 60)))
    });
    g.bench_function("verify_malformed", |b| {
        b.iter(|| verifier.verify(black_box("not.a.token"), black_box(IAT + 60)))
    });
    g.bench_function("sign", |b| b.iter(|| sk.sign(black_box(&claims))));
    g.finish();
}

criterion_group!(benches, bench_tokens);
criterion_main!(benches);
