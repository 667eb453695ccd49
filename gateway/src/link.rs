//! Keeps this gateway's link to the broker: connects, declares the rooms it has, routes
//! deliveries to them, and after any reconnect makes every room catch up from the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanout::Broker;
use roomcast_proto::{event::Kind, Interest};
use tokio::sync::{mpsc, watch};

use crate::rooms::Rooms;

pub async fn keep_link(
    broker: Arc<dyn Broker>,
    rooms: Arc<Rooms>,
    mut interests: mpsc::UnboundedReceiver<Interest>,
    up: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            link = broker.connect() => link,
            _ = crate::wait_until(&mut shutdown, |stop| *stop) => return,
        };
        let mut link = match connected {
            Ok(link) => link,
            Err(err) => {
                up.store(false, Ordering::Relaxed);
                tracing::warn!(%err, "cannot reach the broker; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::wait_until(&mut shutdown, |stop| *stop) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        // The room list is the truth now: queued changes were for the old link.
        while interests.try_recv().is_ok() {}
        for room in rooms.names() {
            let _ = link.interests.send(Interest { room, subscribe: true }).await;
        }
        up.store(true, Ordering::Relaxed);
        backoff = Duration::from_millis(100);
        tracing::info!("broker link up");
        loop {
            tokio::select! {
                interest = interests.recv() => {
                    let Some(interest) = interest else { return };
                    if link.interests.send(interest).await.is_err() {
                        break;
                    }
                }
                event = link.events.recv() => match event.map(|e| e.kind) {
                    Some(Some(Kind::Message(msg))) => rooms.deliver(msg),
                    Some(Some(Kind::Subscribed(room))) => rooms.catch_up(Some(&room)),
                    Some(Some(Kind::Resync(_))) => rooms.catch_up(None),
                    Some(None) => {}
                    None => break,
                },
                _ = crate::wait_until(&mut shutdown, |stop| *stop) => return,
            }
        }
        up.store(false, Ordering::Relaxed);
        tracing::warn!("broker link lost; reconnecting");
    }
}
