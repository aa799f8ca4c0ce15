//! The r2r binding (cargo feature `r2r`): the same [`NodeLogic`] on any ROS 2 RMW
//! (DDS included) through rcl, for robots with a sourced ROS 2. Messages travel as raw
//! CDR (`subscribe_raw` / `publish_raw`) and are decoded with the same serde types as
//! the native binding, so there is one set of message types. rcl parses `--ros-args`
//! itself (name, namespace, remaps); parameters are loaded by our own loader, exactly
//! as in the native binding, so both validate them the same way.
//!
//! Not served here: the `query` service (r2r has no untyped service server; typed
//! services need r2r's generated types for our interface package, which do not exist
//! in the `doc-only` check CI runs).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hiroz::msg::{ZDeserializer, ZMessage};
use thiserror::Error;
use tokio::sync::mpsc;

use super::msgs::{
    Clock, DiagnosticArray, DiagnosticStatus, Header, KeyValue, Outcome, Prediction, Time,
};
use crate::core::ids::RecordKey;
use crate::core::record::OutcomeRecord;
use crate::node::{FleetPort, LogLimiter, NodeLogic};

/// Why the r2r node could not start.
#[derive(Debug, Error)]
pub enum R2rError {
    /// rcl refused.
    #[error("{what}: {source}")]
    Rcl {
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: r2r::Error,
    },
}

fn rcl<T>(what: &'static str, r: r2r::Result<T>) -> Result<T, R2rError> {
    r.map_err(|source| R2rError::Rcl { what, source })
}

fn decode<T: ZMessage>(bytes: &[u8]) -> Option<T>
where
    for<'a> T::Serdes: ZDeserializer<Input<'a> = &'a [u8], Output = T>,
{
    <T::Serdes as ZDeserializer>::deserialize(bytes).ok()
}

use super::clock::system_ns;

