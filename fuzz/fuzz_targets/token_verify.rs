//! Fuzzes user access token verification (`TokenVerifier::verify`) with one fixed ES256 key, `kid` "k1".
//!
//! Two input modes, picked by the first byte:
//! - a control byte (< 0x20, never the first byte of a token) selects *structured* mode: the rest drives `arbitrary`
//!   to build a token from parts (header JSON with a chosen `alg`/`kid`, claims JSON, signature made in this run with
//!   the key, with another key, over another message, mutated, re-encoded, or arbitrary bytes), so runs get past the
//!   base64 and JSON layers to the signature and claim checks;
//! - anything else is *raw* mode: the bytes (lossily as UTF-8: `verify` takes any `&str`, e.g. the `token` string of
//!   an `auth` frame) are the token. The seed tokens land here.
//!
//! Oracle: `verify` never panics, and returns `Ok` only for a token signed with the key: in structured mode exactly
//! the string we signed in this run, in raw mode only `VALID_TOKEN` (signed once with the key, also a seed). An `Ok`
//! must also carry the signed claims and respect `exp`/`iat`/`sub`/resource checks. In structured mode a well-formed
//! token we signed must be accepted exactly when its claims pass those checks (no false refusals).
#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use switchboard::proto::token::{Claims, EXP_LEEWAY_SECS, TokenVerifier, VerifyingKey};

/// The P-256 test key of `src/proto/token.rs` (PKCS#8 DER, base64), made for tests only.
const KEY_PKCS8_B64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIV1A1X1LI++4LvezyiM96b4po9uEIOmfezM82I4IDyihRANCAASTbXIcW9AJiyPiyfAqWhEUd0Z9ZRLvWj+ch65ZofSlnQIpv7DfaIlzURHLJrdHPrAvQS0706LXaekOh9Nwhol9";
/// Its public point, uncompressed SEC1.
const KEY_POINT_B64: &str =
    "BJNtchxb0AmLI+LJ8CpaERR3Rn1lEu9aP5yHrlmh9KWdAim/sN9oiXNREcsmt0c+sC9BLTvTotdp6Q6H03CGiX0=";
/// Another P-256 key, made for this target only: tokens it signs must be refused.
const OTHER_PKCS8_B64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDVlQKPmu5fTiWLMDQanr/dJItaEtZPDgMfC/EZ99Sn6hRANCAAReN2qGCorQXOKU2GgPhpaHVuYBaUEy0ACSbPduHx9xaP7gogrOyfqk1SLVFIACrUwGtGKOBm03VsM3nHvRXSoZ";
const KID: &str = "k1";
const RESOURCE_ID: &str = "5b0e6c1a-3f2d-4e8b-9a71-2c4d8e0f1a2b";
/// The clock for raw mode (June 2025).
const NOW: i64 = 1_750_000_000;
/// A token signed with the key (header `{"typ":"JWT","alg":"ES256","kid":"k1"}`, iat 1700000000, exp 4102444800,
/// `resourceId` RESOURCE_ID); `seeds/token_verify/valid-es256` holds the same text.
const VALID_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiI4OmFjczo1YjBlNmMxYS0zZjJkLTRlOGItOWE3MS0yYzRkOGUwZjFhMmJfMWYyYzNkNGUtNWE2Yi00YzdkLThlOWYtMGExYjJjM2Q0ZTVmIiwic2NwIjpbInZvaXAiXSwicmVzb3VyY2VJZCI6IjViMGU2YzFhLTNmMmQtNGU4Yi05YTcxLTJjNGQ4ZTBmMWEyYiIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MTAyNDQ0ODAwfQ.YCWy58DsNVVq7pLzmWxN7U85AKjMP3j2joXJ-7MWNkNV12sbg12zi0Ay48gTu7K352zpK8yB5SXw_DLLEArjqw";

