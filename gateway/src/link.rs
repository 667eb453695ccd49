//! Keeps this gateway's link to the broker: connects, declares the rooms it has, routes
//! deliveries to them, and after any reconnect makes every room catch up from the store.

use std::sync::Arc;
use std::time::Duration;

use backoff::BackoffBuilder;
use fanout::CONTROL;
use roomcast_proto::{event::Kind, room_signal, Interest, RoomSignal};
use tokio::sync::mpsc;

use crate::hub::{Hub, STARTING};

/// Runs until `stopped`. The gateway turns ready once the link is first up;
/// `roomcast_gateway_broker_up` says whether it is up now.
pub async fn keep_link(hub: Arc<Hub>, mut interests: mpsc::UnboundedReceiver<Interest>) {
    let (broker, rooms, ready, stopped) = (&hub.broker, &hub.rooms, &hub.ready, &hub.lifecycle.stopped);
    let mut delays = backoff::reconnect().build();
    loop {
        let connected = tokio::select! {
            link = broker.connect() => link,
            _ = stopped.cancelled() => return,
        };
        let mut link = match connected {
            Ok(link) => link,
            Err(err) => {
                metrics::gauge!("roomcast_gateway_broker_up").set(0.0);
                let delay = delays.next().unwrap_or(Duration::from_secs(2));
                tracing::warn!(%err, ?delay, "cannot reach the broker; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped.cancelled() => return,
                }
                continue;
            }
        };
        // The room list is the truth now: queued changes were for the old link.
        while interests.try_recv().is_ok() {}
        for room in rooms.names().into_iter().chain([CONTROL.to_owned()]) {
            let _ = link.interests.send(Interest { room, subscribe: true }).await;
        }
        tokio::spawn(sync_bans(hub.clone()));
        ready.set(STARTING, false);
        metrics::gauge!("roomcast_gateway_broker_up").set(1.0);
        delays = backoff::reconnect().build();
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
                    Some(Some(Kind::Subscribed(room))) if room == CONTROL => {
                        tokio::spawn(sync_bans(hub.clone()));
                    }
                    Some(Some(Kind::Subscribed(room))) => rooms.catch_up(Some(&room)),
                    Some(Some(Kind::Resync(_))) => {
                        rooms.catch_up(None);
                        tokio::spawn(sync_bans(hub.clone()));
                    }
                    Some(Some(Kind::Signal(RoomSignal { kind: Some(room_signal::Kind::Kick(ban)), .. }))) => {
                        hub.remove_user(&ban);
                    }
                    Some(Some(Kind::Signal(signal))) => rooms.signal(signal),
                    Some(None) => {}
                    None => break,
                },
                _ = stopped.cancelled() => return,
            }
        }
        metrics::gauge!("roomcast_gateway_broker_up").set(0.0);
        metrics::counter!("roomcast_gateway_upstream_errors_total", "upstream" => "fanout", "method" => "subscribe")
            .increment(1);
        tracing::warn!("broker link lost; reconnecting");
    }
}

/// Reads the bans in force from the broker, and closes their users' connections here: the
/// kicks made while this link, or the broker's own subscription, was down came as signals
/// nobody here heard. In its own task: the link goes on delivering while the broker (in a
/// failover, say) takes its time to answer.
async fn sync_bans(hub: Arc<Hub>) {
    match hub.broker.bans().await {
        Ok(bans) => {
            hub.admission.replace_bans(bans.clone());
            for ban in &bans {
                hub.remove_user(ban);
            }
        }
        Err(err) => tracing::warn!(%err, "cannot read the bans in force; keeping those known"),
    }
}
