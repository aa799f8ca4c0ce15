//! The one runner of `qis_node`: the tasks around one [`NodeLogic`] that both bindings
//! (native hiroz and r2r) run, so first-encounter fetch, corrected priors, receipts,
//! fleet records, the query service, diagnostics, the sim clock and shutdown exist once.
//! A binding is transport only: it turns its subscriptions into [`Inputs`] (streams of
//! decoded messages) and its publishers into an [`Outputs`].
//!
//! Tasks, all stopped by one cancellation token, sharing the logic behind a mutex that
//! is never held across an await:
//! - predictions: answered in arrival order, except a first encounter, whose fleet
//!   fetch runs on a task of its own (at most [`MAX_FETCHES`] at once; beyond that the
//!   address is only followed), so a slow or silent fleet never delays other
//!   predictions;
//! - outcomes, then receipts: a discrepancy leaves once its outcome's record is durable;
//! - fleet records, queries, the sim clock, and diagnostics every period.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::logging;
use super::msgs::{
    Clock, CorrectedPrior, DiagnosticArray, DiagnosticStatus, Discrepancy, Header, KeyValue,
    Outcome, Prediction, QueryRequest, QueryResponse, Time,
};
use crate::core::ids::{Fingerprint, ModelId, RecordKey};
use crate::core::record::OutcomeRecord;
use crate::node::{FleetPort, InputError, Intake, LogLimiter, NodeLogic, PredictionAnswer};

/// Default longest wait of an input for the first `/clock` under `use_sim_time`.
pub const DEFAULT_FIRST_CLOCK_WAIT: Duration = Duration::from_secs(10);

/// Most first-encounter fetches in flight at once; past it a new address is followed
/// without waiting, and its first prediction is answered with what is held.
pub const MAX_FETCHES: usize = 256;

/// Most discrepancies waiting for their outcome's durable write: a store that falls
/// behind slows the outcome task rather than growing memory.
const DISCREPANCY_QUEUE: usize = 4096;

/// A message the binding received but could not decode (counted as malformed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Undecodable;

/// One call of the `query` service: the request and how to answer it.
pub struct QueryCall {
    /// The request.
    pub request: QueryRequest,
    /// Sends the response back to the caller.
    pub reply: Box<dyn FnOnce(QueryResponse) -> BoxFuture<'static, Result<(), String>> + Send>,
}

/// What a binding receives, decoded, as streams the runner drains.
pub struct Inputs {
    /// The `prediction` topic.
    pub predictions: BoxStream<'static, Result<Prediction, Undecodable>>,
    /// The `outcome` topic.
    pub outcomes: BoxStream<'static, Result<Outcome, Undecodable>>,
    /// The `query` service, when the binding can serve it.
    pub queries: Option<BoxStream<'static, Result<QueryCall, Undecodable>>>,
    /// `/clock`, subscribed under `use_sim_time`.
    pub clock: Option<BoxStream<'static, Clock>>,
}

/// Where the runner's messages go: the binding's publishers.
pub trait Outputs: Send + Sync + 'static {
    /// Publishes a corrected prior.
    fn prior(&self, msg: &CorrectedPrior) -> impl Future<Output = Result<(), String>> + Send;
    /// Publishes a discrepancy (the receipt of a durable outcome).
    fn discrepancy(&self, msg: &Discrepancy) -> impl Future<Output = Result<(), String>> + Send;
    /// Publishes the node's `/diagnostics`.
    fn diagnostics(&self, msg: &DiagnosticArray)
    -> impl Future<Output = Result<(), String>> + Send;
    /// The transport's own diagnostics (e.g. Zenoh peers), added to every report.
    fn transport_diagnostics(&self) -> impl Future<Output = Vec<(String, String)>> + Send {
        async { Vec::new() }
    }
}

/// Settings of the runner that are not node parameters.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Fully qualified node name (names the diagnostics status).
    pub fqn: String,
    /// Longest wait of inputs for the first `/clock` under `use_sim_time`.
    pub first_clock_wait: Duration,
}

/// Sim time and whether it has started (under `use_sim_time`).
#[derive(Debug)]
struct SimTime {
    now: AtomicI64,
    started: tokio::sync::watch::Sender<bool>,
    /// Inputs handled with no `/clock` yet, after the wait ran out.
    unset: AtomicU64,
    /// Until when an input waits for the first `/clock`.
    wait_until: tokio::time::Instant,
}

/// The node's time: system time, or the latest `/clock` under `use_sim_time`.
#[derive(Clone, Debug)]
struct NodeClock {
    sim: Option<Arc<SimTime>>,
}

