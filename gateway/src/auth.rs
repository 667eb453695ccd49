//! Who a client is: an optional JWT (HS256 with a shared secret, or RS256 with a public
//! key) whose `sub` (or `name`) is the user name, and whose `rooms` claim, a list of glob
//! patterns, limits the rooms it may join. Tokens are checked once, at connect.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ConnectError;

/// Verifies tokens with one key.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
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
        Ok(Self { key: DecodingKey::from_secret(secret.as_bytes()), validation: validation(Algorithm::HS256) })
    }

    /// RS256 with a PEM public key.
    pub fn rs256(public_key: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(public_key)
            .with_context(|| format!("cannot read --auth-jwt-public-key {}", public_key.display()))?;
        let key = DecodingKey::from_rsa_pem(&pem)
            .with_context(|| format!("{} is not an RSA public key in PEM form", public_key.display()))?;
        Ok(Self { key, validation: validation(Algorithm::RS256) })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, ConnectError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => ConnectError::TokenExpired,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    ConnectError::TokenInvalid("the token's signature does not verify with this server's key".into())
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
        Ok(Identity { user, rooms })
    }
}

fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = 5;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    validation
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

    #[test]
    fn short_secrets_are_refused_at_start() {
        assert!(Auth::hs256("short").is_err());
    }
}
