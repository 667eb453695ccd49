//! The one shape of a gRPC client in roomcast: a lazy channel with the same connect,
//! keep-alive and TCP settings to every upstream, and calls bounded by a deadline.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};

/// A lazy channel to `url` (e.g. `http://127.0.0.1:50051`); `what` names the upstream in
/// the error for a bad URL.
pub fn channel(url: &str, what: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| format!("invalid {what} URL {url:?}: {err} (expected e.g. http://127.0.0.1:50051)"))?
        .connect_timeout(Duration::from_secs(2))
        // Without TCP_NODELAY, Nagle holds small requests for the peer's delayed ACK.
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(endpoint.connect_lazy())
}

/// Runs one call; past `limit` it fails with `DeadlineExceeded`, as a server-side
/// deadline would.
pub async fn call<T>(limit: Duration, fut: impl Future<Output = Result<Response<T>, Status>>) -> Result<T, Status> {
    match tokio::time::timeout(limit, fut).await {
        Ok(reply) => reply.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {limit:?}"))),
    }
}