struct Fixture {
    /// Refuses tokens of other deployments.
    strict: TokenVerifier,
    /// No resource id check.
    lax: TokenVerifier,
    fixed: EcdsaKeyPair,
    asn1: EcdsaKeyPair,
    other: EcdsaKeyPair,
    rng: SystemRandom,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // The constants above are fixed and valid, so these cannot fail; if they do the target is broken, not the code.
    let der = STANDARD.decode(KEY_PKCS8_B64).expect("key constant");
    let point = STANDARD.decode(KEY_POINT_B64).expect("point constant");
    let vk = VerifyingKey::from_sec1_uncompressed(KID, &point).expect("point constant");
    let fx = Fixture {
        strict: TokenVerifier::new(vec![vk.clone()], Some(RESOURCE_ID.into())),
        lax: TokenVerifier::new(vec![vk], None),
        fixed: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .expect("key constant"),
        asn1: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
            .expect("key constant"),
        other: EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &STANDARD.decode(OTHER_PKCS8_B64).expect("key constant"),
        )
        .expect("key constant"),
        rng: SystemRandom::new(),
    };
    // The acceptance path must be reachable, or the oracle below proves nothing.
    fx.strict
        .verify(VALID_TOKEN, NOW)
        .expect("VALID_TOKEN must verify");
    fx
});

fuzz_target!(|data: &[u8]| {
    let fx = &*FIXTURE;
    match data.first() {
        Some(&tag) if tag < 0x20 => {
            if let Ok(spec) = Spec::arbitrary_take_rest(Unstructured::new(&data[1..])) {
                structured(fx, &spec);
            }
        }
        _ => raw(fx, &String::from_utf8_lossy(data)),
    }
});

fn raw(fx: &Fixture, token: &str) {
    for verifier in [&fx.strict, &fx.lax] {
        if let Ok(claims) = verifier.verify(token, NOW) {
            assert_eq!(
                token, VALID_TOKEN,
                "accepted a token never signed with the key: {claims:?}"
            );
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Spec {
    header: HeaderSpec,
    header_enc: Enc,
    claims: ClaimsSpec,
    claims_enc: Enc,
    sig: SigSpec,
    shape: Shape,
    now: Now,
    strict: bool,
}

/// How a part is written into the token.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Enc {
    UrlNoPad,
    UrlPad,
    Standard,
    /// Not encoded at all.
    Plain,
}

#[derive(Arbitrary, Debug)]
enum HeaderSpec {
    Fields {
        alg: Alg,
        kid: Kid,
        typ: Option<String>,
        extra: Vec<(HeaderName, Json)>,
    },
    /// `{"alg":<first>,"alg":"ES256","kid":"k1"}`: which duplicate wins?
    DuplicateAlg(Alg),
    Json(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Alg {
    Es256,
    Lowercase,
    Es384,
    Es512,
    Hs256,
    Rs256,
    Ps256,
    EdDsa,
    None,
    NoneCapitalised,
    Empty,
    Other(String),
    Missing,
    NotString(Json),
}

#[derive(Arbitrary, Debug)]
enum Kid {
    K1,
    Unknown,
    Empty,
    Other(String),
    Missing,
    NotString(Json),
}

#[derive(Arbitrary, Debug)]
enum HeaderName {
    Jwk,
    Jku,
    X5u,
    X5c,
    Crit,
    B64,
    Cty,
    Enc,
    Zip,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum ClaimsSpec {
    Fields {
        sub: Field<Sub>,
        scp: Field<Vec<String>>,
        resource_id: Field<Rid>,
        iat: Field<Time>,
        exp: Field<Time>,
        extra: Vec<(ClaimName, Json)>,
    },
    Json(String),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Field<T> {
    Value(T),
    Missing,
    WrongType(Json),
}

#[derive(Arbitrary, Debug)]
enum Sub {
    Identity,
    Empty,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Rid {
    Ours,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// Seconds from the run's `now`.
    Relative(i32),
    Absolute(i64),
    Float(f64),
    Huge(u64),
}

#[derive(Arbitrary, Debug)]
enum ClaimName {
    Nbf,
    Aud,
    Iss,
    Jti,
    Other(String),
}

#[derive(Arbitrary, Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Array(Vec<String>),
    Object(Vec<(String, i64)>),
}

#[derive(Arbitrary, Debug)]
enum SigSpec {
    /// ES256 with the key over the exact signing input: the only way to a legitimate `Ok`.
    Valid,
    ValidFlipped {
        at: u8,
        xor: u8,
    },
    ValidTruncated(u8),
    ValidExtended(Vec<u8>),
    /// The right signature, DER-encoded instead of JWS's fixed `r || s`.
    ValidDer,
    ValidPadded,
    ValidStandardAlphabet,
    /// ES256 with another key.
    OtherKey,
    /// ES256 with the key, over another message (e.g. the claims before tampering).
    OtherMessage(Vec<u8>),
    Zero,
    Bytes(Vec<u8>),
    Text(String),
}

/// Changes made after signing.
#[derive(Arbitrary, Debug)]
enum Shape {
    Normal,
    Prefix(String),
    Suffix(String),
    ExtraPart(String),
    NoSignaturePart,
    SurroundingSpace,
}

#[derive(Arbitrary, Debug)]
enum Now {
    Fixed,
    Relative(i32),
    Absolute(i64),
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::from(*b),
            Json::Int(i) => Value::from(*i),
            Json::UInt(u) => Value::from(*u),
            Json::Float(f) => Value::from(*f),
            Json::Str(s) => Value::from(s.as_str()),
            Json::Array(a) => Value::from(a.clone()),
            Json::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), Value::from(*v)))
                    .collect(),
            ),
        }
    }
}

