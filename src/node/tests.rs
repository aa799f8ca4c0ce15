//! Unit tests of `NodeLogic`: pairing, correction, fleet input, rejection counting.

use super::*;
use crate::core::ids::{RecordKey, SourceId};
use crate::core::record::OutcomeRecord;
use crate::ros::msgs::{Outcome, Prediction, QueryRequest, Scenario};

const S: i64 = 1_000_000_000;
/// A time after every record the tests make (records are checked against clock skew).
const LATER: i64 = 1_000_000 * S;

fn node(source: &str, params: NodeParams) -> NodeLogic {
    NodeLogic::new(params, SourceId::new(source).unwrap()).unwrap()
}

fn scenario(tag: &str) -> Scenario {
    Scenario {
        tags: vec![tag.into()],
        ..Scenario::default()
    }
}

fn prediction(ep: &str, tag: &str, state: &[f64]) -> Prediction {
    Prediction {
        episode_id: ep.into(),
        model_id: "wm-1".into(),
        scenario: scenario(tag),
        state: state.to_vec(),
        ..Prediction::default()
    }
}

fn outcome(ep: &str, state: &[f64]) -> Outcome {
    Outcome {
        episode_id: ep.into(),
        state: state.to_vec(),
        ..Outcome::default()
    }
}

/// Runs `n` episodes in scenario `tag` where reality is the prediction + `bias`.
fn learn(node: &mut NodeLogic, tag: &str, n: usize, bias: f64, t0: i64) -> Vec<OutcomeEffect> {
    (0..n)
        .map(|i| {
            let ep = format!("{tag}-{t0}-{i}");
            let t = t0 + i as i64 * S;
            node.on_prediction(&prediction(&ep, tag, &[1.0, 2.0]), t)
                .accepted()
                .unwrap();
            node.on_outcome(&outcome(&ep, &[1.0 + bias, 2.0]), t + 1)
                .unwrap()
        })
        .collect()
}

/// The record the last of `effects` shares with the fleet.
fn last_shared(effects: &[OutcomeEffect]) -> (RecordKey, OutcomeRecord) {
    effects
        .last()
        .and_then(OutcomeEffect::record_to_publish)
        .cloned()
        .expect("the last outcome shares its record")
}

