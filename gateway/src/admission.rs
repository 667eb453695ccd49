//! Who may connect, checked once per connection before any room is touched: the
//! browser's origin, the token, and the connection limits (per gateway and per client
//! IP). An admitted connection holds a [`Slot`] that frees its place when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use roomcast_proto::{now_millis, UserBan};

use crate::auth::{Auth, Identity, RoomGrant};
use crate::error::ConnectError;
use crate::limits::Limits;

/// The client's address, put in every request's extensions by the HTTP server.
#[derive(Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Who may connect at all.
#[derive(Default)]
pub struct Access {
    /// Verifies tokens when set.
    pub auth: Option<Auth>,
    /// Refuse connections without a valid token.
    pub auth_required: bool,
    /// Browser origins allowed (exact `scheme://host[:port]`); empty allows any.
    pub allowed_origins: Vec<String>,
}

/// `?user=` and `?token=` of a connect request's query string.
pub fn credentials(query: &str) -> (Option<String>, Option<String>) {
    let param = |name: &str| {
        form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
    };
    (param("user"), param("token"))
}

/// Unix milliseconds as an RFC 3339 time, for messages.
pub fn rfc3339(unix_millis: i64) -> String {
    // Clamped below the year 10000, which RFC 3339 cannot write.
    let millis = u64::try_from(unix_millis).unwrap_or(0).min(253_402_300_799_000);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// What the client offers at connect.
pub struct Offer<'a> {
    pub ip: Option<IpAddr>,
    pub origin: Option<&'a str>,
    pub token: Option<&'a str>,
    /// The name the client asked for; ignored when a token names the user.
    pub user: Option<&'a str>,
}

/// An admitted connection.
pub struct Admitted {
    /// A valid user name; None on Socket.IO connections that only listen.
    pub user: Option<String>,
    pub rooms: RoomGrant,
    /// True when `user` comes from a verified token.
    pub authenticated: bool,
    /// The token's `exp` (Unix seconds), when there is a token.
    pub expires_at: Option<u64>,
    pub slot: Slot,
}

/// The readiness reason while every place is taken.
pub const FULL: &str = "at its connection cap";

