//! The server API: HTTP/JSON for the application's own backend, on its own listener
//! (`--api-listen`), never the public port. Every request but `/api/openapi.json` needs
//! `Authorization: apikey KEY`. Errors are turned into responses here, in one place:
//! `{"code", "message"}` with the status of the code.

mod keys;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use keys::ApiKeys;

/// Before an idempotency key in a posted message's client id: clients may not use it, so
/// a backend's key never collides with a browser's client_id.
pub const CLIENT_ID_PREFIX: &str = "api:";

use crate::error::ClientError;
use crate::hub::Hub;

/// The server API's flags; `roomcast` and `gateway` differ only in the listener's default.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the server API (HTTP/JSON for the application's backend), or `off`.
    /// Keep it off the public network: it can post as anyone and remove users.
    #[arg(long, env = "ROOMCAST_API_LISTEN")]
    pub api_listen: Option<String>,
    /// The key backends send as `Authorization: apikey KEY` (at least 24 characters).
    #[arg(long, env = "ROOMCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file of API keys, one per line (`#` comments); read again when it changes, so a
    /// key is rotated by adding the new one and later removing the old, without a restart.
    #[arg(long, env = "ROOMCAST_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
}

/// Where the server API listens, and its keys.
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub keys: ApiKeys,
}

impl ApiArgs {
    /// The API's settings, or None when it is off. `default` is the listener when the
    /// flag is not given (`roomcast`: loopback; `gateway`: none, so off).
    pub fn load(&self, default: Option<SocketAddr>) -> anyhow::Result<Option<ApiConfig>> {
        let listen = match self.api_listen.as_deref().map(str::trim) {
            Some("off") => return Ok(None),
            None | Some("") => match default {
                Some(listen) => listen,
                None => return Ok(None),
            },
            Some(addr) => addr
                .parse()
                .with_context(|| format!("--api-listen {addr:?} is not an address (like 127.0.0.1:9091) nor `off`"))?,
        };
        let keys = ApiKeys::new(self.api_key.clone(), self.api_key_file.clone())
            .with_context(|| format!("the server API on {listen}"))?;
        Ok(Some(ApiConfig { listen, keys }))
    }
}

/// What every error response carries.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code (`bad_request`, `unauthorized`, `room_not_found`, ...).
    code: &'static str,
    /// What went wrong and what to do, for people.
    message: String,
}

/// An error of the server API, answered as its status and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn not_found(code: &'static str, message: String) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code, message }
    }
}

/// A request axum could not take apart (a body that is not JSON or lacks a field, a path
/// or query of the wrong type): its status, as our error body.
fn rejected(status: StatusCode, message: String) -> ApiError {
    ApiError { status, code: "bad_request", message }
}

impl From<JsonRejection> for ApiError {
    fn from(err: JsonRejection) -> Self {
        rejected(err.status(), err.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(err: PathRejection) -> Self {
        rejected(err.status(), err.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(err: QueryRejection) -> Self {
        rejected(err.status(), err.body_text())
    }
}

impl From<ClientError> for ApiError {
    fn from(err: ClientError) -> Self {
        ApiError { status: err.status(), code: err.code(), message: err.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { code: self.code, message: self.message })).into_response()
    }
}

/// The server API's routes and their OpenAPI document, made from the same registrations.
fn routes() -> (Router<Arc<Hub>>, OpenApi) {
    let mut info = utoipa::openapi::Info::new("roomcast server API", env!("CARGO_PKG_VERSION"));
    info.description =
        Some("For the application's backend: post, read, moderate, see who is online, remove users.".into());
    OpenApiRouter::with_openapi(utoipa::openapi::OpenApiBuilder::new().info(info).build())
        .routes(routes!(routes::post_message, routes::history))
        .routes(routes!(routes::delete_message))
        .routes(routes!(routes::presence))
        .routes(routes!(routes::rooms))
        .routes(routes!(routes::disconnect))
        .split_for_parts()
}

/// The whole API service: the routes behind the key check, the document, and metrics.
fn app(hub: Arc<Hub>, keys: Arc<ApiKeys>) -> Router {
    let (api, mut doc) = routes();
    let scheme = utoipa::openapi::security::SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Header(
        utoipa::openapi::security::ApiKeyValue::with_description("Authorization", "apikey KEY"),
    ));
    doc.components.get_or_insert_with(Default::default).add_security_scheme("apikey", scheme);
    doc.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new("apikey", Vec::<String>::new())]);
    let document = Arc::new(doc);
    api.route_layer(middleware::from_fn_with_state(keys, authorize))
        .with_state(hub)
        .route("/api/openapi.json", axum::routing::get(move || async move { Json(document.as_ref().clone()) }))
        .fallback(|| async { ApiError::not_found("no_such_route", "no such route: see /api/openapi.json".into()) })
        .method_not_allowed_fallback(|| async {
            let message = "this route does not take that method: see /api/openapi.json".to_owned();
            ApiError { status: StatusCode::METHOD_NOT_ALLOWED, code: "method_not_allowed", message }
        })
        .layer(middleware::from_fn(measure))
}

/// Refuses a request without a valid `Authorization: apikey KEY` with 401.
async fn authorize(State(keys): State<Arc<ApiKeys>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("apikey "))
        .map(str::trim);
    match presented {
        Some(key) if keys.allows(key) => next.run(req).await,
        Some(_) => unauthorized("the API key is not one of this server's (--api-key, --api-key-file)"),
        None => unauthorized("send the key as `Authorization: apikey KEY`"),
    }
}

fn unauthorized(message: &str) -> Response {
    let err = ApiError { status: StatusCode::UNAUTHORIZED, code: "unauthorized", message: message.to_owned() };
    err.into_response()
}

/// Counts and times every request by route (the matched pattern) and status.
async fn measure(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched".to_owned(), |p| p.as_str().to_owned());
    // A fixed set: anyone who reaches the port may send any method name.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
    .to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("roomcast_gateway_api_requests_total", &labels).increment(1);
    metrics::histogram!("roomcast_gateway_api_request_duration_seconds", &labels[..2]).record(started.elapsed());
    response
}

/// Serves the API on `listener` until `stopped`.
pub async fn serve(
    hub: Arc<Hub>,
    keys: ApiKeys,
    listener: tokio::net::TcpListener,
    stopped: tokio_util::sync::CancellationToken,
) {
    let app = app(hub, Arc::new(keys));
    if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned()).await {
        tracing::error!(%err, "the server API stopped");
    }
}

#[cfg(test)]
mod tests;
