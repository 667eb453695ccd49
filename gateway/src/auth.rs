//! Who a client is: an optional JWT (HS256 with a shared secret, or RS256 with a public
//! key) whose `sub` (or `name`) is the user name, and whose `rooms` claim, a list of glob
//! patterns, limits the rooms it may join. Tokens are checked at connect and at each
//! refresh: the signature, `exp` and `nbf` (5 s of leeway), and `aud` and `iss` when the
//! server names them.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ConnectError;

/// Verifies tokens with one key.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
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
        Ok(Self::new(DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256))
    }

    /// RS256 with a PEM public key.
    pub fn rs256(public_key: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(public_key)
            .with_context(|| format!("cannot read --auth-jwt-public-key {}", public_key.display()))?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .with_context(|| format!("{} is not an RSA public key in PEM form", public_key.display()))?;
        Ok(Self::new(key, Algorithm::RS256))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Self { key, validation, algorithm }
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

    pub fn verify(&self, token: &str) -> Result<Identity, ConnectError> {
        self.check_algorithm(token)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|err| match err.kind() {
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
                ErrorKind::InvalidIssuer => ConnectError::TokenInvalid(
                    "the token's iss is not the issuer this server trusts (--auth-issuer)".into(),
                ),
                ErrorKind::MissingRequiredClaim(claim) => {
                    ConnectError::TokenInvalid(format!("the token has no {claim} claim, which this server requires"))
                }
                _ => ConnectError::TokenInvalid(format!("the token cannot be used: {err}")),
            })?;
        let claims = data.claims;
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

impl Auth {
    /// Refuses a token signed with another algorithm than this server's, `none` included,
    /// by name: the JWT library cannot even parse a header it has no algorithm for.
    fn check_algorithm(&self, token: &str) -> Result<(), ConnectError> {
        let invalid = |why: &str| ConnectError::TokenInvalid(format!("the token is not a JWT: {why}"));
        let header = token.split('.').next().ok_or_else(|| invalid("no header"))?;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header.trim_end_matches('='))
            .map_err(|_| invalid("its header is not base64url"))?;
        #[derive(Deserialize)]
        struct Header {
            alg: String,
        }
        let alg = serde_json::from_slice::<Header>(&header).map_err(|_| invalid("its header has no alg"))?.alg;
        let expected = format!("{:?}", self.algorithm);
        if alg != expected {
            return Err(ConnectError::TokenInvalid(format!(
                "the token's algorithm {alg:?} is not accepted: this server takes {expected} only"
            )));
        }
        Ok(())
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
}
