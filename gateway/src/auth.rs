//! Who a client is: an optional JWT (HS256 with a shared secret, RS256 with a public key,
//! or RS*, PS*, ES256 or ES384 with the key of a JWK Set that its `kid` names) whose `sub`
//! (or `name`) is the user name, and whose `rooms` claim, a list of glob patterns, limits
//! the rooms it may join. Tokens are checked at connect and at each refresh: the
//! signature, `exp` and `nbf` (5 s of leeway), and `aud` and `iss` when the server names
//! them.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ConnectError;
use crate::jwks::{self, Jwks};

/// Verifies tokens with one key, or with the key of a JWK Set that each token names.
pub struct Auth {
    keys: Keys,
    /// The claims checked (exp, nbf, aud, iss); with a JWK Set, the algorithm is the key's.
    validation: Validation,
}

enum Keys {
    One { key: DecodingKey, algorithm: Algorithm },
    Set(Arc<Jwks>),
}

#[derive(Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rooms: Option<RoomsClaim>,
    exp: u64,
}

/// `rooms` may be one pattern or a list of them.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RoomsClaim {
    One(String),
    Many(Vec<String>),
}

/// What a valid token says.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub rooms: RoomGrant,
    /// The token's `exp`, in Unix seconds.
    pub expires_at: u64,
}

/// The rooms a connection may join: all of them, or those matching a pattern.
#[derive(Debug, Clone, Default)]
pub struct RoomGrant(Option<Vec<glob::Pattern>>);

impl RoomGrant {
    pub fn allows(&self, room: &str) -> bool {
        self.0.as_ref().is_none_or(|patterns| patterns.iter().any(|p| p.matches(room)))
    }

    /// True when the grant names some rooms, not all of them.
    pub fn is_restricted(&self) -> bool {
        self.0.is_some()
    }
}

