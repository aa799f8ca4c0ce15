//! Counters of the fleet exchange, for diagnostics: what came in, what was refused and
//! why, what went out. Lock-free so the receive callbacks never wait on them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Live counters of one fleet exchange (monotonic since start).
#[derive(Debug, Default)]
pub struct FleetStats {
    pub(crate) received: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) rejected_key: AtomicU64,
    pub(crate) rejected_decode: AtomicU64,
    pub(crate) rejected_unsigned: AtomicU64,
    pub(crate) rejected_signature: AtomicU64,
    pub(crate) dropped_overflow: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) withheld: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) query_errors: AtomicU64,
    pub(crate) anti_entropy_rounds: AtomicU64,
    pub(crate) digest_dropped: AtomicU64,
    pub(crate) served_evicted: AtomicU64,
    pub(crate) dp_releases: AtomicU64,
}

/// A copy of the counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetStatsSnapshot {
    /// Records received from other sources (samples and query replies).
    pub received: u64,
    /// Received records that passed key, decode and signature checks.
    pub accepted: u64,
    /// Payload bytes received.
    pub bytes_in: u64,
    /// Refused: the key is not a valid key of this fleet.
    pub rejected_key: u64,
    /// Refused: the payload is not a valid record.
    pub rejected_decode: u64,
    /// Refused: unsigned while the fleet requires signatures.
    pub rejected_unsigned: u64,
    /// Refused: the signature does not verify against the trust list.
    pub rejected_signature: u64,
    /// Accepted live samples dropped because the receive channel was full.
    pub dropped_overflow: u64,
    /// Own records put on the network.
    pub published: u64,
    /// Payload bytes put on the network (publications and query replies).
    pub bytes_out: u64,
    /// Own records not shared yet (fewer than `min_count_to_share` outcomes).
    pub withheld: u64,
    /// Fleet queries issued (including anti-entropy).
    pub queries: u64,
    /// Fleet queries that failed to start or returned an error reply.
    pub query_errors: u64,
    /// Anti-entropy rounds completed.
    pub anti_entropy_rounds: u64,
    /// Sources left out of a followed address's digest (`max_digest_sources`).
    pub digest_dropped: u64,
    /// Own records no longer served to queries (`max_served_records`).
    pub served_evicted: u64,
    /// Own record versions released with differential-privacy noise.
    pub dp_releases: u64,
}

impl FleetStatsSnapshot {
    /// All refused records, whatever the reason.
    pub fn rejected(&self) -> u64 {
        self.rejected_key + self.rejected_decode + self.rejected_unsigned + self.rejected_signature
    }
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl FleetStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> FleetStatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FleetStatsSnapshot {
            received: r(&self.received),
            accepted: r(&self.accepted),
            bytes_in: r(&self.bytes_in),
            rejected_key: r(&self.rejected_key),
            rejected_decode: r(&self.rejected_decode),
            rejected_unsigned: r(&self.rejected_unsigned),
            rejected_signature: r(&self.rejected_signature),
            dropped_overflow: r(&self.dropped_overflow),
            published: r(&self.published),
            bytes_out: r(&self.bytes_out),
            withheld: r(&self.withheld),
            queries: r(&self.queries),
            query_errors: r(&self.query_errors),
            anti_entropy_rounds: r(&self.anti_entropy_rounds),
            digest_dropped: r(&self.digest_dropped),
            served_evicted: r(&self.served_evicted),
            dp_releases: r(&self.dp_releases),
        }
    }
}
