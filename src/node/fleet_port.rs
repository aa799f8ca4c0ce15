//! The node's door to the fleet exchange. The node logic never does I/O: the binding
//! hands own records to a [`FleetPort`] after each paired outcome and feeds records
//! received from the fleet back with [`super::NodeLogic::on_record`].

use tokio::sync::oneshot;

use crate::core::ids::{Fingerprint, ModelId, RecordKey};
use crate::core::record::OutcomeRecord;

/// Where a node's own records go, and how the exchange learns which addresses matter.
///
/// Called from the node's event loop: implementations must not block (queue the work
/// to a task of their own, bounded).
pub trait FleetPort: Send + Sync {
    /// Persists and then shares one of this robot's own records (the latest cumulative
    /// summary of its key).
    fn publish(&self, key: &RecordKey, record: &OutcomeRecord);

    /// Persists an own record that is not shared yet (privacy budget not reached), so a
    /// restart does not lose its outcomes. Default: nothing to keep.
    fn keep(&self, _key: &RecordKey, _record: &OutcomeRecord) {}

    /// Hands over the own record of a paired outcome: shared when `share` (the privacy
    /// budget is reached), else only kept.
    fn own_record(&self, key: &RecordKey, record: &OutcomeRecord, share: bool) {
        if share {
            self.publish(key, record);
        } else {
            self.keep(key, record);
        }
    }

    /// Like [`own_record`](Self::own_record), with a receipt: the receiver yields true
    /// once the record (or a newer one of its key, which contains its outcomes) is
    /// durable, false when the write failed. The binding publishes the outcome's
    /// `discrepancy` only after it, so a discrepancy means "recorded". `None`: this port
    /// keeps nothing to wait for. Default: `own_record`, no receipt.
    fn own_record_receipt(
        &self,
        key: &RecordKey,
        record: &OutcomeRecord,
        share: bool,
    ) -> Option<oneshot::Receiver<bool>> {
        self.own_record(key, record, share);
        None
    }

    /// The node met an address it holds nothing about: the exchange should ask the fleet
    /// for it once and keep it fresh (DESIGN 1, step 3). Default: nothing to do.
    fn interest(&self, _model: &ModelId, _fingerprint: &Fingerprint) {}

    /// Like [`interest`](Self::interest), but the caller waits for the answer of the
    /// first query (to correct the very first prediction at an address). `None`: this
    /// port cannot fetch; the caller falls back to `interest`.
    fn fetch(
        &self,
        _model: &ModelId,
        _fingerprint: &Fingerprint,
    ) -> Option<oneshot::Receiver<Vec<(RecordKey, OutcomeRecord)>>> {
        None
    }

    /// The port's own counters for `/diagnostics` (persistence, fleet traffic, records
    /// refused from the network), as key/value text pairs, and how many fleet records it
    /// has refused so far (a rise turns the report to WARN). Default: nothing.
    fn diagnostics(&self) -> (Vec<(String, String)>, u64) {
        (Vec::new(), 0)
    }
}

/// A node that keeps its records to itself (fleet exchange disabled).
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalOnly;

impl FleetPort for LocalOnly {
    fn publish(&self, key: &RecordKey, _record: &OutcomeRecord) {
        tracing::trace!(fingerprint = %key.fingerprint.to_hex(), "fleet exchange disabled: record kept local");
    }
}