impl Auth {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(secret.len() >= 32, "--auth-jwt-secret must be at least 32 bytes (HS256 needs a 256-bit key)");
        Ok(Self::new(Keys::One { key: DecodingKey::from_secret(secret.as_bytes()), algorithm: Algorithm::HS256 }))
    }

    /// RS256 with a PEM public key.
    pub fn rs256(public_key: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(public_key)
            .with_context(|| format!("cannot read --auth-jwt-public-key {}", public_key.display()))?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .with_context(|| format!("{} is not an RSA public key in PEM form", public_key.display()))?;
        Ok(Self::new(Keys::One { key, algorithm: Algorithm::RS256 }))
    }

    /// The keys of a JWK Set (`--auth-jwks-url`, `--auth-jwks-file`), picked by the token's
    /// `kid`; [`Jwks::keep_fresh`] must run for the set to follow rotations.
    pub fn jwks(jwks: Arc<Jwks>) -> Self {
        Self::new(Keys::Set(jwks))
    }

    /// The JWK Set, when tokens are checked with one.
    pub fn key_set(&self) -> Option<&Arc<Jwks>> {
        match &self.keys {
            Keys::Set(jwks) => Some(jwks),
            Keys::One { .. } => None,
        }
    }

    fn new(keys: Keys) -> Self {
        // With a JWK Set, `algorithms` is set per token to its key's (see `verify`).
        let algorithm = match &keys {
            Keys::One { algorithm, .. } => *algorithm,
            Keys::Set(_) => Algorithm::ES256,
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self { keys, validation }
    }

    /// Accepts only tokens whose `aud` holds `audience` and whose `iss` is `issuer`, for
    /// those that are set.
    pub fn trusting(mut self, audience: Option<&str>, issuer: Option<&str>) -> Self {
        if let Some(audience) = audience {
            self.validation.set_audience(&[audience]);
            self.validation.validate_aud = true;
            self.validation.required_spec_claims.insert("aud".into());
        }
        if let Some(issuer) = issuer {
            self.validation.set_issuer(&[issuer]);
            self.validation.required_spec_claims.insert("iss".into());
        }
        self
    }

    /// Before [`Auth::verify`] at connect: a token naming a kid the JWK Set does not hold
    /// yet waits for the set to be loaded again (see [`Jwks::learn`]).
    pub async fn prepare(&self, token: &str) {
        if let (Keys::Set(set), Ok(RawHeader { kid: Some(kid), .. })) = (&self.keys, header(token)) {
            set.learn(&kid).await;
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, ConnectError> {
        let header = header(token)?;
        let decoded = match &self.keys {
            Keys::One { key, algorithm } => {
                check_algorithm(&header.alg, &[*algorithm], "this server takes")?;
                jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            }
            Keys::Set(set) => {
                check_algorithm(&header.alg, &jwks::ALGORITHMS, "this server's JWKS takes")?;
                let Some(kid) = header.kid else {
                    return Err(ConnectError::TokenInvalid(
                        "the token has no kid, which this server needs to pick a key from its JWKS".into(),
                    ));
                };
                let keys = set.keys();
                let Some(key) = keys.get(&kid) else {
                    // Verified now or refused now: the load runs in the background, for the next try.
                    let asked = if set.want_refresh() {
                        "a refresh of the JWKS was asked for"
                    } else {
                        "a refresh of the JWKS was asked for less than 10 s ago"
                    };
                    return Err(ConnectError::TokenInvalid(format!(
                        "the token's kid {kid:?} is not among this server's {} keys ({asked})",
                        keys.len()
                    )));
                };
                check_algorithm(&header.alg, &[key.algorithm], &format!("key {kid:?} of this server's JWKS is for"))?;
                let mut validation = self.validation.clone();
                validation.algorithms = vec![key.algorithm];
                jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            }
        };
        let claims = decoded.map_err(refusal)?.claims;
        let Some(user) = claims.sub.or(claims.name) else {
            return Err(ConnectError::TokenInvalid("the token names no user (sub or name)".into()));
        };
        let patterns = match claims.rooms {
            None => None,
            Some(RoomsClaim::One(p)) => Some(vec![p]),
            Some(RoomsClaim::Many(ps)) => Some(ps),
        };
        let rooms = match patterns {
            None => RoomGrant(None),
            Some(ps) => {
                RoomGrant(Some(ps.iter().map(|p| glob::Pattern::new(p)).collect::<Result<_, _>>().map_err(|err| {
                    ConnectError::TokenInvalid(format!("the token's rooms claim has a bad pattern: {err}"))
                })?))
            }
        };
        Ok(Identity { user, rooms, expires_at: claims.exp })
    }
}

/// What this server reads of a token's header. It is parsed here rather than by the JWT
/// library, which cannot even parse a header whose algorithm it has none for (`none`), so
/// that such a token is refused by name.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

fn header(token: &str) -> Result<RawHeader, ConnectError> {
    let invalid = |why: &str| ConnectError::TokenInvalid(format!("the token is not a JWT: {why}"));
    let header = token.split('.').next().ok_or_else(|| invalid("no header"))?;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| invalid("its header is not base64url"))?;
    serde_json::from_slice(&header).map_err(|_| invalid("its header is not JSON with an alg (and a string kid)"))
}

/// Refuses a token signed with an algorithm not in `accepted`, `none` included, by name.
fn check_algorithm(alg: &str, accepted: &[Algorithm], who: &str) -> Result<(), ConnectError> {
    if alg.parse().is_ok_and(|parsed| accepted.contains(&parsed)) {
        return Ok(());
    }
    let names: Vec<String> = accepted.iter().map(|a| format!("{a:?}")).collect();
    Err(ConnectError::TokenInvalid(format!(
        "the token's algorithm {alg:?} is not accepted: {who} {} only",
        names.join(", ")
    )))
}

fn refusal(err: jsonwebtoken::errors::Error) -> ConnectError {
    match err.kind() {
        ErrorKind::ExpiredSignature => ConnectError::TokenExpired,
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
            ConnectError::TokenInvalid("the token's signature does not verify with this server's key".into())
        }
        ErrorKind::ImmatureSignature => {
            ConnectError::TokenInvalid("the token is not valid yet (its nbf is in the future)".into())
        }
        ErrorKind::InvalidAudience => {
            ConnectError::TokenInvalid("the token's aud is not this server's (--auth-audience)".into())
        }
        ErrorKind::InvalidIssuer => {
            ConnectError::TokenInvalid("the token's iss is not the issuer this server trusts (--auth-issuer)".into())
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            ConnectError::TokenInvalid(format!("the token has no {claim} claim, which this server requires"))
        }
        _ => ConnectError::TokenInvalid(format!("the token cannot be used: {err}")),
    }
}

