//! What produces events: the device itself (`device`: identity, lifecycle and the inventory
//! collected by `inventory`) and local applications over the socket (`ingest`), which also
//! carries the `control` requests.

pub mod control;
pub mod device;
pub mod ingest;
pub mod inventory;
