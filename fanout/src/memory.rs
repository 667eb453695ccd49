//! The embedded broker: counters and fan-out inside one process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use roomcast_proto::{event::Kind, ChatMessage};
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, Link, LINK_CAPACITY};
use crate::registry::Registry;

#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    counters: HashMap<String, u64>,
    registry: Registry,
}

impl MemoryBroker {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this file; the data stays usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn next_seq(&self, room: &str) -> Result<Option<u64>, BrokerError> {
        Ok(self.state().counters.get_mut(room).map(|seq| {
            *seq += 1;
            *seq
        }))
    }

    async fn seed(&self, room: &str, floor: u64) -> Result<(), BrokerError> {
        let mut state = self.state();
        let seq = state.counters.entry(room.to_owned()).or_default();
        *seq = (*seq).max(floor);
        Ok(())
    }

    async fn publish(&self, msg: &ChatMessage) -> Result<(), BrokerError> {
        self.state().registry.deliver(msg);
        metrics::counter!("roomcast_fanout_publishes_total", "result" => "ok").increment(1);
        Ok(())
    }

    async fn connect(&self) -> Result<Link, BrokerError> {
        let (event_tx, events) = mpsc::channel(LINK_CAPACITY);
        let (interests, mut interest_rx) = mpsc::channel::<roomcast_proto::Interest>(1024);
        let id = self.state().registry.add_link(event_tx);
        let broker = self.clone();
        tokio::spawn(async move {
            while let Some(interest) = interest_rx.recv().await {
                let mut state = broker.state();
                if interest.subscribe {
                    state.registry.subscribe(id, &interest.room);
                    state.registry.send(id, roomcast_proto::Event { kind: Some(Kind::Subscribed(interest.room)) });
                } else {
                    state.registry.unsubscribe(id, &interest.room);
                }
            }
            broker.state().registry.remove_link(id);
        });
        Ok(Link { interests, events })
    }
}
