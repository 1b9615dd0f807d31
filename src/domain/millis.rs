//! Durations in configuration are whole milliseconds (`request_timeout_ms = 10000`): this is
//! the serde form for `#[serde(with = "crate::domain::millis")]` on a `Duration` field.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_millis().min(u128::from(u64::MAX)) as u64)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}
