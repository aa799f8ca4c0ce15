//! Parameters that change while the node runs (`ros2 param set`): the synthesis, trust
//! and validation settings and `neighbors_k`. A change is checked exactly as at start-up
//! ([`NodeParams::validate`]) and applied whole or not at all; every other parameter is
//! read at start-up only (pairing bounds, topics, store, exchange, identity, the clock)
//! and so is `synthesis.half_life_s`, whose decay is folded into the stored summaries.

use serde_yaml_ng::Value;

use super::{NodeLogic, NodeParams, ParamError};

/// Groups whose parameters may change at run time (with the exceptions below).
const RUNTIME_GROUPS: [&str; 3] = ["synthesis.", "trust.", "validation."];
/// Single parameters that may change at run time.
const RUNTIME_SINGLE: [&str; 1] = ["neighbors_k"];
/// Parameters of those groups that need a restart.
const RESTART_ONLY: [&str; 1] = ["synthesis.half_life_s"];

fn param_error(param: &str, reason: impl Into<String>) -> ParamError {
    ParamError {
        param: param.to_string(),
        reason: reason.into(),
    }
}

/// The slot of dotted parameter `name` in a parameter tree, if the tree has it.
fn slot<'a>(tree: &'a mut Value, name: &str) -> Option<&'a mut Value> {
    name.split('.').try_fold(tree, |node, part| match node {
        Value::Mapping(m) => m.get_mut(part),
        _ => None,
    })
}

impl NodeLogic {
    /// Whether parameter `name` (dotted, e.g. `synthesis.prior_strength`) may change
    /// while the node runs.
    pub fn is_runtime_param(name: &str) -> bool {
        !RESTART_ONLY.contains(&name)
            && (RUNTIME_SINGLE.contains(&name)
                || RUNTIME_GROUPS
                    .iter()
                    .any(|g| name.strip_prefix(g).is_some_and(|rest| !rest.is_empty())))
    }