impl NodeClock {
    fn now_ns(&self) -> i64 {
        match &self.sim {
            // Before the first /clock message sim time is 0, as in rclcpp; inputs wait
            // for it (`ready`).
            Some(t) => t.now.load(Ordering::Relaxed),
            None => super::clock::system_ns(),
        }
    }

    /// Under `use_sim_time`, waits until the first `/clock` has arrived, at most until
    /// the first-clock deadline; past it the input goes on with sim time 0 and is
    /// counted (`sim_time_unset`). Immediate with the system clock or once sim time runs.
    async fn ready(&self, what: &str) {
        let Some(sim) = &self.sim else { return };
        let mut started = sim.started.subscribe();
        if *started.borrow() {
            return;
        }
        let waited = tokio::time::timeout_at(sim.wait_until, started.wait_for(|s| *s)).await;
        if !matches!(waited, Ok(Ok(_))) {
            let n = sim.unset.fetch_add(1, Ordering::Relaxed);
            if n == 0 {
                tracing::warn!(
                    "use_sim_time: no /clock yet; {what} handled at sim time 0 (counted as sim_time_unset in /diagnostics)"
                );
            }
        }
    }

    /// Diagnostics of the sim clock (none with the system clock).
    fn report(&self) -> Vec<(String, String)> {
        self.sim.as_ref().map_or_else(Vec::new, |s| {
            vec![
                ("sim_time_started".into(), s.started.borrow().to_string()),
                (
                    "sim_time_unset".into(),
                    s.unset.load(Ordering::Relaxed).to_string(),
                ),
            ]
        })
    }
}

/// The logic shared by the runner's tasks (and the binding's parameter service).
pub type SharedLogic = Arc<Mutex<NodeLogic>>;

/// Locks the logic. A panic while holding the lock would be a bug in the logic; the
/// counters it guards stay meaningful, so keep serving rather than poison every task.
pub fn lock(logic: &SharedLogic) -> MutexGuard<'_, NodeLogic> {
    logic.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logs a rejected input, rate-limited per kind.
struct RejectLog {
    limiter: LogLimiter,
    start: Instant,
}

impl RejectLog {
    fn new() -> Self {
        RejectLog {
            limiter: LogLimiter::new(1_000_000_000),
            start: Instant::now(),
        }
    }

    fn log(&mut self, topic: &str, e: &InputError) {
        let now = i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX);
        if let Some(suppressed) = self.limiter.allow(e.kind(), now) {
            tracing::warn!(
                topic,
                kind = e.kind().as_str(),
                suppressed,
                "input rejected: {e}"
            );
        }
    }
}

/// Counts an undecodable message and logs it at most once a second per topic.
fn malformed(logic: &SharedLogic, log: &mut LogLimiter, start: Instant, topic: &'static str) {
    lock(logic).on_malformed();
    let now = i64::try_from(start.elapsed().as_nanos()).unwrap_or(i64::MAX);
    if let Some(suppressed) = log.allow(crate::node::RejectKind::Malformed, now) {
        tracing::warn!(topic, suppressed, "undecodable message dropped");
    }
}

/// Asks the fleet about an address met for the first time and merges the answer, at
/// most `wait`; without an answer in time the prediction goes on uncorrected (records
/// that arrive later still count for the next one).
async fn fetch_first(
    logic: &SharedLogic,
    clock: &NodeClock,
    fleet: &dyn FleetPort,
    model: &ModelId,
    fp: &Fingerprint,
    wait: Duration,
) {
    let Some(rx) = fleet.fetch(model, fp) else {
        fleet.interest(model, fp);
        return;
    };
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(found)) => {
            let now = clock.now_ns();
            let mut l = lock(logic);
            for (key, record) in found {
                l.on_record(&key, record, now);
            }
        }
        Ok(Err(_)) => tracing::debug!(fingerprint = %fp, "fleet fetch dropped"),
        Err(_) => {
            tracing::debug!(fingerprint = %fp, "fleet fetch timed out; answering uncorrected")
        }
    }
}

/// The logic's answer to a prediction and the addresses it met meanwhile, in one lock.
fn answer_of(logic: &SharedLogic, p: &Prediction, now_ns: i64) -> (PredictionAnswer, Interests) {
    let mut l = lock(logic);
    let a = l.on_prediction(p, now_ns);
    (a, l.drain_interests().collect())
}

/// Addresses the logic met, to follow.
type Interests = Vec<(ModelId, Fingerprint)>;

