//! Sources of events. `ingest` is the Unix socket local applications write to.

pub mod ingest;
