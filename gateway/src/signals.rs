//! This gateway's side of the ephemeral room state in the broker: the announcer, which
//! sends its rooms' presence changes and typing in order, and the heartbeat, which keeps
//! its entries alive, learns which other gateways are, and keeps the directory current.

use std::collections::HashSet;
use std::sync::Arc;

use fanout::{Broker, HEARTBEAT_EVERY, SYSTEM_PREFIX};
use roomcast_proto::{RoomSignal, RoomTouch};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::presence_failed;
use crate::rooms::Rooms;

/// Sends room signals to the broker one at a time, in the order they were made: a room
/// that closes and reopens here announces its leaves before its joins.
#[derive(Clone)]
pub struct Announcer {
    queue: mpsc::UnboundedSender<RoomSignal>,
}

impl Announcer {
    /// Starts the announcer's task; it ends when every `Announcer` is dropped.
    pub fn start(broker: Arc<dyn Broker>) -> Self {
        let (queue, mut signals) = mpsc::unbounded_channel::<RoomSignal>();
        tokio::spawn(async move {
            while let Some(signal) = signals.recv().await {
                if let Err(err) = broker.signal(&signal).await {
                    presence_failed("announce");
                    tracing::debug!(%err, room = %signal.room, "cannot announce a room signal");
                }
            }
        });
        Self { queue }
    }

    pub fn send(&self, signal: RoomSignal) {
        // Fails only once the task is gone, at shutdown.
        let _ = self.queue.send(signal);
    }
}

/// Heartbeats every [`HEARTBEAT_EVERY`] (every second while it fails) until `stopped`.
pub async fn heartbeat(
    broker: Arc<dyn Broker>,
    rooms: Arc<Rooms>,
    gateway: Arc<str>,
    housekeeping: impl Fn() + Send + 'static,
    stopped: CancellationToken,
) {
    loop {
        let alive = tokio::select! {
            alive = beat(broker.as_ref(), &rooms, &gateway) => alive,
            _ = stopped.cancelled() => return,
        };
        housekeeping();
        let next = if alive { HEARTBEAT_EVERY } else { std::time::Duration::from_secs(1) };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stopped.cancelled() => return,
        }
    }
}

/// Says this gateway stopped, so that the others drop its users at their next heartbeat
/// instead of after the TTL.
pub async fn farewell(broker: &dyn Broker, gateway: &str) {
    let said = tokio::time::timeout(std::time::Duration::from_secs(2), broker.heartbeat(gateway, true)).await;
    if !matches!(said, Ok(Ok(_))) {
        tracing::info!("cannot tell the broker this gateway stopped; its users expire with its heartbeat");
    }
}

/// One heartbeat: this gateway is alive, its rooms with members stay listed, and the
/// others' entries are kept only while they are alive.
/// Answers whether the broker took the heartbeat.
async fn beat(broker: &dyn Broker, rooms: &Rooms, gateway: &str) -> bool {
    let alive = match broker.heartbeat(gateway, false).await {
        Ok(reply) => {
            metrics::gauge!("roomcast_gateway_directory_rooms").set(reply.directory_rooms as f64);
            if reply.rejoined {
                // Until now readers took this gateway for dead, and may have deleted its
                // entries: its rooms announce their users again.
                rooms.reannounce();
            }
            rooms.keep_gateways(Arc::new(reply.live.into_iter().collect::<HashSet<String>>()));
            true
        }
        Err(err) => {
            presence_failed("heartbeat");
            tracing::warn!(%err, "presence heartbeat failed; other gateways drop this one's users if it lasts");
            false
        }
    };
    let listed: Vec<RoomTouch> = rooms
        .names()
        .into_iter()
        .filter(|room| !room.starts_with(SYSTEM_PREFIX))
        .map(|room| RoomTouch { room, keepalive: true, ..Default::default() })
        .collect();
    if let Err(err) = broker.touch(&listed).await {
        presence_failed("heartbeat");
        tracing::warn!(%err, "cannot mark this gateway's rooms active in the directory");
    }
    alive
}
