//! This gateway's side of the ephemeral room state in the broker: the announcer, which
//! sends its rooms' presence changes and typing in order, and the heartbeat, which keeps
//! its entries alive, learns which other gateways are, and keeps the directory current.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fanout::{is_listed, Broker, HEARTBEAT_EVERY};
use roomcast_proto::{room_signal, PresenceChange, RoomSignal, RoomTouch};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::presence_failed;
use crate::rooms::Rooms;

/// Typing signals are dropped, not queued, while this many signals wait: behind a slow
/// broker they would be stale anyway.
const TYPING_BACKLOG: usize = 1000;

/// Sends room signals to the broker one at a time, in the order they were made: a room
/// that closes and reopens here announces its leaves before its joins. A presence change
/// that fails marks its room: after the next good heartbeat the room announces its users
/// whole again (or, closed here, that this gateway has none there).
#[derive(Clone)]
pub struct Announcer {
    queue: mpsc::UnboundedSender<RoomSignal>,
    waiting: Arc<AtomicUsize>,
    failed: Arc<Mutex<HashSet<String>>>,
}

impl Announcer {
    /// Starts the announcer's task; it ends when every `Announcer` is dropped.
    pub fn start(broker: Arc<dyn Broker>) -> Self {
        let (queue, mut signals) = mpsc::unbounded_channel::<RoomSignal>();
        let announcer = Self { queue, waiting: Arc::default(), failed: Arc::default() };
        let (waiting, failed) = (announcer.waiting.clone(), announcer.failed.clone());
        tokio::spawn(async move {
            while let Some(signal) = signals.recv().await {
                waiting.fetch_sub(1, Ordering::Relaxed);
                if let Err(err) = broker.signal(&signal).await {
                    presence_failed("announce");
                    tracing::debug!(%err, room = %signal.room, "cannot announce a room signal");
                    if matches!(signal.kind, Some(room_signal::Kind::Presence(_))) {
                        failed.lock().unwrap_or_else(|p| p.into_inner()).insert(signal.room);
                    }
                }
            }
        });
        announcer
    }

    /// Queues a signal; typing, only a hint, is dropped behind a long backlog.
    pub fn send(&self, signal: RoomSignal) {
        let typing = matches!(signal.kind, Some(room_signal::Kind::Typing(_)));
        if typing && self.waiting.load(Ordering::Relaxed) >= TYPING_BACKLOG {
            return;
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        // Fails only once the task is gone, at shutdown.
        let _ = self.queue.send(signal);
    }

    /// The rooms whose presence changes failed since the last call.
    fn take_failed(&self) -> Vec<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).drain().collect()
    }
}

/// Heartbeats every [`HEARTBEAT_EVERY`] (every second while it fails) until `stopped`,
/// then says farewell. A beat in flight is finished first: cut off, it could land after
/// the farewell and bring this gateway back to life for the TTL.
pub async fn heartbeat(
    broker: Arc<dyn Broker>,
    rooms: Arc<Rooms>,
    gateway: Arc<str>,
    housekeeping: impl Fn() + Send + 'static,
    stopped: CancellationToken,
) {
    let mut was_alive = true;
    while !stopped.is_cancelled() {
        let alive = beat(broker.as_ref(), &rooms, &gateway).await;
        match &alive {
            Ok(()) => resend_failed(&rooms, &gateway),
            Err(err) if was_alive => {
                tracing::warn!(%err, "presence heartbeat failed; other gateways drop this one's users if it lasts")
            }
            Err(_) => {}
        }
        was_alive = alive.is_ok();
        housekeeping();
        let next = if was_alive { HEARTBEAT_EVERY } else { std::time::Duration::from_secs(1) };
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = stopped.cancelled() => {}
        }
    }
    farewell(broker.as_ref(), &gateway).await;
}

/// The rooms whose announcements failed announce their users whole; a room closed here
/// since says this gateway has nobody there.
fn resend_failed(rooms: &Rooms, gateway: &str) {
    let announcer = rooms.announcer();
    for room in announcer.take_failed() {
        if !rooms.reannounce_room(&room) {
            announcer.send(nobody_here(room, gateway));
        }
    }
}

/// The whole presence of `gateway` in `room`: nobody.
pub fn nobody_here(room: String, gateway: &str) -> RoomSignal {
    let change = PresenceChange { joins: Vec::new(), leaves: Vec::new(), full: true };
    RoomSignal { room, gateway: gateway.to_owned(), kind: Some(room_signal::Kind::Presence(change)) }
}

/// Says this gateway stopped, so that the others drop its users at their next heartbeat
/// instead of after the TTL.
async fn farewell(broker: &dyn Broker, gateway: &str) {
    let said = tokio::time::timeout(std::time::Duration::from_secs(2), broker.heartbeat(gateway, true)).await;
    if !matches!(said, Ok(Ok(_))) {
        tracing::info!("cannot tell the broker this gateway stopped; its users expire with its heartbeat");
    }
}

/// One heartbeat: this gateway is alive, its rooms with members stay listed, and the
/// others' entries are kept only while they are alive. The caller logs a failure, once
/// per outage.
async fn beat(broker: &dyn Broker, rooms: &Rooms, gateway: &str) -> Result<(), fanout::BrokerError> {
    let alive = match broker.heartbeat(gateway, false).await {
        Ok(reply) => {
            metrics::gauge!("roomcast_gateway_directory_rooms").set(reply.directory_rooms as f64);
            if reply.rejoined {
                // Until now readers took this gateway for dead (silent for the TTL, or a
                // Redis that came back empty), and may have deleted its entries: its rooms
                // announce their users again.
                tracing::info!(
                    "joined the live gateways (at start, or after being taken for dead); announcing every room's users"
                );
                rooms.reannounce();
            }
            rooms.keep_gateways(Arc::new(reply.live.into_iter().collect::<HashSet<String>>()));
            Ok(())
        }
        Err(err) => {
            presence_failed("heartbeat");
            Err(err)
        }
    };
    let listed: Vec<RoomTouch> = rooms
        .names()
        .into_iter()
        .filter(|room| is_listed(room))
        .map(|room| RoomTouch { room, keepalive: true, ..Default::default() })
        .collect();
    if let Err(err) = broker.touch(&listed).await {
        presence_failed("heartbeat");
        tracing::debug!(%err, "cannot mark this gateway's rooms active in the directory");
    }
    alive
}
