//! `NodeLogic`: everything `qis_node` does between receiving a message and publishing
//! one, with no binding, no I/O and no clock (time comes in as an argument), so the
//! native and r2r bindings, the tests and the fleet simulator all run the same code.

use std::collections::{HashMap, HashSet};

use nalgebra::DVector;

use crate::core::discrepancy::{Covariance, Discrepancy as Residual};
use crate::core::fingerprint::Fingerprinter;
use crate::core::ids::{Fingerprint, FleetName, ModelId, RecordKey, SourceId};
use crate::core::memory::{Ingest, OutcomeMemory};
use crate::core::neighbor_prior::SpreadCalibration;
use crate::core::neighbors::{MAX_EMBEDDING_DIM, NeighborIndex, Sketch, sketch};
use crate::core::plausibility::{Implausible, RecordBounds, ResidualEnvelope};
use crate::core::privacy::PrivacyBudget;
use crate::core::record::{OutcomeRecord, TimeBase};
use crate::core::shrinkage::Shrinkage;
use crate::core::summary::Summary;
use crate::core::synthesis::{Match, SynthesisConfig};
use crate::core::trust::TrustBook;
use crate::ros::msgs::{
    CorrectedPrior, Discrepancy, Outcome, Prediction, QueryRequest, QueryResponse, Scenario,
};

use super::answer::{self, PredictionAnswer, RefusalLog};
use super::diagnostics::{Counters, RejectKind, Report};
use super::input::{self, InputError};
use super::pairing::{PairingMiss, PairingTable, Pending};
use super::params::{NodeParams, ParamError};

// `ros2 param set`: an `impl NodeLogic` block kept in its own file.
#[path = "runtime_params.rs"]
mod runtime_params;

/// Most first-encounter addresses held for the fleet exchange between two drains.
const MAX_INTERESTS: usize = 1024;

/// What a paired outcome produces.
#[derive(Clone, Debug, PartialEq)]
pub struct OutcomeEffect {
    /// To publish on `discrepancy`.
    pub discrepancy: Discrepancy,
    /// The updated own record: always persisted, shared with the fleet only when `share`.
    pub own_record: (RecordKey, OutcomeRecord),
    /// Whether the address holds `min_count_to_share` own outcomes (privacy budget).
    pub share: bool,
}

impl OutcomeEffect {
    /// The record to share with the fleet, if the privacy budget allows it.
    pub fn record_to_publish(&self) -> Option<&(RecordKey, OutcomeRecord)> {
        self.share.then_some(&self.own_record)
    }
}

/// What the node does with a prediction ([`NodeLogic::intake`]).
// Returned by value once per prediction and never stored: boxing the answer would add
// an allocation to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Intake {
    /// Answer it now.
    Answer(PredictionAnswer),
    /// First ask the fleet about this address, met for the first time.
    Fetch(ModelId, Fingerprint),
}

/// A prediction's validated parts, computed once per prediction.
struct Checked {
    model: ModelId,
    predicted: DVector<f64>,
    predicted_cov: Covariance,
    fingerprint: Fingerprint,
    sketch: Sketch,
}

/// The binding-free node: fingerprints, pairs, synthesizes and counts.
#[derive(Debug)]
pub struct NodeLogic {
    params: NodeParams,
    fleet: FleetName,
    fingerprinter: Fingerprinter,
    memory: OutcomeMemory,
    neighbors: NeighborIndex,
    pairing: PairingTable,
    trust: TrustBook,
    /// The synthesis settings in force: `params.synthesis`, with the plausibility gate
    /// learned from this robot's residuals when none is configured.
    synthesis: SynthesisConfig,
    /// Which model the learned gate in `synthesis` is for (one gate at a time; a robot
    /// rarely runs several world models, and switching recomputes it).
    gate_model: Option<ModelId>,
    envelope: ResidualEnvelope,
    /// Outcomes and stored records since k0 was last learned, and for which model.
    shrinkage_updates: u64,
    shrinkage_model: Option<ModelId>,
    bounds: RecordBounds,
    budget: PrivacyBudget,
    counters: Counters,
    /// Refused predictions logged at WARN so far (once per kind).
    refusals: RefusalLog,
    interests: Vec<(ModelId, Fingerprint)>,
    /// Per model: how far outcomes at borrowed addresses fell from the neighbor prior
    /// (bounded: cleared beyond [`MAX_CALIBRATED_MODELS`]).
    spread_calibration: HashMap<ModelId, SpreadCalibration>,
    /// Addresses already asked of the fleet (bounded: cleared when full, which at worst
    /// repeats a query).
    asked: HashSet<(ModelId, Fingerprint)>,
}