/// Runs `qis_node` on r2r until `stop` is set. `name` is the default node name (rcl
/// applies `-r __node:=` / `__ns:=` from the process arguments).
pub async fn run(
    name: &str,
    logic: NodeLogic,
    fleet: Arc<dyn FleetPort>,
    mut records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
    stop: Arc<AtomicBool>,
) -> Result<(), R2rError> {
    let ctx = rcl("creating the rcl context", r2r::Context::create())?;
    let mut node = rcl("creating the node", r2r::Node::create(ctx, name, ""))?;
    let params = logic.params().clone();
    let qos = r2r::QosProfile::default();
    let mut predictions = rcl(
        "subscribing prediction",
        node.subscribe_raw("prediction", "qis_ros/msg/Prediction", qos.clone()),
    )?;
    let mut outcomes = rcl(
        "subscribing outcome",
        node.subscribe_raw("outcome", "qis_ros/msg/Outcome", qos.clone()),
    )?;
    let prior_topic = if params.shadow_mode {
        "corrected_prior_shadow"
    } else {
        "corrected_prior"
    };
    let prior_pub = rcl(
        "advertising corrected_prior",
        node.create_publisher_untyped(prior_topic, "qis_ros/msg/CorrectedPrior", qos.clone()),
    )?;
    let disc_pub = rcl(
        "advertising discrepancy",
        node.create_publisher_untyped("discrepancy", "qis_ros/msg/Discrepancy", qos.clone()),
    )?;
    let diag_pub = rcl(
        "advertising /diagnostics",
        node.create_publisher_untyped(
            "/diagnostics",
            "diagnostic_msgs/msg/DiagnosticArray",
            qos.clone(),
        ),
    )?;
    let sim = params.use_sim_time.then(|| Arc::new(AtomicI64::new(0)));
    let mut clock = match &sim {
        Some(_) => Some(rcl(
            "subscribing /clock",
            // rclcpp's ClockQoS: the sensor-data profile (best effort) with keep last 1.
            node.subscribe_raw(
                "/clock",
                "rosgraph_msgs/msg/Clock",
                r2r::QosProfile::sensor_data().keep_last(1),
            ),
        )?),
        None => None,
    };
    let fqn = rcl("reading the node name", node.fully_qualified_name())?;
    let now = {
        let sim = sim.clone();
        move || {
            sim.as_ref()
                .map_or_else(system_ns, |t| t.load(Ordering::Relaxed))
        }
    };
    let logic = Arc::new(Mutex::new(logic));
    // Discrepancies leave in arrival order, each once its outcome's record is durable
    // (the node's receipt for an outcome); bounded, so a slow store slows the loop.
    let (receipts_tx, mut receipts_rx) =
        mpsc::channel::<(Option<tokio::sync::oneshot::Receiver<bool>>, Vec<u8>)>(4096);
    let receipt_logic = logic.clone();
    let discrepancies = tokio::spawn(async move {
        while let Some((receipt, bytes)) = receipts_rx.recv().await {
            if let Some(receipt) = receipt
                && !receipt.await.unwrap_or(false)
            {
                // The discrepancy is the receipt of a durable outcome: none without.
                receipt_logic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .on_not_durable();
                tracing::error!("outcome not written to the store: no discrepancy published");
                continue;
            }
            if let Err(e) = disc_pub.publish_raw(&bytes) {
                tracing::error!("publishing discrepancy: {e}");
            }
        }
    });

    // rcl needs its executor spun; r2r's node is driven from one blocking thread.
    let spin_stop = stop.clone();
    let spinner = tokio::task::spawn_blocking(move || {
        while !spin_stop.load(Ordering::Relaxed) {
            node.spin_once(Duration::from_millis(10));
        }
    });

    let mut rejects = LogLimiter::new(1_000_000_000);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(params.diagnostics_period_s));
    let started = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            Some(bytes) = predictions.next() => {
                let mut l = logic.lock().unwrap_or_else(|e| e.into_inner());
                let Some(p) = decode::<Prediction>(&bytes) else {
                    l.on_malformed();
                    continue;
                };
                let r = l.on_prediction(&p, now());
                let interests: Vec<_> = l.drain_interests().collect();
                drop(l);
                for (m, f) in &interests {
                    fleet.interest(m, f);
                }
                // Refused predictions are answered too and logged by the logic.
                if let Some(prior) = r.prior()
                    && let Err(e) = prior_pub.publish_raw(&prior.serialize())
                {
                    tracing::error!("publishing corrected prior: {e}");
                }
            }
            Some(bytes) = outcomes.next() => {
                let r = {
                    let mut l = logic.lock().unwrap_or_else(|e| e.into_inner());
                    match decode::<Outcome>(&bytes) {
                        Some(o) => Some(l.on_outcome(&o, now())),
                        None => {
                            l.on_malformed();
                            None
                        }
                    }
                };
                let Some(r) = r else { continue };
                match r {
                    Ok(effect) => {
                        let (key, record) = &effect.own_record;
                        let receipt = fleet.own_record_receipt(key, record, effect.share);
                        if receipts_tx.send((receipt, effect.discrepancy.serialize())).await.is_err() {
                            tracing::error!("discrepancy queue closed");
                        }
                    }
                    Err(e) => {
                        let t = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
                        if let Some(suppressed) = rejects.allow(e.kind(), t) {
                            tracing::warn!(kind = e.kind().as_str(), suppressed, "outcome rejected: {e}");
                        }
                    }
                }
            }
            Some((key, record)) = records.recv() => {
                logic.lock().unwrap_or_else(|e| e.into_inner()).on_record(&key, record, now());
            }
            Some(bytes) = async { match clock.as_mut() { Some(c) => c.next().await, None => std::future::pending().await } } => {
                if let (Some(c), Some(t)) = (decode::<Clock>(&bytes), &sim) {
                    t.store(c.clock.as_nanos(), Ordering::Relaxed);
                }
            }
            _ = tick.tick() => {
                let mut l = logic.lock().unwrap_or_else(|e| e.into_inner());
                l.expire(now());
                let report = l.report();
                let source = l.source().as_str().to_owned();
                drop(l);
                let msg = DiagnosticArray {
                    header: Header { stamp: Time::from_nanos(now()), frame_id: String::new() },
                    status: vec![DiagnosticStatus {
                        level: DiagnosticStatus::OK,
                        name: format!("{fqn}: outcome memory"),
                        message: "ok".into(),
                        hardware_id: source,
                        values: report
                            .key_values()
                            .into_iter()
                            .chain(fleet.diagnostics().0)
                            .map(|(key, value)| KeyValue { key, value })
                            .collect(),
                    }],
                };
                if let Err(e) = diag_pub.publish_raw(&msg.serialize()) {
                    tracing::warn!("publishing diagnostics: {e}");
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    // The last discrepancies go out once their records are written (the caller shuts
    // the link down after this returns, so the node's own writes are already queued).
    drop(receipts_tx);
    let _ = discrepancies.await;
    let _ = spinner.await;
    Ok(())
}