impl Alg {
    fn value(&self) -> Option<Value> {
        let s = match self {
            Alg::Es256 => "ES256",
            Alg::Lowercase => "es256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::EdDsa => "EdDSA",
            Alg::None => "none",
            Alg::NoneCapitalised => "None",
            Alg::Empty => "",
            Alg::Other(s) => s,
            Alg::Missing => return None,
            Alg::NotString(j) => return Some(j.value()),
        };
        Some(Value::from(s))
    }
}

impl HeaderName {
    fn name(&self) -> &str {
        match self {
            HeaderName::Jwk => "jwk",
            HeaderName::Jku => "jku",
            HeaderName::X5u => "x5u",
            HeaderName::X5c => "x5c",
            HeaderName::Crit => "crit",
            HeaderName::B64 => "b64",
            HeaderName::Cty => "cty",
            HeaderName::Enc => "enc",
            HeaderName::Zip => "zip",
            HeaderName::Other(s) => s,
        }
    }
}

impl ClaimName {
    fn name(&self) -> &str {
        match self {
            ClaimName::Nbf => "nbf",
            ClaimName::Aud => "aud",
            ClaimName::Iss => "iss",
            ClaimName::Jti => "jti",
            ClaimName::Other(s) => s,
        }
    }
}

impl Time {
    fn value(&self, now: i64) -> Value {
        match self {
            Time::Relative(d) => Value::from(now.saturating_add(i64::from(*d))),
            Time::Absolute(t) => Value::from(*t),
            Time::Float(f) => Value::from(*f),
            Time::Huge(u) => Value::from(*u),
        }
    }

    /// The value as `Claims` reads it, when it is a plain i64.
    fn as_i64(&self, now: i64) -> Option<i64> {
        match self {
            Time::Relative(d) => Some(now.saturating_add(i64::from(*d))),
            Time::Absolute(t) => Some(*t),
            Time::Float(_) | Time::Huge(_) => None,
        }
    }
}

fn put<T>(
    map: &mut Map<String, Value>,
    name: &str,
    field: &Field<T>,
    value: impl FnOnce(&T) -> Value,
) {
    match field {
        Field::Value(v) => {
            map.insert(name.into(), value(v));
        }
        Field::Missing => {}
        Field::WrongType(j) => {
            map.insert(name.into(), j.value());
        }
    }
}

fn header_bytes(spec: &HeaderSpec) -> Vec<u8> {
    match spec {
        HeaderSpec::Fields {
            alg,
            kid,
            typ,
            extra,
        } => {
            let mut m = Map::new();
            for (name, value) in extra {
                m.insert(name.name().into(), value.value());
            }
            if let Some(t) = typ {
                m.insert("typ".into(), Value::from(t.as_str()));
            }
            if let Some(a) = alg.value() {
                m.insert("alg".into(), a);
            }
            let kid = match kid {
                Kid::K1 => Some(Value::from(KID)),
                Kid::Unknown => Some(Value::from("k2")),
                Kid::Empty => Some(Value::from("")),
                Kid::Other(s) => Some(Value::from(s.as_str())),
                Kid::Missing => None,
                Kid::NotString(j) => Some(j.value()),
            };
            if let Some(k) = kid {
                m.insert("kid".into(), k);
            }
            Value::Object(m).to_string().into_bytes()
        }
        HeaderSpec::DuplicateAlg(first) => {
            let first = first
                .value()
                .map(|v| format!("\"alg\":{v},"))
                .unwrap_or_default();
            format!("{{{first}\"alg\":\"ES256\",\"kid\":\"{KID}\"}}").into_bytes()
        }
        HeaderSpec::Json(s) => s.clone().into_bytes(),
        HeaderSpec::Bytes(b) => b.clone(),
    }
}