/// Most world models whose neighbor calibration is kept (a robot runs a few).
const MAX_CALIBRATED_MODELS: usize = 64;

/// Most addresses remembered as asked of the fleet.
const MAX_ASKED: usize = 100_000;

/// Outcomes and stored records between two learnings of k0 (each pass reads every
/// address held for the model, so it is amortized over many updates).
const SHRINKAGE_EVERY: u64 = 64;

/// A scenario's exact address and its sketch (for neighbors).
fn address_of(
    fingerprinter: &Fingerprinter,
    s: &Scenario,
) -> Result<(Fingerprint, Sketch), InputError> {
    if s.embedding.len() > MAX_EMBEDDING_DIM {
        return Err(InputError::Oversized {
            what: "scenario.embedding",
            len: s.embedding.len(),
            max: MAX_EMBEDDING_DIM,
        });
    }
    input::finite("scenario.embedding", &s.embedding)?;
    if let Some(index) = s.features.iter().position(|v| !v.is_finite()) {
        return Err(InputError::NonFinite {
            what: "scenario.features",
            index,
            value: s.features[index],
        });
    }
    let canonical = fingerprinter.canonicalize(&s.tags, &s.feature_names, &s.features)?;
    let sk = sketch(&canonical, &s.embedding)?;
    Ok((canonical.fingerprint(), sk))
}

impl NodeLogic {
    /// A node for robot `source` with validated parameters.
    pub fn new(params: NodeParams, source: SourceId) -> Result<Self, ParamError> {
        let fingerprinter = params.validate()?;
        let fleet = FleetName::new(params.fleet.clone()).map_err(|e| ParamError {
            param: "fleet".into(),
            reason: e.to_string(),
        })?;
        let time_base = if params.use_sim_time {
            TimeBase::Sim
        } else {
            TimeBase::Wall
        };
        let mut memory =
            OutcomeMemory::new(source, params.memory.clone(), params.synthesis.decay());
        memory.set_time_base(time_base);
        memory.set_record_time_quantum(params.exchange.time_quantum_s);
        let pairing = PairingTable::new(params.max_pending, params.pending_timeout_ns());
        let mut trust = TrustBook::new(params.trust.clone());
        // A key on the admission list is the source id it names (self-certifying ids).
        trust.vouch(
            params
                .exchange
                .allowed_keys
                .iter()
                .filter_map(|k| SourceId::new(k.trim().to_ascii_lowercase()).ok()),
        );
        let neighbors = NeighborIndex::with_capacity(params.neighbors_max_addresses);
        Ok(NodeLogic {
            synthesis: params.synthesis.clone(),
            gate_model: None,
            envelope: ResidualEnvelope::default(),
            shrinkage_updates: 0,
            shrinkage_model: None,
            bounds: params.validation.bounds(time_base),
            budget: PrivacyBudget {
                min_count: params.min_count_to_share,
            },
            params,
            fleet,
            fingerprinter,
            memory,
            neighbors,
            pairing,
            trust,
            counters: Counters::default(),
            refusals: RefusalLog::default(),
            interests: Vec::new(),
            spread_calibration: HashMap::new(),
            asked: HashSet::new(),
        })
    }

    /// The parameters in force.
    pub fn params(&self) -> &NodeParams {
        &self.params
    }

    /// The fleet this node belongs to.
    pub fn fleet(&self) -> &FleetName {
        &self.fleet
    }

    /// This robot's source id.
    pub fn source(&self) -> &SourceId {
        self.memory.own_source()
    }

    /// The outcome memory (read-only: for persistence and provenance).
    pub fn memory(&self) -> &OutcomeMemory {
        &self.memory
    }

    /// Restores an own record from the store at start-up.
    pub fn restore_own(&mut self, key: &RecordKey, record: OutcomeRecord) {
        self.index(&key.model, key.fingerprint, &record.sketch);
        self.memory.restore_own(&key.model, key.fingerprint, record);
    }