#[test]
fn first_prediction_is_unchanged_then_learns_the_bias() {
    let mut n = node("robot-a", NodeParams::default());
    let first = n
        .on_prediction(&prediction("e0", "weather=rain", &[1.0, 2.0]), 0)
        .accepted()
        .unwrap();
    assert_eq!(first.r#match, crate::ros::msgs::CorrectedPrior::MATCH_NONE);
    assert_eq!(first.state, vec![1.0, 2.0]);
    assert_eq!(first.support, 0);
    assert_eq!(first.fingerprint.len(), 32);
    let eff = n.on_outcome(&outcome("e0", &[1.5, 2.0]), 1).unwrap();
    assert_eq!(eff.discrepancy.residual, vec![0.5, 0.0]);
    assert_eq!(eff.discrepancy.error_norm, 0.5);
    assert!(eff.discrepancy.mahalanobis.is_nan());
    assert_eq!(eff.discrepancy.fingerprint, first.fingerprint);
    assert!(
        eff.record_to_publish().is_none(),
        "privacy budget: one outcome is never shared"
    );
    let (key, rec) = &eff.own_record;
    assert_eq!(key.source.as_str(), "robot-a");
    assert_eq!(rec.summary.count(), 1);
    learn(&mut n, "weather=rain", 40, 0.5, 10 * S);
    let p = n
        .on_prediction(&prediction("e-last", "weather=rain", &[1.0, 2.0]), 100 * S)
        .accepted()
        .unwrap();
    assert_eq!(p.r#match, crate::ros::msgs::CorrectedPrior::MATCH_EXACT);
    assert_eq!(p.support, 41);
    // k0 = 5, n = 41: the correction is w·0.5 with w = 41/46.
    assert!(
        (p.correction[0] - 0.5 * 41.0 / 46.0).abs() < 1e-3,
        "{:?}",
        p.correction
    );
    assert!(p.correction[1].abs() < 1e-12);
    let r = n.report();
    assert_eq!(r.counters.predictions, 42);
    assert_eq!(r.counters.outcomes, 41);
    assert_eq!(r.pending, 1);
    // The corrections learned along the way removed error.
    assert!(r.counters.error_removed() > 0.0);
}

/// A record with fewer outcomes than the fleet's privacy budget is one no honest node
/// sends: refused and counted, and the same record passes a node whose fleet shares
/// every record (k = 1).
#[test]
fn records_below_the_privacy_budget_are_refused_and_counted() {
    let mut sharer = node(
        "robot-s",
        NodeParams {
            min_count_to_share: 1,
            ..NodeParams::default()
        },
    );
    let effects = learn(&mut sharer, "road=ice", 3, 0.5, 0);
    let (key, rec) = effects[2].own_record.clone();
    assert_eq!(rec.summary.count(), 3);
    let mut b = node("robot-b", NodeParams::default());
    assert_eq!(
        b.on_record(&key, rec.clone(), LATER),
        crate::core::memory::Ingest::Refused
    );
    assert_eq!(
        b.report()
            .counters
            .rejected(super::RejectKind::ImplausibleRecord),
        1
    );
    assert_eq!(b.memory().received_len(), 0);
    let mut k1 = node(
        "robot-k",
        NodeParams {
            min_count_to_share: 1,
            ..NodeParams::default()
        },
    );
    assert_eq!(
        k1.on_record(&key, rec, LATER),
        crate::core::memory::Ingest::Stored
    );
}

#[test]
fn records_beyond_the_plausibility_gate_are_counted_and_given_no_weight() {
    let mut liar = node("robot-l", NodeParams::default());
    let mut params = NodeParams::default();
    params.synthesis.max_residual = vec![5.0];
    let mut b = node("robot-b", params);
    let effects = learn(&mut liar, "road=ice", 20, 50.0, 0);
    let (key, rec) = last_shared(&effects);
    assert_eq!(
        b.on_record(&key, rec.clone(), LATER),
        crate::core::memory::Ingest::Stored
    );
    assert_eq!(
        b.on_record(&key, rec, LATER),
        crate::core::memory::Ingest::Stale
    );
    let p = b
        .on_prediction(&prediction("b0", "road=ice", &[1.0, 2.0]), 30 * S)
        .accepted()
        .unwrap();
    assert_eq!(
        p.state,
        vec![1.0, 2.0],
        "the claim of a 50 m error is ignored"
    );
    assert_eq!(p.r#match, crate::ros::msgs::CorrectedPrior::MATCH_NONE);
    let c = b.report().counters;
    assert_eq!((c.records_received, c.records_implausible), (1, 1));
}

#[test]
fn a_source_whose_claims_miss_this_robots_outcomes_loses_its_weight_everywhere() {
    let mut liar = node("robot-l", NodeParams::default());
    let mut b = node("robot-b", NodeParams::default());
    // B knows "road=wet" from its own outcomes (reality = prediction + 1).
    learn(&mut b, "road=wet", 10, 1.0, 0);
    // The liar claims +20 at road=wet and at road=ice, which B has never met.
    let claim = |tag: &str, n: &mut NodeLogic| {
        let effects = learn(n, tag, 10, 20.0, 100 * S);
        last_shared(&effects)
    };
    let (wet_key, wet) = claim("road=wet", &mut liar);
    let (ice_key, ice) = claim("road=ice", &mut liar);
    b.on_record(&wet_key, wet, LATER);
    let r = b.report();
    assert_eq!(
        (r.trust_sources, r.trust_distrusted),
        (1, 1),
        "judged on arrival"
    );
    b.on_record(&ice_key, ice.clone(), LATER);
    let p = b
        .on_prediction(&prediction("b-ice", "road=ice", &[1.0, 2.0]), 200 * S)
        .accepted()
        .unwrap();
    assert!(
        p.correction[0] < 2.0,
        "a distrusted source barely moves a first encounter: {:?}",
        p.correction
    );
    // With trust off the same record would pull it most of the way to +20.
    let mut trusting = node(
        "robot-t",
        NodeParams {
            trust: crate::core::trust::TrustConfig {
                tolerance: 0.0,
                ..Default::default()
            },
            ..NodeParams::default()
        },
    );
    trusting.on_record(&ice_key, ice, LATER);
    let q = trusting
        .on_prediction(&prediction("t-ice", "road=ice", &[1.0, 2.0]), 200 * S)
        .accepted()
        .unwrap();
    assert!(q.correction[0] > 10.0, "{:?}", q.correction);
}

#[test]
fn fleet_records_correct_another_robots_first_encounter() {
    let mut a = node("robot-a", NodeParams::default());
    let mut b = node("robot-b", NodeParams::default());
    // B earns trust in A only from its own outcomes: A's records arriving at an address
    // B knows earn nothing, B's next outcomes there that agree with A's claim do.
    let wet_a = learn(&mut a, "road=wet", 15, 0.3, 0);
    learn(&mut b, "road=wet", 5, 0.3, 0);
    for e in wet_a.iter().filter_map(OutcomeEffect::record_to_publish) {
        b.on_record(&e.0, e.1.clone(), LATER);
    }
    assert_eq!(
        b.report().trust_sources,
        0,
        "agreeing arrivals earn nothing"
    );
    learn(&mut b, "road=wet", 3, 0.3, 100 * S);
    let r = b.report();
    assert_eq!(
        (r.trust_sources, r.trust_young),
        (1, 0),
        "A earned full weight"
    );
    let effects = learn(&mut a, "road=ice", 20, -1.0, 0);
    let (key, rec) = last_shared(&effects);
    assert_eq!(
        b.on_record(&key, rec.clone(), LATER),
        crate::core::memory::Ingest::Stored
    );
    // The same record again is a replay, not counted as received twice.
    assert_eq!(
        b.on_record(&key, rec, LATER),
        crate::core::memory::Ingest::Stale
    );
    let p = b
        .on_prediction(&prediction("b0", "road=ice", &[1.0, 2.0]), 30 * S)
        .accepted()
        .unwrap();
    assert_eq!(p.r#match, crate::ros::msgs::CorrectedPrior::MATCH_EXACT);
    assert_eq!(p.sources, 1);
    assert!(p.correction[0] < -0.7, "{:?}", p.correction);
    assert_eq!(b.report().counters.records_received, 4);
    assert_eq!(b.report().counters.records_implausible, 0);
    let q = b.query(
        &QueryRequest {
            scenario: scenario("road=ice"),
            model_id: "wm-1".into(),
        },
        30 * S,
    );
    assert_eq!(q.error, "");
    assert_eq!(q.source_ids, vec!["robot-a".to_string()]);
    assert_eq!(q.source_seqs, vec![20]);
    assert!((q.mean_residual[0] + 1.0).abs() < 1e-9);
    assert_eq!(q.support, 20);
    assert_eq!(q.source_weights.len(), 1);
}

#[test]
fn malformed_inputs_are_rejected_counted_and_the_node_goes_on() {
    let mut n = node("robot-a", NodeParams::default());
    let mut nan = prediction("n", "a=b", &[1.0, f64::NAN]);
    assert_eq!(
        n.on_prediction(&nan, 0).accepted().unwrap_err().kind(),
        RejectKind::NonFinite
    );
    nan.state = vec![1.0, 2.0];
    nan.scenario.embedding = vec![f32::INFINITY];
    assert_eq!(
        n.on_prediction(&nan, 0).accepted().unwrap_err().kind(),
        RejectKind::NonFinite
    );
    let mut dims = prediction("d", "a=b", &[1.0, 2.0]);
    dims.covariance = vec![1.0, 2.0, 3.0];
    assert_eq!(
        n.on_prediction(&dims, 0).accepted().unwrap_err().kind(),
        RejectKind::DimensionMismatch
    );
    let big = prediction("o", "a=b", &vec![0.0; 10_000]);
    assert_eq!(
        n.on_prediction(&big, 0).accepted().unwrap_err().kind(),
        RejectKind::Oversized
    );
    let mut bad_tag = prediction("t", "", &[1.0]);
    bad_tag.scenario.tags = vec!["\u{1}".into()];
    assert_eq!(
        n.on_prediction(&bad_tag, 0).accepted().unwrap_err().kind(),
        RejectKind::BadScenario
    );
    let mut no_model = prediction("m", "a=b", &[1.0]);
    no_model.model_id.clear();
    assert_eq!(
        n.on_prediction(&no_model, 0).accepted().unwrap_err().kind(),
        RejectKind::BadId
    );
    assert_eq!(
        n.on_outcome(&outcome("never", &[1.0]), 0)
            .unwrap_err()
            .kind(),
        RejectKind::NoPrediction
    );
    n.on_prediction(&prediction("ok", "a=b", &[1.0, 2.0]), 0)
        .accepted()
        .unwrap();
    assert_eq!(
        n.on_prediction(&prediction("ok", "a=b", &[1.0, 2.0]), 0)
            .accepted()
            .unwrap_err()
            .kind(),
        RejectKind::Duplicate
    );
    // A wrong-sized outcome leaves the prediction pending for the right one.
    assert_eq!(
        n.on_outcome(&outcome("ok", &[1.0]), 1).unwrap_err().kind(),
        RejectKind::DimensionMismatch
    );
    n.on_outcome(&outcome("ok", &[1.0, 2.0]), 1).unwrap();
    assert_eq!(
        n.on_outcome(&outcome("ok", &[1.0, 2.0]), 2)
            .unwrap_err()
            .kind(),
        RejectKind::Duplicate
    );
    n.on_malformed();
    let c = n.report().counters;
    assert_eq!(c.rejected(RejectKind::NonFinite), 2);
    assert_eq!(c.rejected(RejectKind::DimensionMismatch), 2);
    assert_eq!(c.rejected(RejectKind::Oversized), 1);
    assert_eq!(c.rejected(RejectKind::BadScenario), 1);
    assert_eq!(c.rejected(RejectKind::BadId), 1);
    assert_eq!(c.rejected(RejectKind::NoPrediction), 1);
    assert_eq!(c.rejected(RejectKind::Duplicate), 2);
    assert_eq!(c.rejected(RejectKind::Malformed), 1);
    assert_eq!(c.predictions, 1);
    assert_eq!(c.outcomes, 1);
}

/// A prediction at `tag` whose scenario also carries numeric `speed`, which has no bins in
/// the default config (`unknown_features: error`): it cannot be fingerprinted.
fn unbinned(ep: &str, tag: &str, state: &[f64]) -> Prediction {
    let mut p = prediction(ep, tag, state);
    p.scenario.feature_names = vec!["speed".into()];
    p.scenario.features = vec![3.0];
    p
}

#[test]
fn an_unbinned_numeric_feature_is_answered_unchanged_with_match_none_and_counted() {
    use crate::ros::msgs::CorrectedPrior;
    let mut n = node("robot-a", NodeParams::default());
    // The node knows the tag's address well, so a prior that leaked a correction into
    // the answer would show.
    learn(&mut n, "road=ice", 10, 0.5, 0);
    let mut p = unbinned("u0", "road=ice", &[1.0, 2.0]);
    p.covariance = vec![0.25, 4.0];
    let answer = n.on_prediction(&p, 20 * S);
    assert_eq!(
        answer.refusal().map(InputError::kind),
        Some(RejectKind::BadScenario)
    );
    let prior = answer
        .prior()
        .expect("a refused prediction is still answered");
    assert_eq!(prior.episode_id, "u0");
    assert_eq!(prior.model_id, "wm-1");
    assert_eq!(prior.r#match, CorrectedPrior::MATCH_NONE);
    assert_eq!(prior.confidence, 0.0);
    assert_eq!(prior.state, vec![1.0, 2.0]);
    assert_eq!(prior.covariance, vec![0.25, 0.0, 0.0, 4.0]);
    assert_eq!(prior.correction, vec![0.0, 0.0]);
    assert_eq!((prior.support, prior.sources), (0, 0));
    assert_eq!(prior.fingerprint, "");
    // Every refusal is counted, though only the first of its kind is logged at WARN.
    n.on_prediction(&unbinned("u1", "road=ice", &[1.0, 2.0]), 21 * S)
        .prior()
        .expect("answered again");
    let r = n.report();
    assert_eq!(r.counters.rejected(RejectKind::BadScenario), 2);
    assert_eq!(r.counters.predictions_uncorrected, 2);
    assert_eq!(
        r.counters.predictions, 10,
        "refused ones are not counted as kept"
    );
    assert_eq!(
        r.pending, 0,
        "nothing waits for an outcome it could not be paired with"
    );
    assert!(
        r.key_values()
            .contains(&("rejected.bad_scenario".into(), "2".into()))
    );
}

#[test]
fn without_a_usable_state_only_a_valid_episode_id_is_answered() {
    let mut n = node("robot-a", NodeParams::default());
    let nan = n.on_prediction(&prediction("n", "a=b", &[f64::NAN]), 0);
    let prior = nan.prior().expect("the episode is answered, with no state");
    assert_eq!(prior.episode_id, "n");
    assert!(prior.state.is_empty() && prior.covariance.is_empty());
    assert_eq!(prior.r#match, crate::ros::msgs::CorrectedPrior::MATCH_NONE);
    let nothing = n.on_prediction(&prediction("", "a=b", &[f64::NAN]), 0);
    assert_eq!(nothing.prior(), None);
    assert_eq!(
        nothing.refusal().map(InputError::kind),
        Some(RejectKind::BadId)
    );
    let c = n.report().counters;
    assert_eq!(c.rejected(RejectKind::NonFinite), 1);
    assert_eq!(c.rejected(RejectKind::BadId), 1);
    assert_eq!(
        (c.predictions_uncorrected, c.predictions_unanswered),
        (1, 1)
    );
}

#[test]
fn a_duplicate_episode_is_corrected_but_pairs_with_its_first_prediction() {
    use crate::ros::msgs::CorrectedPrior;
    let mut n = node("robot-a", NodeParams::default());
    learn(&mut n, "road=ice", 20, 0.5, 0);
    let first = n
        .on_prediction(&prediction("d", "road=ice", &[1.0, 2.0]), 30 * S)
        .accepted()
        .unwrap();
    // A retry of the same episode (here re-planned from another state) is answered as
    // any prediction there would be, for the state it carries.
    let again = n.on_prediction(&prediction("d", "road=ice", &[3.0, 2.0]), 30 * S);
    assert_eq!(
        again.refusal().map(InputError::kind),
        Some(RejectKind::Duplicate)
    );
    let prior = again.prior().expect("a duplicate is answered");
    assert_eq!(prior.r#match, CorrectedPrior::MATCH_EXACT);
    assert!(prior.confidence > 0.0);
    assert!((prior.correction[0] - first.correction[0]).abs() < 1e-12);
    assert!((prior.state[0] - (3.0 + first.correction[0])).abs() < 1e-12);
    // The outcome pairs with the first prediction, which the duplicate did not replace.
    let eff = n.on_outcome(&outcome("d", &[1.5, 2.0]), 32 * S).unwrap();
    assert_eq!(eff.discrepancy.residual, vec![0.5, 0.0]);
    let c = n.report().counters;
    assert_eq!(c.rejected(RejectKind::Duplicate), 1);
    assert_eq!(
        c.predictions_uncorrected, 0,
        "a duplicate's answer is corrected"
    );
}

#[test]
fn pending_is_bounded_by_count_and_timeout() {
    let params = NodeParams {
        max_pending: 2,
        pending_timeout_s: 10.0,
        ..NodeParams::default()
    };
    let mut n = node("robot-a", params);
    for (i, ep) in ["a", "b", "c"].iter().enumerate() {
        n.on_prediction(&prediction(ep, "x=y", &[0.0]), i as i64)
            .accepted()
            .unwrap();
    }
    assert_eq!(n.report().counters.pending_evicted, 1);
    assert_eq!(
        n.on_outcome(&outcome("a", &[0.0]), 3).unwrap_err().kind(),
        RejectKind::NoPrediction
    );
    // 11 s later both remaining predictions have timed out.
    assert_eq!(
        n.on_outcome(&outcome("b", &[0.0]), 11 * S + 3)
            .unwrap_err()
            .kind(),
        RejectKind::NoPrediction
    );
    let r = n.report();
    assert_eq!(r.counters.pending_expired, 2);
    assert_eq!(r.pending, 0);
}

#[test]
fn a_huge_outcome_is_refused_and_its_prediction_stays_pending() {
    let mut n = node("robot-a", NodeParams::default());
    n.on_prediction(&prediction("h", "road=ice", &[1.0, 2.0]), 0)
        .accepted()
        .unwrap();
    let e = n.on_outcome(&outcome("h", &[1e7, 2.0]), 1).unwrap_err();
    assert_eq!(e.kind(), RejectKind::HugeOutcome, "{e}");
    assert!(e.to_string().contains("max_abs_residual"), "{e}");
    // Nothing was folded in; the episode can still be paired with a sane outcome.
    let eff = n.on_outcome(&outcome("h", &[1.5, 2.0]), 2).unwrap();
    assert_eq!(eff.own_record.1.summary.count(), 1);
    assert_eq!(n.report().counters.rejected(RejectKind::HugeOutcome), 1);
}

#[test]
fn records_are_shared_only_after_min_count() {
    let params = NodeParams {
        min_count_to_share: 3,
        ..NodeParams::default()
    };
    let mut n = node("robot-a", params);
    let effects = learn(&mut n, "p=q", 7, 0.1, 0);
    let shared: Vec<bool> = effects.iter().map(|e| e.share).collect();
    // Shared at 3, then again only after 3 more: no two shared versions differ by < 3.
    assert_eq!(shared, vec![false, false, true, false, false, true, false]);
    assert_eq!(n.report().counters.records_published, 2);
}

#[test]
fn mahalanobis_uses_prediction_and_measurement_covariance() {
    let mut n = node("robot-a", NodeParams::default());
    let mut p = prediction("e", "k=v", &[0.0, 0.0]);
    p.covariance = vec![2.0, 2.0];
    n.on_prediction(&p, 0).accepted().unwrap();
    let mut o = outcome("e", &[3.0, 4.0]);
    o.covariance = vec![2.0, 0.0, 0.0, 2.0];
    let d = n.on_outcome(&o, 1).unwrap().discrepancy;
    assert!((d.mahalanobis - 2.5).abs() < 1e-12, "{}", d.mahalanobis);
}

#[test]
fn invalid_params_are_refused_by_name() {
    let params = NodeParams {
        diagnostics_period_s: 0.0,
        ..NodeParams::default()
    };
    let err = NodeLogic::new(params, SourceId::new("r").unwrap()).unwrap_err();
    assert_eq!(err.param, "diagnostics_period_s");
}

#[test]
fn a_thin_address_borrows_from_a_similar_one() {
    let params = NodeParams {
        fingerprint: serde_yaml_ng::from_str("features: {speed: {width: 1.0}}").unwrap(),
        ..NodeParams::default()
    };
    let mut a = node("robot-a", params.clone());
    let mut b = node("robot-b", params);
    let at = |ep: &str, speed: f64| Prediction {
        scenario: Scenario {
            tags: vec!["surface=ice".into(), "weather=snow".into()],
            feature_names: vec!["speed".into()],
            features: vec![speed],
            embedding: vec![],
        },
        ..prediction(ep, "", &[0.0])
    };
    let mut last = None;
    for i in 0..30 {
        let ep = format!("a{i}");
        a.on_prediction(&at(&ep, 3.5), i * S).accepted().unwrap();
        last = a
            .on_outcome(&outcome(&ep, &[1.0]), i * S + 1)
            .unwrap()
            .record_to_publish()
            .cloned();
    }
    let (key, rec) = last.unwrap();
    b.on_record(&key, rec, LATER);
    // Speed 4.5 is the next bin: a different address, but a near one.
    let p = b.on_prediction(&at("b0", 4.5), 40 * S).accepted().unwrap();
    assert_ne!(p.fingerprint, key.fingerprint.to_hex());
    assert_eq!(p.r#match, crate::ros::msgs::CorrectedPrior::MATCH_NEIGHBOR);
    assert!(p.correction[0] > 0.1, "{:?}", p.correction);
    // A different surface is not borrowed from... or only weakly.
    let far = Prediction {
        scenario: Scenario {
            tags: vec!["surface=sand".into()],
            ..Scenario::default()
        },
        ..prediction("b1", "", &[0.0])
    };
    let f = b.on_prediction(&far, 41 * S).accepted().unwrap();
    assert!(
        f.correction[0] < p.correction[0],
        "{:?} vs {:?}",
        f.correction,
        p.correction
    );
}

/// Drift (issue 12 item 3): reality at an address jumps mid-stream. The node detects it
/// from its own outcomes, counts and logs it, restarts the address's own summary from
/// the outcomes since the change, and stops weighing a peer's record that predates it:
/// the corrected prior is back on the new bias within a few outcomes, no restart.
#[test]
fn a_bias_that_jumps_is_followed_within_a_few_outcomes() {
    // A consistent world, where empirical Bayes learns k0 near its floor (0.05); one
    // address is too little to learn it, so it is set.
    let mut params = NodeParams::default();
    params.synthesis.prior_strength = 0.1;
    let mut a = node("robot-a", params.clone());
    let mut b = node("robot-b", params);
    // A peer's record from before the change: 30 outcomes at +0.5.
    let peer = learn(&mut b, "floor=tile", 30, 0.5, 0);
    let (key, rec) = last_shared(&peer);
    assert_eq!(
        a.on_record(&key, rec, 40 * S),
        crate::core::memory::Ingest::Stored
    );
    // Robot A's outcomes: +0.5 with a little scatter, then +2.0 from outcome 40 on.
    let mut t = 100 * S;
    let mut step = |a: &mut NodeLogic, i: usize, bias: f64| {
        let ep = format!("tile-{i}");
        t += S;
        let p = a
            .on_prediction(&prediction(&ep, "floor=tile", &[1.0, 2.0]), t)
            .accepted()
            .unwrap();
        let wobble = if i % 2 == 0 { 0.05 } else { -0.05 };
        let e = a
            .on_outcome(&outcome(&ep, &[1.0 + bias + wobble, 2.0]), t + 1)
            .unwrap();
        (p, e)
    };
    for i in 0..40 {
        let (p, _) = step(&mut a, i, 0.5);
        if i > 2 {
            assert!(
                (p.correction[0] - 0.5).abs() < 0.1,
                "{i}: {:?}",
                p.correction
            );
        }
    }
    assert_eq!(a.report().counters.drift_detected, 0, "no false alarm");
    let mut back = None;
    for i in 40..60 {
        let (p, e) = step(&mut a, i, 2.0);
        if back.is_none() && (p.correction[0] - 2.0).abs() < 0.2 {
            back = Some(i - 40);
        }
        if a.report().counters.drift_detected == 1 && e.own_record.1.summary.count() < 5 {
            // The fresh epoch is a new record for the privacy budget.
            assert!(
                !e.share,
                "{} outcomes shared",
                e.own_record.1.summary.count()
            );
        }
    }
    let back = back.expect("the prior follows the new bias");
    assert!(back <= 6, "error back after {back} outcomes");
    let r = a.report();
    assert_eq!(r.counters.drift_detected, 1);
    assert!(
        r.key_values()
            .contains(&("drift_detected".into(), "1".into()))
    );
    // The peer's record predates the change: listed, but weighing nothing.
    let q = a.query(
        &QueryRequest {
            scenario: scenario("floor=tile"),
            model_id: "wm-1".into(),
        },
        200 * S,
    );
    assert_eq!(
        q.source_ids,
        vec!["robot-a".to_string(), "robot-b".to_string()]
    );
    assert_eq!(q.source_weights.len(), 2);
    assert!(
        q.source_weights[0] > 0.0 && q.source_weights[1] == 0.0,
        "{q:?}"
    );
    assert!(
        (q.mean_residual[0] - 2.0).abs() > 0.1,
        "the pooled summary still mixes"
    );
    let addr = a.memory().address(&key.model, &key.fingerprint).unwrap();
    let since = addr.drift_since_ns().expect("the drift is on record");
    assert!(since > 139 * S && since <= 142 * S, "{since}");
    let own = &addr.own.as_ref().unwrap().1;
    assert!((own.mean()[0] - 2.0).abs() < 0.05 && own.count() <= 21);
}

#[test]
fn the_neighbor_index_is_bounded_and_its_evictions_reported() {
    let params = NodeParams {
        neighbors_max_addresses: 2,
        ..NodeParams::default()
    };
    let mut n = node("robot-a", params);
    for (i, tag) in ["a=1", "b=1", "c=1"].iter().enumerate() {
        learn(&mut n, tag, 1, 0.5, i as i64 * 10 * S);
    }
    let r = n.report();
    assert_eq!(r.neighbors_evicted, 1);
    assert!(
        r.key_values()
            .contains(&("neighbors_evicted".into(), "1".into()))
    );
}

#[test]
fn a_fleet_secret_keys_the_nodes_addresses_and_sketches() {
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let mut p = NodeParams::default();
        p.fingerprint.fleet_secret_file = Some(path);
        p
    };
    let fleet = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let address = |params: NodeParams| {
        let mut n = node("robot-a", params);
        let p = n
            .on_prediction(&prediction("e0", "weather=rain", &[1.0, 2.0]), 0)
            .accepted()
            .unwrap();
        let eff = n.on_outcome(&outcome("e0", &[1.5, 2.0]), 1).unwrap();
        let (key, rec) = eff.own_record;
        assert_eq!(key.fingerprint.to_hex(), p.fingerprint);
        (p.fingerprint, rec.sketch)
    };
    let plain = address(NodeParams::default());
    let keyed = address(secret("a", fleet));
    assert_eq!(keyed, address(secret("b", &format!("{fleet}\n"))));
    assert_ne!(keyed.0, plain.0);
    assert_ne!(keyed.1, plain.1);
    assert_ne!(keyed.0, address(secret("c", "another fleet's secret")).0);
}

/// Any finite f64, extremes included (the decoder refuses only NaN and infinities).
fn any_finite() -> impl proptest::strategy::Strategy<Value = f64> {
    use proptest::prelude::*;
    prop_oneof![
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
        Just(f64::MAX),
        Just(-f64::MAX),
        Just(1e306),
        Just(f64::MIN_POSITIVE),
        Just(0.0),
        -10.0..10.0f64,
    ]
}

proptest::proptest! {
    /// The corrected prior is finite and bounded by construction: whatever decodable
    /// records a peer sends (any count, weights, means, scatter, times), every prior the
    /// node answers is finite and corrects by at most `validation.max_abs_residual`.
    #[test]
    fn any_decodable_record_leaves_every_prior_finite_and_bounded(
        fields in proptest::collection::vec(
            (proptest::prop_oneof![proptest::prelude::any::<u64>(), 1..40u64],
             any_finite(), any_finite(),
             [any_finite(), any_finite()], [any_finite(), any_finite(), any_finite()],
             proptest::prop_oneof![proptest::prelude::any::<i64>(), 0..600 * S],
             proptest::prop_oneof![proptest::prelude::any::<i64>(), 0..600 * S], 0u8..3),
            1..6),
        own in proptest::prelude::any::<bool>(),
    ) {
        use nalgebra::{DMatrix, DVector};
        let mut b = node("robot-b", NodeParams::default());
        if own {
            learn(&mut b, "road=ice", 12, 0.5, 0);
        }
        let now = 500 * S;
        for (i, (count, w, w2, mean, m2, t0, t1, tag)) in fields.into_iter().enumerate() {
            let m2 = DMatrix::from_row_slice(2, 2, &[m2[0], m2[1], m2[1], m2[2]]);
            let summary = crate::core::summary::Summary::from_parts(
                count, w, w2, DVector::from_row_slice(&mean), m2, t0.min(t1), t0.max(t1));
            let record = OutcomeRecord {
                seq: crate::core::ids::Seq(i as u64 + 1),
                sketch: crate::core::neighbors::Sketch([i as i8; 32]),
                summary,
                time_base: Default::default(),
            };
            // Only what a peer could put on the wire: bytes the decoder accepts.
            let Ok(bytes) = record.encode() else { continue };
            let Ok(decoded) = crate::core::record::decode(&bytes) else { continue };
            let tag = ["road=ice", "road=wet", "road=snow"][tag as usize];
            let fp = crate::core::fingerprint::FingerprintConfig::default()
                .validate()
                .unwrap()
                .fingerprint(&[tag.to_string()], &[], &[])
                .unwrap();
            let key = RecordKey {
                model: crate::core::ids::ModelId::new("wm-1").unwrap(),
                fingerprint: fp,
                source: SourceId::new(format!("peer-{i}")).unwrap(),
            };
            b.on_record(&key, decoded.record, now);
        }
        let max = b.params().validation.max_abs_residual;
        for (i, tag) in ["road=ice", "road=wet", "road=snow", "road=dry"].iter().enumerate() {
            let p = b.on_prediction(&prediction(&format!("p{i}"), tag, &[1.0, 2.0]), now).accepted().unwrap();
            proptest::prop_assert!(p.state.iter().chain(&p.covariance).all(|v| v.is_finite()), "{p:?}");
            proptest::prop_assert!(p.correction.iter().all(|c| c.abs() <= max), "{p:?}");
            proptest::prop_assert!(p.confidence.is_finite());
        }
        proptest::prop_assert_eq!(b.report().counters.priors_non_finite, 0);
    }

    /// Records inside the bounds (any count, weight and spread an honest node could
    /// send, any mean up to the bound) are stored, and the priors stay finite too.
    #[test]
    fn records_inside_the_bounds_are_kept_and_priors_stay_finite(
        claims in proptest::collection::vec((1u64..1_000_000, -1e6..1e6f64, 0.0..1e6f64), 1..8),
    ) {
        let mut b = node("robot-b", NodeParams::default());
        let now = 500 * S;
        for (i, (count, mean, sd)) in claims.iter().enumerate() {
            let n = *count as f64;
            let summary = crate::core::summary::Summary::from_parts(
                *count, n, n, nalgebra::DVector::from_element(2, *mean),
                nalgebra::DMatrix::from_diagonal_element(2, 2, sd * sd * n * 0.999), 0, now);
            let key = RecordKey {
                model: crate::core::ids::ModelId::new("wm-1").unwrap(),
                fingerprint: crate::core::fingerprint::FingerprintConfig::default()
                    .validate().unwrap().fingerprint(&["road=ice".to_string()], &[], &[]).unwrap(),
                source: SourceId::new(format!("peer-{i}")).unwrap(),
            };
            let record = OutcomeRecord {
                seq: crate::core::ids::Seq(1),
                sketch: crate::core::neighbors::Sketch([0; 32]),
                summary,
                time_base: Default::default(),
            };
            proptest::prop_assert_eq!(b.on_record(&key, record, now), crate::core::memory::Ingest::Stored);
        }
        let p = b.on_prediction(&prediction("p", "road=ice", &[1.0, 2.0]), now).accepted().unwrap();
        proptest::prop_assert!(p.state.iter().chain(&p.covariance).all(|v| v.is_finite()), "{p:?}");
        proptest::prop_assert!(p.correction.iter().all(|c| c.abs() <= 1e6), "{p:?}");
    }
}
