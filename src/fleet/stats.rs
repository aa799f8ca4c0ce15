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
    pub(crate) held_back: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) query_errors: AtomicU64,
    pub(crate) anti_entropy_rounds: AtomicU64,
    pub(crate) digest_dropped: AtomicU64,
    pub(crate) served_evicted: AtomicU64,
    pub(crate) dp_releases: AtomicU64,
    pub(crate) rejected_lane: AtomicU64,
    pub(crate) dropped_unfollowed: AtomicU64,
    pub(crate) dropped_unselected: AtomicU64,
    pub(crate) widened_queries: AtomicU64,
    pub(crate) lane_changes: AtomicU64,
    pub(crate) lane_prefixes: AtomicU64,
    pub(crate) sources_seen: AtomicU64,
    pub(crate) declarations: AtomicU64,
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
    /// Own record versions served but not put: their count had not grown by
    /// `republish_growth` since the version last put.
    pub held_back: u64,
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
    /// Refused: the key's lane is not the lane of its source.
    pub rejected_lane: u64,
    /// Live samples of an address this node does not follow (accepted, then dropped).
    pub dropped_unfollowed: u64,
    /// Live samples of a lane this node has not selected (accepted, then dropped).
    pub dropped_unselected: u64,
    /// Queries that had to widen beyond the node's own lanes (too few sources there).
    pub widened_queries: u64,
    /// Times the lane selection changed (subscriptions redeclared).
    pub lane_changes: u64,
    /// Lane prefixes subscribed to now (1 = the whole fleet or one prefix).
    pub lane_prefixes: u64,
    /// Distinct sources seen (bounded counter), the node's estimate of the fleet's size.
    pub sources_seen: u64,
    /// Zenoh declarations held now (subscriptions + the queryable).
    pub declarations: u64,
}

impl FleetStatsSnapshot {
    /// All refused records, whatever the reason.
    pub fn rejected(&self) -> u64 {
        self.rejected_key
            + self.rejected_decode
            + self.rejected_unsigned
            + self.rejected_signature
            + self.rejected_lane
    }
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

pub(crate) fn set(gauge: &AtomicU64, to: u64) {
    gauge.store(to, Ordering::Relaxed);
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
            held_back: r(&self.held_back),
            queries: r(&self.queries),
            query_errors: r(&self.query_errors),
            anti_entropy_rounds: r(&self.anti_entropy_rounds),
            digest_dropped: r(&self.digest_dropped),
            served_evicted: r(&self.served_evicted),
            dp_releases: r(&self.dp_releases),
            rejected_lane: r(&self.rejected_lane),
            dropped_unfollowed: r(&self.dropped_unfollowed),
            dropped_unselected: r(&self.dropped_unselected),
            widened_queries: r(&self.widened_queries),
            lane_changes: r(&self.lane_changes),
            lane_prefixes: r(&self.lane_prefixes),
            sources_seen: r(&self.sources_seen),
            declarations: r(&self.declarations),
        }
    }
}