    fn index(&mut self, model: &ModelId, fingerprint: Fingerprint, sketch: &Sketch) {
        if let Err(e) = self.neighbors.insert(model, fingerprint, sketch) {
            // Only faiss itself can fail here; the exact address still works without it.
            tracing::warn!(%fingerprint, "neighbor index: {e}");
        }
    }

    /// Outcomes held at an exact address (own and received, undecayed).
    fn exact_count(&self, model: &ModelId, fingerprint: &Fingerprint) -> u64 {
        self.memory.address(model, fingerprint).map_or(0, |a| {
            a.own.as_ref().map_or(0, |o| o.1.count())
                + a.received.iter().map(|r| r.summary.count()).sum::<u64>()
        })
    }

    fn count<T>(&mut self, r: Result<T, InputError>) -> Result<T, InputError> {
        if let Err(e) = &r {
            self.counters.reject(e.kind());
        }
        r
    }

    /// The address of a prediction this node holds nothing about and has not asked the
    /// fleet for yet (then marked as asked): the binding fetches it from the fleet before
    /// answering, so even the first prediction at an address is corrected. `None` for
    /// known addresses and for input that `on_prediction` will refuse.
    pub fn first_encounter(&mut self, p: &Prediction) -> Option<(ModelId, Fingerprint)> {
        let c = self.check(p).ok()?;
        self.mark_first(&c.model, c.fingerprint)
            .then_some((c.model, c.fingerprint))
    }

    /// What to do with a prediction, with its address computed once: ask the fleet
    /// first ([`Intake::Fetch`]: an address met for the first time, now marked as asked;
    /// call [`Self::on_prediction`] once the answer is merged), or the answer itself.
    pub fn intake(&mut self, p: &Prediction, now_ns: i64) -> Intake {
        let r = match self.check(p) {
            Ok(c) if self.mark_first(&c.model, c.fingerprint) => {
                return Intake::Fetch(c.model, c.fingerprint);
            }
            Ok(c) => self.correct(p, now_ns, c),
            Err(e) => Err(e),
        };
        Intake::Answer(self.finish(p, r))
    }

    /// Whether an address is held by nothing here and not asked of the fleet yet; then
    /// marks it as asked.
    fn mark_first(&mut self, model: &ModelId, fingerprint: Fingerprint) -> bool {
        if self.memory.address(model, &fingerprint).is_some() {
            return false;
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.clear();
        }
        self.asked.insert((model.clone(), fingerprint))
    }

    /// Answers a prediction. Accepted, it gets its corrected prior and is kept for its
    /// outcome; refused, it is counted, logged once per kind and still answered whenever
    /// something can be echoed (the rules, duplicates included, are in [`super::answer`]),
    /// so a planner waiting on `corrected_prior` never starves. The bindings publish
    /// [`PredictionAnswer::prior`] and nothing else.
    pub fn on_prediction(&mut self, p: &Prediction, now_ns: i64) -> PredictionAnswer {
        let r = self.check(p).and_then(|c| self.correct(p, now_ns, c));
        self.finish(p, r)
    }

    /// Turns the outcome of a correction into the answer: refusals counted, logged once
    /// per kind, and echoed where something can be.
    fn finish(
        &mut self,
        p: &Prediction,
        r: Result<PredictionAnswer, InputError>,
    ) -> PredictionAnswer {
        let answer = match r {
            Ok(a) => a,
            Err(reason) => {
                let prior = answer::echo(p, self.synthesis.default_variance);
                if prior.is_some() {
                    self.counters.predictions_uncorrected += 1;
                } else {
                    self.counters.predictions_unanswered += 1;
                }
                PredictionAnswer::Refused { prior, reason }
            }
        };
        if let PredictionAnswer::Refused { prior, reason } = &answer {
            self.counters.reject(reason.kind());
            self.refusals.log(reason, &p.episode_id, prior.is_some());
        }
        answer
    }

    /// Validates a prediction and computes its address (fingerprint and sketch).
    fn check(&self, p: &Prediction) -> Result<Checked, InputError> {
        input::episode_id(&p.episode_id)?;
        let model = ModelId::new(p.model_id.as_str()).map_err(InputError::BadId)?;
        let predicted = input::state("state", &p.state)?;
        let predicted_cov = Covariance::from_flat(&p.covariance, predicted.len())?;
        let (fingerprint, sketch) = address_of(&self.fingerprinter, &p.scenario)?;
        Ok(Checked {
            model,
            predicted,
            predicted_cov,
            fingerprint,
            sketch,
        })
    }