/// Publishes a prediction's answer (refused predictions are answered too, and logged by
/// the logic) and follows the addresses the logic met meanwhile.
async fn publish_answer<O: Outputs>(
    fleet: &dyn FleetPort,
    outputs: &O,
    (answer, interests): (PredictionAnswer, Interests),
) {
    for (model, fp) in &interests {
        fleet.interest(model, fp);
    }
    if let Some(prior) = answer.prior()
        && let Err(e) = outputs.prior(prior).await
    {
        tracing::error!(episode_id = %prior.episode_id, "publishing corrected prior: {e}");
    }
}

/// A running node: its logic and the tasks around it.
pub struct Runner {
    logic: SharedLogic,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    clock: NodeClock,
}

impl Runner {
    /// Starts the node's tasks over a binding's `inputs` and `outputs`. Own records go
    /// to `fleet`; records from the fleet arrive on `records`.
    pub fn start<O: Outputs>(
        config: RunnerConfig,
        logic: SharedLogic,
        fleet: Arc<dyn FleetPort>,
        records: mpsc::Receiver<(RecordKey, OutcomeRecord)>,
        inputs: Inputs,
        outputs: Arc<O>,
    ) -> Runner {
        let params = lock(&logic).params().clone();
        let clock = NodeClock {
            sim: params.use_sim_time.then(|| {
                Arc::new(SimTime {
                    now: AtomicI64::new(0),
                    started: tokio::sync::watch::Sender::new(false),
                    unset: AtomicU64::new(0),
                    wait_until: tokio::time::Instant::now() + config.first_clock_wait,
                })
            }),
        };
        let mut runner = Runner {
            logic,
            cancel: CancellationToken::new(),
            tasks: JoinSet::new(),
            clock,
        };
        let first_wait = Duration::from_secs_f64(params.first_encounter_wait_s);
        let Inputs {
            predictions,
            outcomes,
            queries,
            clock: clock_in,
        } = inputs;
        runner.predictions(predictions, fleet.clone(), outputs.clone(), first_wait);
        runner.outcomes(outcomes, fleet.clone(), outputs.clone());
        runner.records(records);
        if let Some(queries) = queries {
            runner.queries(queries);
        }
        if let Some(clock_in) = clock_in {
            runner.sim_clock(clock_in);
        }
        let period = Duration::from_secs_f64(params.diagnostics_period_s);
        runner.diagnostics(config.fqn, period, fleet, outputs);
        runner
    }

    fn predictions<O: Outputs>(
        &mut self,
        mut input: BoxStream<'static, Result<Prediction, Undecodable>>,
        fleet: Arc<dyn FleetPort>,
        outputs: Arc<O>,
        first_wait: Duration,
    ) {
        let (logic, cancel, clock) = (self.logic.clone(), self.cancel.clone(), self.clock.clone());
        self.tasks.spawn(async move {
            // One registration for the task's life, not one per message.
            let cancelled = cancel.cancelled();
            tokio::pin!(cancelled);
            let fetches = Arc::new(Semaphore::new(MAX_FETCHES));
            let mut in_flight = JoinSet::new();
            let (mut log, start) = (LogLimiter::new(1_000_000_000), Instant::now());
            loop {
                let msg = tokio::select! {
                    _ = &mut cancelled => break,
                    m = input.next() => m,
                    // Reaps finished fetches so the set stays as small as what is in flight.
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
                };
                let Some(msg) = msg else { break };
                let Ok(p) = msg else {
                    malformed(&logic, &mut log, start, "prediction");
                    continue;
                };
                clock.ready("prediction").await;
                let intake = {
                    let mut l = lock(&logic);
                    match l.intake(&p, clock.now_ns()) {
                        Intake::Answer(a) => Ok((a, l.drain_interests().collect())),
                        Intake::Fetch(model, fp) => Err((model, fp)),
                    }
                };
                let (model, fp) = match intake {
                    Ok(answered) => {
                        publish_answer(fleet.as_ref(), outputs.as_ref(), answered).await;
                        continue;
                    }
                    Err(first) => first,
                };
                let Ok(permit) = fetches.clone().try_acquire_owned() else {
                    // Too many fetches in flight: follow it, answer with what is held.
                    fleet.interest(&model, &fp);
                    let answered = answer_of(&logic, &p, clock.now_ns());
                    publish_answer(fleet.as_ref(), outputs.as_ref(), answered).await;
                    continue;
                };
                let (logic, clock, fleet, outputs) =
                    (logic.clone(), clock.clone(), fleet.clone(), outputs.clone());
                in_flight.spawn(async move {
                    fetch_first(&logic, &clock, fleet.as_ref(), &model, &fp, first_wait).await;
                    let answered = answer_of(&logic, &p, clock.now_ns());
                    publish_answer(fleet.as_ref(), outputs.as_ref(), answered).await;
                    drop(permit);
                });
            }
            // Fetches in flight at shutdown still answer (each is bounded by its wait).
            while in_flight.join_next().await.is_some() {}
        });
    }