    /// Sets parameters while the node runs: every name must be a run-time parameter
    /// ([`Self::is_runtime_param`]) and the resulting parameters must pass
    /// [`NodeParams::validate`]; then all changes apply at once (the next corrected prior
    /// uses them), else none does and the error names the parameter and the reason.
    pub fn set_params(&mut self, changes: &[(String, Value)]) -> Result<(), ParamError> {
        let mut tree = serde_yaml_ng::to_value(&self.params)
            .map_err(|e| param_error("", format!("parameters not representable: {e}")))?;
        for (name, value) in changes {
            if !Self::is_runtime_param(name) {
                return Err(param_error(
                    name,
                    "read-only while the node runs: set it at start-up (params file or -p) and restart",
                ));
            }
            let Some(slot) = slot(&mut tree, name) else {
                return Err(param_error(name, "no such parameter"));
            };
            *slot = value.clone();
        }
        let candidate: NodeParams = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let name = changes
                .iter()
                .map(|(n, _)| n.as_str())
                .find(|n| *n == path)
                .or(changes.first().map(|(n, _)| n.as_str()))
                .unwrap_or(&path)
                .to_string();
            param_error(&name, e.into_inner().to_string())
        })?;
        candidate.validate()?;
        let time_base = self.bounds.time_base;
        self.params = candidate;
        // The settings in force: the learned gate (if any) is recomputed on next use.
        self.synthesis = self.params.synthesis.clone();
        self.gate_model = None;
        self.trust.set_config(self.params.trust.clone());
        self.bounds = self.params.validation.bounds(time_base);
        self.memory.drop_estimates();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::SourceId;
    use crate::ros::msgs::{Outcome, Prediction, Scenario};

    const S: i64 = 1_000_000_000;

    fn node() -> NodeLogic {
        NodeLogic::new(NodeParams::default(), SourceId::new("robot-p").unwrap()).unwrap()
    }

    fn prediction(ep: &str) -> Prediction {
        Prediction {
            episode_id: ep.into(),
            model_id: "wm-1".into(),
            scenario: Scenario {
                tags: vec!["road=ice".into()],
                ..Scenario::default()
            },
            state: vec![1.0, 2.0],
            ..Prediction::default()
        }
    }

    fn outcome(ep: &str) -> Outcome {
        Outcome {
            episode_id: ep.into(),
            state: vec![1.6, 2.0],
            ..Outcome::default()
        }
    }

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn which_parameters_change_at_run_time() {
        for name in [
            "synthesis.prior_strength",
            "synthesis.max_residual",
            "trust.tolerance",
            "validation.max_clock_skew_s",
            "neighbors_k",
        ] {
            assert!(NodeLogic::is_runtime_param(name), "{name}");
        }
        for name in [
            "synthesis.half_life_s",
            "synthesis",
            "synthesis.",
            "max_pending",
            "use_sim_time",
            "fleet",
            "exchange.connect",
            "memory.max_own_addresses",
            "synthesis_x.prior_strength",
        ] {
            assert!(!NodeLogic::is_runtime_param(name), "{name}");
        }
    }

    #[test]
    fn a_set_prior_strength_changes_the_next_prior() {
        let mut n = node();
        n.on_prediction(&prediction("e0"), S).accepted().unwrap();
        n.on_outcome(&outcome("e0"), S + 1).unwrap();
        // k0 = 5, one outcome: w = 1/6.
        let before = n
            .on_prediction(&prediction("e1"), 2 * S)
            .accepted()
            .unwrap();
        assert!((before.confidence - 1.0 / 6.0).abs() < 1e-5, "{before:?}");
        n.set_params(&[("synthesis.prior_strength".into(), yaml("1.0"))])
            .unwrap();
        assert_eq!(n.params().synthesis.prior_strength, 1.0);
        // k0 = 1: w = 1/2, at once (the cached estimate is dropped).
        let after = n
            .on_prediction(&prediction("e2"), 2 * S + 1)
            .accepted()
            .unwrap();
        assert!((after.confidence - 0.5).abs() < 1e-5, "{after:?}");
        assert!((after.correction[0] - 0.3).abs() < 1e-5, "{after:?}");
    }

    #[test]
    fn bad_values_are_refused_with_the_reason_and_change_nothing() {
        let mut n = node();
        let e = n
            .set_params(&[("synthesis.prior_strength".into(), yaml("-1.0"))])
            .unwrap_err();
        assert_eq!(e.param, "synthesis.prior_strength");
        assert!(e.reason.contains(">= 0"), "{e}");
        let e = n
            .set_params(&[("trust.initial".into(), yaml("1.5"))])
            .unwrap_err();
        assert_eq!(e.param, "trust.initial");
        let e = n
            .set_params(&[("synthesis.outlier_z".into(), yaml("many"))])
            .unwrap_err();
        assert_eq!(e.param, "synthesis.outlier_z");
        assert!(e.reason.contains("invalid type"), "{e}");
        let e = n
            .set_params(&[("max_pending".into(), yaml("3"))])
            .unwrap_err();
        assert!(e.reason.contains("read-only"), "{e}");
        let e = n
            .set_params(&[("synthesis.nothing".into(), yaml("3"))])
            .unwrap_err();
        assert!(e.reason.contains("no such parameter"), "{e}");
        // All or nothing: the good change before the bad one is not applied either.
        let e = n
            .set_params(&[
                ("synthesis.prior_strength".into(), yaml("2.0")),
                ("trust.max_sources".into(), yaml("0")),
            ])
            .unwrap_err();
        assert_eq!(e.param, "trust.max_sources");
        assert_eq!(n.params(), &NodeParams::default());
    }

    #[test]
    fn trust_validation_and_gate_settings_apply() {
        let mut n = node();
        n.set_params(&[
            ("trust.tolerance".into(), yaml("0.0")),
            ("validation.max_count".into(), yaml("7")),
            ("synthesis.max_residual".into(), yaml("[0.25]")),
            ("neighbors_k".into(), yaml("3")),
        ])
        .unwrap();
        assert_eq!(n.params().trust.tolerance, 0.0);
        assert_eq!(n.bounds.max_count, 7);
        assert_eq!(n.plausibility_gate(), &[0.25]);
        assert_eq!(n.params().neighbors_k, 3);
        n.set_params(&[("synthesis.max_residual".into(), yaml("[]"))])
            .unwrap();
        assert!(n.plausibility_gate().is_empty());
    }
}
