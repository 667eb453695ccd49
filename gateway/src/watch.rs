//! Waiting on a `watch` channel without holding its value.

use tokio::sync::watch;

/// Waits until `rx` holds a value `until` accepts, or its sender is gone. Unlike a bare
/// `wait_for`, it keeps no borrow of the value, so the caller's future stays `Send`.
pub async fn wait_until<T>(rx: &mut watch::Receiver<T>, until: impl FnMut(&T) -> bool) {
    let _ = rx.wait_for(until).await.map(drop);
}