    fn outcomes<O: Outputs>(
        &mut self,
        mut input: BoxStream<'static, Result<Outcome, Undecodable>>,
        fleet: Arc<dyn FleetPort>,
        outputs: Arc<O>,
    ) {
        let (receipts_tx, mut receipts_rx) =
            mpsc::channel::<(Option<oneshot::Receiver<bool>>, Discrepancy)>(DISCREPANCY_QUEUE);
        let receipt_logic = self.logic.clone();
        self.tasks.spawn(async move {
            // Drains the queue to its end after the outcome task stops (at shutdown the
            // link writes what is pending, so every receipt is answered).
            while let Some((receipt, discrepancy)) = receipts_rx.recv().await {
                if let Some(receipt) = receipt
                    && !receipt.await.unwrap_or(false)
                {
                    // The discrepancy is the receipt of a durable outcome: none without.
                    lock(&receipt_logic).on_not_durable();
                    tracing::error!(
                        episode_id = %discrepancy.episode_id,
                        "outcome not written to the store: no discrepancy published"
                    );
                    continue;
                }
                if let Err(e) = outputs.discrepancy(&discrepancy).await {
                    tracing::error!(episode_id = %discrepancy.episode_id, "publishing discrepancy: {e}");
                }
            }
        });
        let (logic, cancel, clock) = (self.logic.clone(), self.cancel.clone(), self.clock.clone());
        self.tasks.spawn(async move {
            // One registration for the task's life, not one per message.
            let cancelled = cancel.cancelled();
            tokio::pin!(cancelled);
            let mut rejects = RejectLog::new();
            let (mut log, start) = (LogLimiter::new(1_000_000_000), Instant::now());
            loop {
                let msg = tokio::select! {
                    _ = &mut cancelled => break,
                    m = input.next() => m,
                };
                let Some(msg) = msg else { break };
                let Ok(o) = msg else {
                    malformed(&logic, &mut log, start, "outcome");
                    continue;
                };
                clock.ready("outcome").await;
                let result = lock(&logic).on_outcome(&o, clock.now_ns());
                match result {
                    Ok(effect) => {
                        let (key, record) = &effect.own_record;
                        let receipt = fleet.own_record_receipt(key, record, effect.share);
                        if receipts_tx
                            .send((receipt, effect.discrepancy))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    Err(e) => rejects.log("outcome", &e),
                }
            }
        });
    }

    fn records(&mut self, mut records: mpsc::Receiver<(RecordKey, OutcomeRecord)>) {
        let (logic, cancel, clock) = (self.logic.clone(), self.cancel.clone(), self.clock.clone());
        self.tasks.spawn(async move {
            // One registration for the task's life, not one per message.
            let cancelled = cancel.cancelled();
            tokio::pin!(cancelled);
            loop {
                let rec = tokio::select! {
                    _ = &mut cancelled => break,
                    r = records.recv() => r,
                };
                let Some((key, record)) = rec else { break };
                let r = lock(&logic).on_record(&key, record, clock.now_ns());
                tracing::trace!(fingerprint = %key.fingerprint, source = %key.source, ?r, "fleet record");
            }
        });
    }

    fn queries(&mut self, mut input: BoxStream<'static, Result<QueryCall, Undecodable>>) {
        let (logic, cancel, clock) = (self.logic.clone(), self.cancel.clone(), self.clock.clone());
        self.tasks.spawn(async move {
            // One registration for the task's life, not one per message.
            let cancelled = cancel.cancelled();
            tokio::pin!(cancelled);
            let (mut log, start) = (LogLimiter::new(1_000_000_000), Instant::now());
            loop {
                let call = tokio::select! {
                    _ = &mut cancelled => break,
                    c = input.next() => c,
                };
                let Some(call) = call else { break };
                let Ok(call) = call else {
                    malformed(&logic, &mut log, start, "query");
                    continue;
                };
                let resp = lock(&logic).query(&call.request, clock.now_ns());
                if let Err(e) = (call.reply)(resp).await {
                    tracing::warn!("query: reply failed: {e}");
                }
            }
        });
    }

    fn sim_clock(&mut self, mut input: BoxStream<'static, Clock>) {
        let Some(sim) = self.clock.sim.clone() else {
            return;
        };
        let cancel = self.cancel.clone();
        self.tasks.spawn(async move {
            // One registration for the task's life, not one per message.
            let cancelled = cancel.cancelled();
            tokio::pin!(cancelled);
            loop {
                let m = tokio::select! {
                    _ = &mut cancelled => break,
                    m = input.next() => m,
                };
                let Some(c) = m else { break };
                sim.now.store(c.clock.as_nanos(), Ordering::Relaxed);
                sim.started
                    .send_if_modified(|s| !std::mem::replace(s, true));
            }
        });
    }

    fn diagnostics<O: Outputs>(
        &mut self,
        fqn: String,
        period: Duration,
        fleet: Arc<dyn FleetPort>,
        outputs: Arc<O>,
    ) {
        let (logic, cancel, clock) = (self.logic.clone(), self.cancel.clone(), self.clock.clone());
        let name = format!("{fqn}: outcome memory");
        self.tasks.spawn(async move {
            // One registration for the task's life, not one per message.
            let cancelled = cancel.cancelled();
            tokio::pin!(cancelled);
            let mut tick = tokio::time::interval(period);
            let mut last = (Instant::now(), 0u64, 0u64, 0u64);
            let mut fleet_rejected_before = 0u64;
            loop {
                tokio::select! {
                    _ = &mut cancelled => break,
                    _ = tick.tick() => {}
                }
                let now = clock.now_ns();
                let (report, source) = {
                    let mut l = lock(&logic);
                    l.expire(now);
                    (l.report(), l.source().as_str().to_owned())
                };
                let c = &report.counters;
                let dt = last.0.elapsed().as_secs_f64().max(1e-9);
                let rate = |n: u64, before: u64| format!("{:.1}", (n - before) as f64 / dt);
                let (fleet_values, fleet_rejected) = fleet.diagnostics();
                // Input refused by the node plus records refused from the network.
                let rejected_now = c.rejected_total() - last.3
                    + fleet_rejected.saturating_sub(fleet_rejected_before);
                fleet_rejected_before = fleet_rejected;
                let mut values = report.key_values();
                values.extend(fleet_values);
                values.push(("prediction_rate_hz".into(), rate(c.predictions, last.1)));
                values.push(("outcome_rate_hz".into(), rate(c.outcomes, last.2)));
                values.push((
                    "rosout_dropped".into(),
                    logging::rosout_dropped().to_string(),
                ));
                values.extend(clock.report());
                values.extend(outputs.transport_diagnostics().await);
                last = (
                    Instant::now(),
                    c.predictions,
                    c.outcomes,
                    c.rejected_total(),
                );
                let (level, message) = if rejected_now > 0 {
                    (
                        DiagnosticStatus::WARN,
                        format!("{rejected_now} inputs rejected since the last report"),
                    )
                } else {
                    (DiagnosticStatus::OK, "ok".to_string())
                };
                let msg = DiagnosticArray {
                    header: Header {
                        stamp: Time::from_nanos(now),
                        frame_id: String::new(),
                    },
                    status: vec![DiagnosticStatus {
                        level,
                        name: name.clone(),
                        message,
                        hardware_id: source,
                        values: values
                            .into_iter()
                            .map(|(key, value)| KeyValue { key, value })
                            .collect(),
                    }],
                };
                if let Err(e) = outputs.diagnostics(&msg).await {
                    tracing::warn!("publishing diagnostics: {e}");
                }
            }
        });
    }

    /// Runs a binding's own task (e.g. `/rosout`) under the runner's cancellation.
    pub fn spawn(&mut self, task: impl FnOnce(CancellationToken) -> BoxFuture<'static, ()>) {
        let fut = task(self.cancel.clone());
        self.tasks.spawn(fut);
    }

    /// The node logic (counters, memory), shared with the node's tasks.
    pub fn logic(&self) -> &SharedLogic {
        &self.logic
    }

    /// The node's current time (ns): the latest `/clock` under `use_sim_time`, else the
    /// system time.
    pub fn now_ns(&self) -> i64 {
        self.clock.now_ns()
    }

    /// Stops every task and waits for them (discrepancies whose records are being
    /// written still go out).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r
                && e.is_panic()
            {
                tracing::error!("node task panicked: {e}");
            }
        }
    }
}
