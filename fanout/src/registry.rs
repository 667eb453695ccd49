//! Which link wants which room: the bookkeeping both broker implementations share.

use std::collections::{HashMap, HashSet};

use roomcast_proto::{event::Kind, room_signal, ChatMessage, Event, RoomSignal};
use tokio::sync::mpsc;

pub type LinkId = u64;

#[derive(Default)]
pub struct Registry {
    next_id: LinkId,
    links: HashMap<LinkId, mpsc::Sender<Event>>,
    rooms: HashMap<String, HashSet<LinkId>>,
}

impl Registry {
    pub fn add_link(&mut self, events: mpsc::Sender<Event>) -> LinkId {
        self.next_id += 1;
        self.links.insert(self.next_id, events);
        metrics::gauge!("roomcast_fanout_gateways").set(self.links.len() as f64);
        self.next_id
    }

    /// Forgets a link; returns the rooms nobody wants any more.
    pub fn remove_link(&mut self, link: LinkId) -> Vec<String> {
        self.links.remove(&link);
        metrics::gauge!("roomcast_fanout_gateways").set(self.links.len() as f64);
        let mut emptied = Vec::new();
        self.rooms.retain(|room, links| {
            links.remove(&link);
            if links.is_empty() {
                emptied.push(room.clone());
            }
            !links.is_empty()
        });
        self.update_gauge();
        emptied
    }

    pub fn subscribe(&mut self, link: LinkId, room: &str) {
        self.rooms.entry(room.to_owned()).or_default().insert(link);
        self.update_gauge();
    }

    /// Returns true when `room` has no link left (the last subscriber went).
    pub fn unsubscribe(&mut self, link: LinkId, room: &str) -> bool {
        let Some(links) = self.rooms.get_mut(room) else {
            return false;
        };
        links.remove(&link);
        let last = links.is_empty();
        if last {
            self.rooms.remove(room);
        }
        self.update_gauge();
        last
    }

    pub fn rooms(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    pub fn subscribers(&self, room: &str) -> Vec<LinkId> {
        self.rooms.get(room).map(|l| l.iter().copied().collect()).unwrap_or_default()
    }

    /// Sends `event` to one link. A full or closed link is dropped; its gateway
    /// reconnects and resyncs from the store.
    pub fn send(&mut self, link: LinkId, event: Event) {
        let Some(tx) = self.links.get(&link) else {
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(link, "gateway link fell behind; closing it so the gateway resyncs");
                metrics::counter!("roomcast_fanout_links_closed_total", "reason" => "lagging").increment(1);
                self.remove_link(link);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.remove_link(link);
            }
        }
    }

    pub fn deliver(&mut self, msg: &ChatMessage) {
        for link in self.subscribers(&msg.room) {
            metrics::counter!("roomcast_fanout_deliveries_total").increment(1);
            self.send(link, Event { kind: Some(Kind::Message(msg.clone())) });
        }
    }

    /// Carries a signal to the links subscribed to its room. Typing is dropped for a link
    /// that is full rather than closing it: it is not worth a resync of every room.
    pub fn signal(&mut self, signal: &RoomSignal) {
        let typing = matches!(signal.kind, Some(room_signal::Kind::Typing(_)));
        for link in self.subscribers(&signal.room) {
            let event = Event { kind: Some(Kind::Signal(signal.clone())) };
            match self.links.get(&link) {
                Some(tx) if typing => {
                    let _ = tx.try_send(event);
                }
                _ => self.send(link, event),
            }
        }
    }

    pub fn broadcast(&mut self, kind: Kind) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.send(link, Event { kind: Some(kind.clone()) });
        }
    }

    fn update_gauge(&self) {
        metrics::gauge!("roomcast_fanout_room_subscriptions").set(self.rooms.len() as f64);
    }
}
