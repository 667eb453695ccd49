//! roomcast's gRPC contract, generated from `proto/roomcast.proto`.
#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("roomcast.v1");
}

pub use v1::*;