    /// Corrects a checked prediction: `Accepted`, or `Refused` with its corrected prior when
    /// only the pairing refuses it (a duplicate episode); `Err` when it cannot be corrected.
    fn correct(
        &mut self,
        p: &Prediction,
        now_ns: i64,
        c: Checked,
    ) -> Result<PredictionAnswer, InputError> {
        let Checked {
            model,
            predicted,
            predicted_cov,
            fingerprint,
            sketch,
        } = c;
        // Decided before expiry: an episode pending on arrival (even one timing out now)
        // or paired recently is a duplicate, never silently entered a second time.
        let duplicate = self.pairing.is_known(&p.episode_id);
        let refused_duplicate = |prior: CorrectedPrior| PredictionAnswer::Refused {
            prior: Some(prior),
            reason: InputError::Duplicate {
                episode_id: p.episode_id.clone(),
                what: "prediction",
            },
        };
        self.expire(now_ns);
        if self.memory.address(&model, &fingerprint).is_none()
            && self.interests.len() < MAX_INTERESTS
            && !self.asked.contains(&(model.clone(), fingerprint))
        {
            self.interests.push((model.clone(), fingerprint));
        }
        // Neighbors are searched only when the exact address is thin, which keeps the
        // faiss search off the path of well-known scenarios. Thin by the raw count, or
        // by the synthesis's own test (young sources count as support only up to their
        // cap), which the first answer reports.
        self.refresh_gate(&model);
        self.refresh_prior_strength(&model);
        let thin = (self.exact_count(&model, &fingerprint) as f64) < self.synthesis.min_support;
        let mut neighbors = if thin {
            self.nearest(&model, &fingerprint, &sketch)
        } else {
            Vec::new()
        };
        let prior_with = |this: &mut Self, neighbors: &[_]| {
            this.prior_at(
                &model,
                &fingerprint,
                neighbors,
                &predicted,
                &predicted_cov,
                now_ns,
            )
        };
        let mut prior = prior_with(self, &neighbors)?;
        if !thin && prior.borrowed {
            neighbors = self.nearest(&model, &fingerprint, &sketch);
            if !neighbors.is_empty() {
                prior = prior_with(self, &neighbors)?;
            }
        }
        if !(prior.state.iter().all(|v| v.is_finite())
            && prior.covariance.iter().all(|v| v.is_finite()))
        {
            // Bounded records make this unreachable; the guard keeps the promise anyway.
            self.counters.priors_non_finite += 1;
            tracing::warn!(%fingerprint, "non-finite prior replaced by the prediction");
            prior = crate::core::synthesis::synthesize(
                &self.synthesis,
                &predicted,
                predicted_cov.to_matrix().as_ref(),
                &[],
                now_ns,
            )
            .map_err(crate::core::memory::MemoryError::from)?;
        }
        let msg = CorrectedPrior {
            header: p.header.clone(),
            episode_id: p.episode_id.clone(),
            model_id: p.model_id.clone(),
            fingerprint: fingerprint.to_hex(),
            r#match: match prior.matched {
                Match::None => CorrectedPrior::MATCH_NONE,
                Match::Exact => CorrectedPrior::MATCH_EXACT,
                Match::Neighbor => CorrectedPrior::MATCH_NEIGHBOR,
            },
            state: prior.state.as_slice().to_vec(),
            covariance: input::row_major(&prior.covariance),
            correction: prior.correction.as_slice().to_vec(),
            support: u32::try_from(prior.support).unwrap_or(u32::MAX),
            sources: prior.sources,
            confidence: prior.confidence as f32,
        };
        if duplicate {
            return Ok(refused_duplicate(msg));
        }
        let pending = Pending {
            model,
            fingerprint,
            sketch,
            predicted,
            predicted_cov,
            corrected: prior.state,
            arrived_ns: now_ns,
            checks: prior.checks,
        };
        match self.pairing.insert(&p.episode_id, pending) {
            Ok(evicted) => self.counters.pending_evicted += evicted as u64,
            // is_known was checked above and nothing since inserts into the table.
            Err(_) => return Ok(refused_duplicate(msg)),
        }
        self.counters.predictions += 1;
        Ok(PredictionAnswer::Accepted(msg))
    }

    /// The nearest known addresses of a scenario (empty if the search fails: the exact
    /// address still works without it).
    fn nearest(
        &self,
        model: &ModelId,
        fingerprint: &Fingerprint,
        sketch: &Sketch,
    ) -> Vec<(Fingerprint, f32)> {
        self.neighbors
            .nearest(model, sketch, self.params.neighbors_k)
            .unwrap_or_else(|e| {
                tracing::warn!(%fingerprint, "neighbor search: {e}");
                Vec::new()
            })
    }

    /// The memory's corrected prior at an address, with this node's synthesis settings,
    /// trust and (when neighbors are given) the model's calibration λ.
    fn prior_at(
        &mut self,
        model: &ModelId,
        fingerprint: &Fingerprint,
        neighbors: &[(Fingerprint, f32)],
        predicted: &DVector<f64>,
        predicted_cov: &Covariance,
        now_ns: i64,
    ) -> Result<crate::core::synthesis::Prior, InputError> {
        if !neighbors.is_empty() {
            // λ of this model (the synthesis settings hold one model's at a time).
            self.synthesis.learned_spread_scale = self
                .spread_calibration
                .get(model)
                .map(SpreadCalibration::scales)
                .unwrap_or_default();
        }
        let trust = &self.trust;
        Ok(self.memory.prior(
            &self.synthesis,
            model,
            fingerprint,
            neighbors,
            predicted,
            predicted_cov.to_matrix().as_ref(),
            &|s| trust.source(s),
            now_ns,
        )?)
    }

    /// Pairs an outcome with its prediction: the discrepancy to publish and the updated
    /// own record to share.
    pub fn on_outcome(&mut self, o: &Outcome, now_ns: i64) -> Result<OutcomeEffect, InputError> {
        let r = self.outcome(o, now_ns);
        self.count(r)
    }

    fn outcome(&mut self, o: &Outcome, now_ns: i64) -> Result<OutcomeEffect, InputError> {
        input::episode_id(&o.episode_id)?;
        self.shrinkage_updates += 1;
        let measured = input::state("outcome.state", &o.state)?;
        let measured_cov = Covariance::from_flat(&o.covariance, measured.len())?;
        self.expire(now_ns);
        let miss = |m: PairingMiss| match m {
            PairingMiss::Duplicate => InputError::Duplicate {
                episode_id: o.episode_id.clone(),
                what: "paired outcome",
            },
            PairingMiss::Unknown => InputError::NoPrediction {
                episode_id: o.episode_id.clone(),
            },
        };
        let pending = self.pairing.get(&o.episode_id).map_err(miss)?;
        let n = pending.predicted.len();
        let max = self.params.validation.max_abs_residual;
        if measured.len() != n {
            return Err(InputError::DimensionMismatch {
                what: "outcome.state (prediction's dimension)",
                expected: n.to_string(),
                got: measured.len(),
            });
        }
        // Computed before the prediction is taken: a refused outcome leaves it pending.
        let r = Residual::compute(
            pending.predicted.as_slice(),
            &o.state,
            &pending.predicted_cov.sum(&measured_cov),
        )?;
        if let Some((index, value)) = r.residual.iter().enumerate().find(|(_, v)| v.abs() > max) {
            // Refused before it touches the summary, which would overflow (and then be
            // refused by peers and lost at the next restart); the prediction stays pending.
            return Err(InputError::HugeOutcome {
                index,
                value: *value,
                max,
            });
        }
        if self
            .memory
            .own_full_for(&pending.model, &pending.fingerprint)
        {
            // Checked before the prediction is taken: refused, it stays pending.
            let max = self.params.memory.max_own_addresses;
            return Err(InputError::Oversized {
                what: "own addresses (memory.max_own_addresses)",
                len: max + 1,
                max,
            });
        }
        let p = self.pairing.take(&o.episode_id).map_err(miss)?;
        // Trust earned from outcomes: every source held here is judged by what was just
        // measured, before the outcome joins the own summary.
        if let Some(addr) = self.memory.address(&p.model, &p.fingerprint) {
            for held in &addr.received {
                // A record that predates a drift detected here is not judged by the
                // changed world: its source was right when it wrote it.
                if addr.post_change_share(&held.summary) < 1.0 {
                    continue;
                }
                self.trust
                    .observe(&held.source, held.summary.mean().as_slice(), &r.residual);
            }
        }
        // With differential privacy the own summary holds clipped residuals, which bounds
        // what one outcome can change in a released record (core::privacy::DpConfig).
        let dp = &self.params.exchange.differential_privacy;
        let clipped;
        let folded: &[f64] = if dp.enabled() {
            let mut c = r.residual.clone();
            dp.clip_residual(&mut c);
            clipped = c;
            &clipped
        } else {
            &r.residual
        };
        let recorded = self.memory.fold_outcome(
            &p.model,
            p.fingerprint,
            p.sketch,
            folded,
            now_ns,
            Some(&self.synthesis.learned_within_variance),
        )?;
        if let Some(drift) = recorded.drift {
            self.counters.drift_detected += 1;
            tracing::info!(
                model_id = %p.model, fingerprint = %p.fingerprint,
                dimension = drift.dimension, shift = drift.shift, since_ns = drift.since_ns,
                "drift: recent outcomes disagree with the address's summary; a fresh epoch starts"
            );
        }
        let record = recorded.record;
        if !p.checks.is_empty() {
            if self.spread_calibration.len() >= MAX_CALIBRATED_MODELS
                && !self.spread_calibration.contains_key(&p.model)
            {
                self.spread_calibration.clear();
            }
            self.spread_calibration
                .entry(p.model.clone())
                .or_default()
                .observe(&p.checks, &r.residual);
        }
        let stated = pending_sd(&p.predicted_cov.sum(&measured_cov), n);
        if self
            .envelope
            .observe(&p.model, &r.residual, stated.as_deref())
            && self.gate_model.as_ref() == Some(&p.model)
        {
            self.gate_model = None;
        }
        self.index(&p.model, p.fingerprint, &p.sketch);
        self.counters.outcomes += 1;
        self.counters.raw_error_sum += r.error_norm;
        self.counters.corrected_error_sum += (&measured - &p.corrected).norm();
        let shared = self
            .memory
            .take_share(&p.model, &p.fingerprint, self.budget);
        let discrepancy = Discrepancy {
            header: o.header.clone(),
            episode_id: o.episode_id.clone(),
            model_id: p.model.as_str().to_owned(),
            fingerprint: p.fingerprint.to_hex(),
            residual: r.residual,
            error_norm: r.error_norm,
            mahalanobis: r.mahalanobis,
        };
        if shared {
            self.counters.records_published += 1;
        }
        let key = RecordKey {
            model: p.model,
            fingerprint: p.fingerprint,
            source: self.memory.own_source().clone(),
        };
        Ok(OutcomeEffect {
            discrepancy,
            own_record: (key, record),
            share: shared,
        })
    }

    /// Checks a record received from the fleet against the record bounds (time base,
    /// clock skew, count, weights, magnitude) as seen at `now_ns`, and merges it.
    pub fn on_record(&mut self, key: &RecordKey, record: OutcomeRecord, now_ns: i64) -> Ingest {
        // Below the fleet's privacy budget: a record no honest node sends (it shares an
        // address only after `min_count_to_share` outcomes), so a node that sends it
        // ignores the fleet's rules; its outcomes would also outnumber honest ones at
        // thin addresses, where borrowed neighbors decide the prior.
        if record.summary.count() < self.budget.min_count {
            self.counters.reject(RejectKind::ImplausibleRecord);
            tracing::debug!(source = %key.source, fingerprint = %key.fingerprint, count = record.summary.count(), "fleet record below the privacy budget refused");
            if key.source != *self.memory.own_source() {
                self.trust.observe(&key.source, &[f64::INFINITY], &[0.0]);
            }
            return Ingest::Refused;
        }
        if let Err(e) = self.bounds.check(&record, now_ns) {
            self.counters.reject(match e {
                Implausible::Future { .. } => RejectKind::FutureRecord,
                Implausible::TimeBase { .. } => RejectKind::TimeBaseRecord,
                _ => RejectKind::ImplausibleRecord,
            });
            // Debug: a hostile peer must not be able to flood the log; counters carry it.
            tracing::debug!(source = %key.source, fingerprint = %key.fingerprint, kind = e.kind(), "fleet record refused: {e}");
            // A claim no honest node makes is also a miss for trust.
            if key.source != *self.memory.own_source() {
                self.trust.observe(&key.source, &[f64::INFINITY], &[0.0]);
            }
            return Ingest::Refused;
        }
        self.refresh_gate(&key.model);
        let sketch = record.sketch;
        // Counted only for records the memory stores, so a replay is not counted twice.
        let implausible = self.trust.judge_record(
            self.memory.own_source(),
            &key.source,
            &record.summary,
            self.memory.own_summary(&key.model, &key.fingerprint),
            &self.synthesis.max_residual,
        );
        let r = self.memory.ingest(key, record);
        match r {
            Ingest::Stored => {
                self.counters.records_received += 1;
                self.shrinkage_updates += 1;
                if implausible {
                    self.counters.records_implausible += 1;
                    tracing::debug!(source = %key.source, fingerprint = %key.fingerprint, "fleet record beyond the plausibility gate: kept, given no weight");
                }
                self.index(&key.model, key.fingerprint, &sketch);
            }
            // A replay of what is held is the normal result of anti-entropy, not an error;
            // counted apart, so a flood of replays shows in the diagnostics.
            Ingest::Stale => self.counters.records_stale += 1,
            Ingest::OwnSource | Ingest::DimensionConflict => {
                self.counters.reject(RejectKind::FleetRecord)
            }
            Ingest::Refused => {}
        }
        r
    }

    /// Counts an outcome whose record did not become durable (no receipt was sent).
    pub fn on_not_durable(&mut self) {
        self.counters.outcomes_not_durable += 1;
    }

    /// Counts a message the binding could not decode.
    pub fn on_malformed(&mut self) {
        self.counters.reject(RejectKind::Malformed);
    }

    /// Drops predictions that waited longer than `pending_timeout_s`.
    pub fn expire(&mut self, now_ns: i64) -> usize {
        let n = self.pairing.expire(now_ns);
        self.counters.pending_expired += n as u64;
        n
    }

    /// Addresses met for the first time since the last call (for [`super::FleetPort::interest`]).
    pub fn drain_interests(&mut self) -> std::vec::Drain<'_, (ModelId, Fingerprint)> {
        self.interests.drain(..)
    }

    /// The fleet's summary at a scenario's address, with provenance (the `query` service).
    pub fn query(&mut self, q: &QueryRequest, now_ns: i64) -> QueryResponse {
        match self.query_inner(q, now_ns) {
            Ok(r) => r,
            Err(e) => QueryResponse {
                error: e.to_string(),
                ..QueryResponse::default()
            },
        }
    }

    fn query_inner(&mut self, q: &QueryRequest, now_ns: i64) -> Result<QueryResponse, InputError> {
        let model = ModelId::new(q.model_id.as_str()).map_err(InputError::BadId)?;
        let (fingerprint, _) = address_of(&self.fingerprinter, &q.scenario)?;
        let mut out = QueryResponse {
            fingerprint: fingerprint.to_hex(),
            ..QueryResponse::default()
        };
        let decay = self.synthesis.decay();
        self.refresh_gate(&model);
        let Some(addr) = self.memory.address(&model, &fingerprint) else {
            return Ok(out);
        };
        // Same order as the contributions of `OutcomeMemory::prior`: own, then received.
        let mut parts: Vec<(&SourceId, u64, &Summary)> = Vec::new();
        if let Some((seq, s)) = &addr.own {
            parts.push((self.memory.own_source(), seq.0, s));
        }
        parts.extend(
            addr.received
                .iter()
                .map(|r| (&r.source, r.seq.0, &r.summary)),
        );
        let Some(dim) = parts.first().map(|p| p.2.dim()) else {
            return Ok(out);
        };
        let mut pooled = parts[0].2.decayed_to(now_ns, decay);
        for (_, _, s) in &parts[1..] {
            pooled
                .merge(s, decay)
                .map_err(crate::core::memory::MemoryError::from)?;
        }
        out.mean_residual = pooled.mean().as_slice().to_vec();
        out.residual_covariance = input::row_major(&pooled.covariance());
        out.source_ids = parts.iter().map(|p| p.0.as_str().to_owned()).collect();
        out.source_seqs = parts.iter().map(|p| p.1).collect();
        let zero = DVector::zeros(dim);
        let trust = &self.trust;
        let prior = self.memory.prior(
            &self.synthesis,
            &model,
            &fingerprint,
            &[],
            &zero,
            None,
            &|s| trust.source(s),
            now_ns,
        )?;
        out.r#match = match prior.matched {
            Match::None => CorrectedPrior::MATCH_NONE,
            Match::Exact => CorrectedPrior::MATCH_EXACT,
            Match::Neighbor => CorrectedPrior::MATCH_NEIGHBOR,
        };
        out.support = u32::try_from(prior.support).unwrap_or(u32::MAX);
        out.sources = prior.sources;
        out.source_weights = prior.weights;
        Ok(out)
    }

    /// Puts the plausibility gate for `model` in force: the configured
    /// `synthesis.max_residual`, else `validation.envelope_margin ×` this robot's residual
    /// envelope once it holds `validation.envelope_min_outcomes` own outcomes of the model.
    fn refresh_gate(&mut self, model: &ModelId) {
        if !self.params.synthesis.max_residual.is_empty() || self.gate_model.as_ref() == Some(model)
        {
            return;
        }
        match self.params.validation.learned_gate(&self.envelope, model) {
            Some(gate) => {
                self.synthesis.max_residual = gate;
                self.gate_model = Some(model.clone());
            }
            None => self.synthesis.max_residual.clear(),
        }
    }

    /// Learns k0 per dimension from what the node holds for `model` (empirical Bayes,
    /// [`crate::core::shrinkage`]) every [`SHRINKAGE_EVERY`] updates, unless one is
    /// configured. Counted: its own summaries, and received ones from sources not caught
    /// lying (trust at least the initial weight) that pass the plausibility gate, so
    /// hostile claims cannot widen the spread of biases to make priors credulous.
    fn refresh_prior_strength(&mut self, model: &ModelId) {
        if self.params.synthesis.prior_strength > 0.0
            || (self.shrinkage_model.as_ref() == Some(model)
                && self.shrinkage_updates < SHRINKAGE_EVERY)
        {
            return;
        }
        self.shrinkage_updates = 0;
        self.shrinkage_model = Some(model.clone());
        let (trust, synthesis) = (&self.trust, &self.synthesis);
        let floor = self.params.trust.initial;
        let learned =
            crate::core::shrinkage::learn_shrinkage(self.memory.addresses_of(model).map(|a| {
                let own = a.own.as_ref().map(|o| &o.1);
                let received = a
                    .received
                    .iter()
                    .filter(|r| {
                        let t = trust.source(&r.source);
                        t.weight >= floor && synthesis.plausible(r.summary.mean().as_slice())
                    })
                    .map(|r| &r.summary);
                own.into_iter().chain(received)
            }))
            .unwrap_or(Shrinkage {
                prior_strength: Vec::new(),
                within_variance: Vec::new(),
                between_variance: Vec::new(),
            });
        let s = &mut self.synthesis;
        if learned.prior_strength != s.learned_prior_strength
            || learned.within_variance != s.learned_within_variance
            || learned.between_variance != s.learned_bias_variance
        {
            s.learned_prior_strength = learned.prior_strength;
            s.learned_within_variance = learned.within_variance;
            s.learned_bias_variance = learned.between_variance;
            self.memory.drop_estimates();
        }
    }

    /// The prior strength k0 in force per state dimension (empty = the fallback or the
    /// configured one: see [`SynthesisConfig::k0`]).
    pub fn learned_prior_strength(&self) -> &[f64] {
        &self.synthesis.learned_prior_strength
    }

    /// The trust this node gives each source (read-only: for reports and the simulator).
    pub fn trust(&self) -> &TrustBook {
        &self.trust
    }

    /// The plausibility gate in force per state component (empty = none yet).
    pub fn plausibility_gate(&self) -> &[f64] {
        &self.synthesis.max_residual
    }

    /// A health report for `/diagnostics`.
    pub fn report(&self) -> Report {
        Report {
            counters: self.counters.clone(),
            pending: self.pairing.len(),
            addresses: self.memory.addresses_len(),
            received_records: self.memory.received_len(),
            trust_sources: self.trust.len(),
            trust_distrusted: self.trust.distrusted(0.5),
            trust_young: self.trust.young(),
            dp: self.params.exchange.differential_privacy.clone(),
            neighbors_evicted: self.neighbors.evicted(),
            shadow_mode: self.params.shadow_mode,
        }
    }
}

/// Standard deviation per component that a covariance states, if it states one.
fn pending_sd(cov: &Covariance, n: usize) -> Option<Vec<f64>> {
    cov.to_matrix()
        .map(|m| (0..n).map(|i| m[(i, i)].max(0.0).sqrt()).collect())
}