/// Mints an HS256 token for development (`roomcast token`).
pub fn mint(secret: &str, user: &str, rooms: Option<&str>, ttl: std::time::Duration) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the system clock is before 1970")?;
    let claims = Claims {
        sub: Some(user.to_owned()),
        name: None,
        rooms: rooms.map(|r| RoomsClaim::Many(r.split(',').map(str::to_owned).collect())),
        exp: (now + ttl).as_secs(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .context("cannot sign the token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::testing::{holding, replace, set, TestKey};
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_minted_token_names_its_user_and_rooms() {
        let token = mint(SECRET, "ada", Some("team-*,lobby"), Duration::from_secs(60)).expect("mint");
        let id = Auth::hs256(SECRET).expect("auth").verify(&token).expect("valid");
        assert_eq!(id.user, "ada");
        assert!(id.rooms.allows("team-red") && id.rooms.allows("lobby"));
        assert!(!id.rooms.allows("admin"));
    }

    #[test]
    fn wrong_key_and_expiry_are_refused_with_their_own_code() {
        let token = mint(SECRET, "ada", None, Duration::from_secs(60)).expect("mint");
        let other = Auth::hs256("another-secret-another-secret-00").expect("auth");
        assert_eq!(other.verify(&token).expect_err("bad signature").code(), "token_invalid");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let claims = Claims { sub: Some("ada".into()), name: None, rooms: None, exp: now - 60 };
        let old =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .expect("encode");
        assert_eq!(Auth::hs256(SECRET).expect("auth").verify(&old).expect_err("expired").code(), "token_expired");
        assert_eq!(
            Auth::hs256(SECRET).expect("auth").verify("not.a.jwt").expect_err("garbage").code(),
            "token_invalid"
        );
    }

    fn signed(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("encode")
    }

    fn refusal(auth: &Auth, token: &str) -> String {
        match auth.verify(token) {
            Err(ConnectError::TokenInvalid(why)) => why,
            other => panic!("expected token_invalid, got {other:?}"),
        }
    }

    #[test]
    fn nbf_aud_iss_and_the_algorithm_are_checked_and_named() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let plain = Auth::hs256(SECRET).expect("auth");
        let early = signed(serde_json::json!({"sub": "ada", "exp": now + 7200, "nbf": now + 3600}));
        assert!(refusal(&plain, &early).contains("not valid yet"), "nbf an hour ahead");
        let leeway = signed(serde_json::json!({"sub": "ada", "exp": now + 60, "nbf": now + 2}));
        assert!(plain.verify(&leeway).is_ok(), "nbf within the leeway");

        let strict = Auth::hs256(SECRET).expect("auth").trusting(Some("roomcast"), Some("https://app.example"));
        let good =
            signed(serde_json::json!({"sub": "ada", "exp": now + 60, "aud": "roomcast", "iss": "https://app.example"}));
        assert_eq!(strict.verify(&good).expect("aud and iss match").user, "ada");
        let other_aud =
            signed(serde_json::json!({"sub": "ada", "exp": now + 60, "aud": "other", "iss": "https://app.example"}));
        assert!(refusal(&strict, &other_aud).contains("aud"));
        let other_iss =
            signed(serde_json::json!({"sub": "ada", "exp": now + 60, "aud": "roomcast", "iss": "https://evil"}));
        assert!(refusal(&strict, &other_iss).contains("iss"));
        let no_aud = signed(serde_json::json!({"sub": "ada", "exp": now + 60, "iss": "https://app.example"}));
        assert!(refusal(&strict, &no_aud).contains("aud"), "{}", refusal(&strict, &no_aud));
        assert!(plain.verify(&other_aud).is_ok(), "aud and iss are not checked unless the server names them");

        // {"alg":"none"} with no signature.
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            engine.encode(br#"{"alg":"none","typ":"JWT"}"#),
            engine.encode(format!(r#"{{"sub":"ada","exp":{}}}"#, now + 60))
        );
        let why = refusal(&plain, &none);
        assert!(why.contains("\"none\" is not accepted") && why.contains("HS256"), "{why}");
    }

    #[test]
    fn short_secrets_are_refused_at_start() {
        assert!(Auth::hs256("short").is_err());
    }

    fn for_a_minute(user: &str) -> serde_json::Value {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        serde_json::json!({"sub": user, "exp": now + 60})
    }

    #[test]
    fn jwks_tokens_verify_with_the_key_their_kid_names_across_a_rotation() {
        let (a, b) = (TestKey::new("a"), TestKey::new("b"));
        let jwks = holding(&set(&[&a]));
        let auth = Auth::jwks(jwks.clone());
        assert_eq!(auth.verify(&a.sign(Some("a"), &for_a_minute("ada"))).expect("kid a").user, "ada");
        let why = refusal(&auth, &b.sign(Some("b"), &for_a_minute("bo")));
        assert!(
            why.contains("kid \"b\" is not among this server's 1 keys (a refresh of the JWKS was asked for)"),
            "{why}"
        );
        // A rotation: the new key is published beside the old one, then the old one retired.
        replace(&jwks, &set(&[&a, &b]));
        assert_eq!(auth.verify(&b.sign(Some("b"), &for_a_minute("bo"))).expect("kid b").user, "bo");
        assert_eq!(auth.verify(&a.sign(Some("a"), &for_a_minute("ada"))).expect("kid a, still").user, "ada");
        replace(&jwks, &set(&[&b]));
        let why = refusal(&auth, &a.sign(Some("a"), &for_a_minute("ada")));
        assert!(why.contains("kid \"a\" is not among") && why.contains("less than 10 s ago"), "{why}");
        // Naming another key's kid does not help.
        let why = refusal(&auth, &a.sign(Some("b"), &for_a_minute("mallory")));
        assert!(why.contains("signature does not verify"), "{why}");
    }

    #[test]
    fn jwks_tokens_without_a_kid_or_for_another_algorithm_are_refused_by_name() {
        let a = TestKey::new("a");
        let secret = "0123456789abcdef0123456789abcdef";
        let mut text: serde_json::Value = serde_json::from_str(&set(&[&a])).expect("JSON");
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        text["keys"].as_array_mut().expect("keys").push(serde_json::json!({"kty": "oct", "kid": "s", "k": k}));
        let auth = Auth::jwks(holding(&text.to_string()));
        assert!(refusal(&auth, &a.sign(None, &for_a_minute("ada"))).contains("the token has no kid"));
        // The set's shared secret is not used: an HS256 token it signed is refused.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("s".into());
        let hs = jsonwebtoken::encode(&header, &for_a_minute("ada"), &EncodingKey::from_secret(secret.as_bytes()))
            .expect("encode");
        let why = refusal(&auth, &hs);
        assert!(why.contains("\"HS256\" is not accepted: this server's JWKS takes RS256"), "{why}");
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = engine.encode(for_a_minute("ada").to_string());
        let none = format!("{}.{body}.", engine.encode(br#"{"alg":"none","kid":"a"}"#));
        assert!(refusal(&auth, &none).contains("algorithm \"none\" is not accepted"));
        let rs = format!("{}.{body}.c2ln", engine.encode(br#"{"alg":"RS256","kid":"a"}"#));
        let why = refusal(&auth, &rs);
        assert!(why.contains("\"RS256\" is not accepted: key \"a\" of this server's JWKS is for ES256 only"), "{why}");
    }

    #[test]
    fn jwks_tokens_keep_the_expiry_audience_and_issuer_checks() {
        let a = TestKey::new("a");
        let auth = Auth::jwks(holding(&set(&[&a]))).trusting(Some("roomcast"), Some("https://idp"));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let token = |aud: &str, exp: u64| {
            a.sign(Some("a"), &serde_json::json!({"sub": "ada", "exp": exp, "aud": aud, "iss": "https://idp"}))
        };
        assert_eq!(auth.verify(&token("roomcast", now + 60)).expect("aud and iss match").user, "ada");
        assert!(refusal(&auth, &token("other", now + 60)).contains("aud"));
        assert_eq!(auth.verify(&token("roomcast", now - 60)).expect_err("expired").code(), "token_expired");
    }
}