pub struct Admission {
    access: Access,
    /// user -> the ban in force (from the server API, through the broker).
    bans: Mutex<HashMap<String, UserBan>>,
    limits: Limits,
    /// Not ready ([`FULL`]) while every place is taken: the count that refuses
    /// `server_full` is the one that turns the pod unready.
    ready: telemetry::Readiness,
    max_connections: usize,
    max_per_ip: usize,
    open: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A held connection place; dropping it gives the place back.
pub struct Slot {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        if counts.total == self.admission.max_connections {
            self.admission.ready.set(FULL, false);
        }
        counts.total -= 1;
        if let Some(ip) = self.ip {
            if let Some(n) = counts.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.per_ip.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    /// `0` as a connection limit means no limit.
    pub fn new(access: Access, limits: Limits, ready: telemetry::Readiness) -> Self {
        let unlimited = |n: usize| if n == 0 { usize::MAX } else { n };
        Self {
            access,
            max_connections: unlimited(limits.max_connections),
            max_per_ip: unlimited(limits.max_connections_per_ip),
            limits,
            ready,
            open: Mutex::default(),
            bans: Mutex::default(),
        }
    }

    /// Keeps `ban` until it ends; a removal without a ban (`until` 0) changes no ban.
    pub fn ban(&self, ban: &UserBan) {
        let now = now_millis();
        let mut bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        bans.retain(|_, ban| ban.until > now);
        if ban.until > now {
            bans.insert(ban.user.clone(), ban.clone());
        }
    }

    /// Replaces every ban with the broker's list, read when the link (re)connects.
    pub fn replace_bans(&self, bans: Vec<UserBan>) {
        *self.bans.lock().unwrap_or_else(|p| p.into_inner()) =
            bans.into_iter().map(|ban| (ban.user.clone(), ban)).collect();
    }

    /// The ban in force for `user`, if any.
    pub fn ban_of(&self, user: &str) -> Option<UserBan> {
        let bans = self.bans.lock().unwrap_or_else(|p| p.into_inner());
        bans.get(user).filter(|ban| ban.until > now_millis()).cloned()
    }

    fn check_ban(&self, user: &str) -> Result<(), ConnectError> {
        match self.ban_of(user) {
            Some(ban) => {
                Err(ConnectError::Banned { user: user.to_owned(), until: rfc3339(ban.until), reason: ban.reason })
            }
            None => Ok(()),
        }
    }

    /// Connections holding a place now.
    pub fn open(&self) -> usize {
        self.counts().total
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks origin, then token, then the user name, then room for one more connection.
    pub fn admit(self: &Arc<Self>, offer: Offer<'_>) -> Result<Admitted, ConnectError> {
        let result = self.check(offer);
        if let Err(refused) = &result {
            metrics::counter!("roomcast_gateway_refused_connections_total", "reason" => refused.code()).increment(1);
        }
        result
    }

    fn check(self: &Arc<Self>, offer: Offer<'_>) -> Result<Admitted, ConnectError> {
        if let Some(origin) = offer.origin {
            if !self.access.allowed_origins.is_empty() && !self.access.allowed_origins.iter().any(|o| o == origin) {
                return Err(ConnectError::OriginNotAllowed(origin.to_owned()));
            }
        }
        let identity = match offer.token.filter(|t| !t.is_empty()) {
            Some(token) if self.access.auth.is_some() => Some(self.verify(token)?),
            None if self.access.auth_required => return Err(ConnectError::TokenMissing),
            _ => None,
        };
        let authenticated = identity.is_some();
        let (user, rooms, expires_at) = match identity {
            Some(Identity { user, rooms, expires_at }) => (Some(user), rooms, Some(expires_at)),
            None => {
                let user = offer.user.filter(|u| !u.is_empty());
                if let Some(Err(err)) = user.map(|u| self.limits.check_user(u)) {
                    return Err(ConnectError::InvalidUser(format!("?user (or auth {{user}}): {err}")));
                }
                (user.map(str::to_owned), RoomGrant::default(), None)
            }
        };
        if let Some(user) = &user {
            self.check_ban(user)?;
        }
        let slot = self.take_slot(offer.ip)?;
        Ok(Admitted { user, rooms, authenticated, expires_at, slot })
    }

    /// What a connect must wait for before [`Admission::admit`]: a JWK Set loaded again
    /// for a token whose key is new.
    pub async fn prepare(&self, token: Option<&str>) {
        if let (Some(auth), Some(token)) = (&self.access.auth, token.filter(|t| !t.is_empty())) {
            auth.prepare(token).await;
        }
    }

    /// Checks a token, at connect or when a connection refreshes its own.
    pub fn verify(&self, token: &str) -> Result<Identity, ConnectError> {
        let Some(auth) = &self.access.auth else {
            return Err(ConnectError::TokenInvalid(
                "this server checks no tokens (no --auth-jwt-secret or key)".into(),
            ));
        };
        let identity = auth.verify(token)?;
        if let Err(err) = self.limits.check_user(&identity.user) {
            return Err(ConnectError::TokenInvalid(format!("the token's user is not a usable name: {err}")));
        }
        Ok(identity)
    }

    fn take_slot(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Slot, ConnectError> {
        let mut counts = self.counts();
        if counts.total >= self.max_connections {
            return Err(ConnectError::ServerFull(self.max_connections));
        }
        if let Some(ip) = ip {
            let n = counts.per_ip.entry(ip).or_default();
            if *n >= self.max_per_ip {
                return Err(ConnectError::TooManyConnections { ip, max: self.max_per_ip });
            }
            *n += 1;
        }
        counts.total += 1;
        if counts.total == self.max_connections {
            self.ready.set(FULL, true);
        }
        Ok(Slot { admission: self.clone(), ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> telemetry::Readiness {
        telemetry::Readiness::new("test_ready", &[])
    }

    fn offer(ip: &str) -> Offer<'static> {
        Offer { ip: Some(ip.parse().expect("ip")), origin: None, token: None, user: Some("ada") }
    }

    #[test]
    fn per_ip_and_total_limits_free_their_place_on_drop() {
        let limits = Limits { max_connections: 3, max_connections_per_ip: 2, ..Limits::default() };
        let admission = Arc::new(Admission::new(Access::default(), limits, ready()));
        let a = admission.admit(offer("10.0.0.1")).expect("first");
        let _b = admission.admit(offer("10.0.0.1")).expect("second");
        assert_eq!(admission.admit(offer("10.0.0.1")).err().map(|r| r.code()), Some("too_many_connections"));
        let _c = admission.admit(offer("10.0.0.2")).expect("other ip");
        assert_eq!(admission.admit(offer("10.0.0.3")).err().map(|r| r.code()), Some("server_full"));
        assert_eq!(admission.ready.not_ready_reason(), Some(FULL), "full is not ready");
        drop(a);
        assert!(admission.ready.is_ready(), "a free place is ready again");
        assert_eq!(admission.open(), 2);
        admission.admit(offer("10.0.0.1")).expect("a place was freed");
    }

    #[test]
    fn origins_outside_the_list_are_refused() {
        let access = Access { allowed_origins: vec!["https://chat.example".into()], ..Access::default() };
        let admission = Arc::new(Admission::new(access, Limits::default(), ready()));
        let from = |origin| Offer { origin: Some(origin), ..offer("10.0.0.1") };
        assert!(admission.admit(from("https://chat.example")).is_ok());
        assert_eq!(admission.admit(from("https://evil.example")).err().map(|r| r.code()), Some("origin_not_allowed"));
    }

    #[test]
    fn a_required_token_must_be_there() {
        let access = Access {
            auth: Some(Auth::hs256("0123456789abcdef0123456789abcdef").expect("auth")),
            auth_required: true,
            ..Access::default()
        };
        let admission = Arc::new(Admission::new(access, Limits::default(), ready()));
        assert_eq!(admission.admit(offer("10.0.0.1")).err().map(|r| r.code()), Some("token_missing"));
    }

    #[test]
    fn a_bad_user_name_is_refused_at_connect() {
        let admission = Arc::new(Admission::new(Access::default(), Limits::default(), ready()));
        let named = |user| Offer { user: Some(user), ..offer("10.0.0.1") };
        assert_eq!(admission.admit(named("no spaces")).err().map(|r| r.code()), Some("invalid_user"));
        assert!(admission.admit(named("ada")).is_ok());
        let listener = admission.admit(Offer { user: None, ..offer("10.0.0.1") }).expect("listen-only");
        assert!(listener.user.is_none());
    }
}
