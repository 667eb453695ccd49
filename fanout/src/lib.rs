//! The broker tier. It hands out per-room sequence numbers and carries stored messages
//! to every gateway with members in the room.
//!
//! One interface, [`Broker`], three implementations: [`MemoryBroker`] for a single
//! process, [`RedisBroker`] for many (behind the `fanout` gRPC service), and
//! [`FanoutClient`], the gateway's view of a remote `fanout`.

mod broker;
mod budget;
mod client;
mod memory;
pub mod metrics;
mod presence;
mod redis_broker;
mod redis_keys;
mod redis_subscriber;
mod redis_target;
mod registry;
mod server;

pub use broker::{Broker, BrokerError, Link, CONTROL};
pub use client::FanoutClient;
pub use memory::MemoryBroker;
pub use presence::{is_listed, DirectoryArgs, DirectoryLimits, GATEWAY_TTL, HEARTBEAT_EVERY, MAX_ROOMS_PAGE};
pub use redis_broker::RedisBroker;
pub use redis_target::{RedisArgs, RedisTarget};
pub use server::FanoutService;