fn claims_bytes(spec: &ClaimsSpec, now: i64) -> Vec<u8> {
    match spec {
        ClaimsSpec::Fields {
            sub,
            scp,
            resource_id,
            iat,
            exp,
            extra,
        } => {
            let mut m = Map::new();
            for (name, value) in extra {
                m.insert(name.name().into(), value.value());
            }
            put(&mut m, "sub", sub, |s| match s {
                Sub::Identity => Value::from(format!(
                    "8:acs:{RESOURCE_ID}_1f2c3d4e-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
                )),
                Sub::Empty => Value::from(""),
                Sub::Other(s) => Value::from(s.as_str()),
            });
            put(&mut m, "scp", scp, |v| Value::from(v.clone()));
            put(&mut m, "resourceId", resource_id, |r| match r {
                Rid::Ours => Value::from(RESOURCE_ID),
                Rid::Other(s) => Value::from(s.as_str()),
            });
            put(&mut m, "iat", iat, |t| t.value(now));
            put(&mut m, "exp", exp, |t| t.value(now));
            Value::Object(m).to_string().into_bytes()
        }
        ClaimsSpec::Json(s) => s.clone().into_bytes(),
        ClaimsSpec::Bytes(b) => b.clone(),
    }
}

fn encode(bytes: &[u8], enc: Enc) -> String {
    match enc {
        Enc::UrlNoPad => URL_SAFE_NO_PAD.encode(bytes),
        Enc::UrlPad => URL_SAFE.encode(bytes),
        Enc::Standard => STANDARD.encode(bytes),
        Enc::Plain => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Whether the claims of a well-formed, correctly signed token pass `verify`'s checks, when the spec says so
/// unambiguously (plain fields, integer times, no extra claims); `None` when we don't predict.
fn expected_acceptance(spec: &Spec, now: i64) -> Option<bool> {
    let HeaderSpec::Fields {
        alg: Alg::Es256,
        kid: Kid::K1,
        extra,
        ..
    } = &spec.header
    else {
        return None;
    };
    let ClaimsSpec::Fields {
        sub: Field::Value(sub),
        scp: Field::Value(_),
        resource_id: Field::Value(rid),
        iat,
        exp,
        extra: claims_extra,
    } = &spec.claims
    else {
        return None;
    };
    let (Field::Value(iat), Field::Value(exp)) = (iat, exp) else {
        return None;
    };
    let (Some(iat), Some(exp)) = (iat.as_i64(now), exp.as_i64(now)) else {
        return None;
    };
    if !extra.is_empty()
        || !claims_extra.is_empty()
        || spec.header_enc != Enc::UrlNoPad
        || spec.claims_enc != Enc::UrlNoPad
    {
        return None;
    }
    let sub_ok = match sub {
        Sub::Identity => true,
        Sub::Empty => false,
        Sub::Other(s) => !s.is_empty(),
    };
    let rid_ok = !spec.strict
        || match rid {
            Rid::Ours => true,
            Rid::Other(s) => s == RESOURCE_ID,
        };
    let time_ok = now <= exp.saturating_add(EXP_LEEWAY_SECS)
        && iat <= exp
        && iat <= now.saturating_add(EXP_LEEWAY_SECS);
    Some(sub_ok && rid_ok && time_ok)
}

fn structured(fx: &Fixture, spec: &Spec) {
    let now = match spec.now {
        Now::Fixed => NOW,
        Now::Relative(d) => NOW.saturating_add(i64::from(d)),
        Now::Absolute(t) => t,
    };
    let header = encode(&header_bytes(&spec.header), spec.header_enc);
    let claims = encode(&claims_bytes(&spec.claims, now), spec.claims_enc);
    let signing_input = format!("{header}.{claims}");

    // Signing cannot fail for a valid key pair; a failure would be aws-lc's, so it ends the run loudly.
    let sign = |key: &EcdsaKeyPair, msg: &[u8]| {
        key.sign(&fx.rng, msg)
            .expect("ECDSA signing")
            .as_ref()
            .to_vec()
    };
    let valid = || sign(&fx.fixed, signing_input.as_bytes());
    // The token we signed, when this run signs one: the only string `verify` may accept.
    let mut ours: Option<String> = None;
    let mut ours_from = |sig: Vec<u8>| {
        let t = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&sig));
        ours = Some(t);
        sig
    };
    let signature = match &spec.sig {
        SigSpec::Valid => URL_SAFE_NO_PAD.encode(ours_from(valid())),
        SigSpec::ValidFlipped { at, xor } => {
            let mut s = valid();
            let i = usize::from(*at) % s.len();
            s[i] ^= if *xor == 0 { 1 } else { *xor };
            URL_SAFE_NO_PAD.encode(s)
        }
        SigSpec::ValidTruncated(n) => {
            let mut s = valid();
            s.truncate(usize::from(*n) % s.len());
            URL_SAFE_NO_PAD.encode(s)
        }
        SigSpec::ValidExtended(more) => {
            let mut s = ours_from(valid());
            s.extend_from_slice(more);
            URL_SAFE_NO_PAD.encode(s)
        }
        SigSpec::ValidDer => URL_SAFE_NO_PAD.encode(sign(&fx.asn1, signing_input.as_bytes())),
        SigSpec::ValidPadded => URL_SAFE.encode(ours_from(valid())),
        SigSpec::ValidStandardAlphabet => STANDARD.encode(ours_from(valid())),
        SigSpec::OtherKey => URL_SAFE_NO_PAD.encode(sign(&fx.other, signing_input.as_bytes())),
        SigSpec::OtherMessage(msg) => {
            let s = sign(&fx.fixed, msg);
            if msg.as_slice() == signing_input.as_bytes() {
                ours_from(s.clone());
            }
            URL_SAFE_NO_PAD.encode(s)
        }
        SigSpec::Zero => URL_SAFE_NO_PAD.encode([0u8; 64]),
        SigSpec::Bytes(b) => URL_SAFE_NO_PAD.encode(b),
        SigSpec::Text(t) => t.clone(),
    };
    let token = match &spec.shape {
        Shape::Normal => format!("{signing_input}.{signature}"),
        Shape::Prefix(p) => format!("{p}{signing_input}.{signature}"),
        Shape::Suffix(s) => format!("{signing_input}.{signature}{s}"),
        Shape::ExtraPart(p) => format!("{signing_input}.{signature}.{p}"),
        Shape::NoSignaturePart => signing_input.clone(),
        Shape::SurroundingSpace => format!(" {signing_input}.{signature}\n"),
    };
    let legit = ours.as_deref() == Some(token.as_str());

    let verifier = if spec.strict { &fx.strict } else { &fx.lax };
    let result = verifier.verify(&token, now);
    if let Ok(claims) = &result {
        assert!(
            legit,
            "accepted a token not signed with the key in this run: {token:?} -> {claims:?}"
        );
        check_accepted(&token, claims, now, spec.strict);
    }
    if legit
        && matches!(spec.shape, Shape::Normal)
        && let Some(expected) = expected_acceptance(spec, now)
    {
        assert_eq!(
            result.is_ok(),
            expected,
            "verify({token:?}, {now}) = {result:?}"
        );
    }
}

/// An accepted token's header says ES256/k1, its claims are the signed ones, and they pass the documented checks.
fn check_accepted(token: &str, claims: &Claims, now: i64, strict: bool) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token:?}");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts[0])
            .expect("header is base64url"),
    )
    .expect("header is JSON");
    assert_eq!(header["alg"], "ES256", "{token:?}");
    assert_eq!(header["kid"], KID, "{token:?}");
    let signed: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("claims are base64url"),
    )
    .expect("claims are JSON");
    let signed: Claims = serde_json::from_value(signed).expect("claims have the Claims shape");
    assert_eq!(
        &signed, claims,
        "returned claims differ from the signed ones"
    );
    assert!(!claims.sub.is_empty());
    assert!(
        now <= claims.exp.saturating_add(EXP_LEEWAY_SECS),
        "expired token accepted"
    );
    assert!(claims.iat <= claims.exp, "iat after exp accepted");
    assert!(
        claims.iat <= now.saturating_add(EXP_LEEWAY_SECS),
        "future iat accepted"
    );
    if strict {
        assert_eq!(
            claims.resource_id, RESOURCE_ID,
            "other deployment's token accepted"
        );
    }
}
