//! Loads [`NodeParams`] the ROS 2 way: the `ros__parameters` of every section of the
//! params files that addresses this node, then `-p name:=value` overrides, nested names
//! written with dots (`synthesis.prior_strength`).
//!
//! Sections address nodes as rcl and rclcpp match them (`rclcpp::parameter_map_from`):
//! the section's node name gets a leading `/` if it has none, then must match the node's
//! fully qualified name, where `/*` stands for one token and `/**` for any number of
//! them: `/**` (every node), `/**/qis_node` (qis_node in any namespace),
//! `/*/qis_node`, `/robot1/qis_node`, `robot1/qis_node`. A bare `qis_node` is
//! `/qis_node`: only the node in the root namespace, as in rcl. Namespaces may also be
//! written as nested keys (`/robot1: qis_node: ros__parameters:`). Matching sections
//! apply in file order, later files after earlier ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};
use thiserror::Error;

use super::names::Names;
use crate::node::{NodeParams, ParamError};

/// Why the parameters could not be loaded.
#[derive(Debug, Error)]
pub enum ParamLoadError {
    /// The params file could not be read.
    #[error("params file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The params file is not a ROS 2 params YAML.
    #[error("params file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A parameter that does not exist or has the wrong type (the message names it).
    #[error("invalid parameters: {0}")]
    Invalid(String),
    /// A parameter out of range.
    #[error(transparent)]
    Param(#[from] ParamError),
}

/// Flattens a parameter tree into dotted names (an empty mapping is a leaf).
pub(crate) fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn unflatten(flat: &BTreeMap<String, Value>) -> Value {
    let mut root = Mapping::new();
    for (name, v) in flat {
        let mut node = &mut root;
        let parts: Vec<&str> = name.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            let key = Value::String((*part).to_string());
            if !matches!(node.get(&key), Some(Value::Mapping(_))) {
                node.insert(key.clone(), Value::Mapping(Mapping::new()));
            }
            node = match node.get_mut(&key) {
                Some(Value::Mapping(m)) => m,
                _ => unreachable!("inserted a mapping above"),
            };
        }
        node.insert(Value::String(parts[parts.len() - 1].to_string()), v.clone());
    }
    Value::Mapping(root)
}

/// Whether a params file section's node name addresses the node `fqn` (rclcpp: leading
/// `/` added, `/*` = one token, `/**` = any number of tokens, the rest literal).
pub fn section_matches(section: &str, fqn: &str) -> bool {
    let pattern = format!("/{}", section.trim_start_matches('/'));
    let pattern: Vec<&str> = pattern.split('/').skip(1).collect();
    let name: Vec<&str> = fqn.split('/').skip(1).collect();
    fn matches(p: &[&str], n: &[&str]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((&"**", rest)) => (0..=n.len()).any(|i| matches(rest, &n[i..])),
            Some((&"*", rest)) => !n.is_empty() && matches(rest, &n[1..]),
            Some((tok, rest)) => n.first() == Some(tok) && matches(rest, &n[1..]),
        }
    }
    matches(&pattern, &name)
}

/// The sections of a params file in file order: node name (namespaces of nested keys
/// joined with `/`) and its `ros__parameters`.
fn sections(prefix: &str, map: &Mapping, out: &mut Vec<(String, Value)>) -> Result<(), String> {
    for (key, body) in map {
        let Some(key) = key.as_str() else {
            return Err("node names must be strings".into());
        };
        if key == "ros__parameters" {
            if prefix.is_empty() {
                return Err("ros__parameters outside a node name".into());
            }
            out.push((prefix.to_string(), body.clone()));
            continue;
        }
        let name = format!("{}/{}", prefix.trim_end_matches('/'), key.trim_matches('/'));
        match body {
            Value::Mapping(m) => sections(&name, m, out)?,
            _ => {
                return Err(format!(
                    "{name:?}: expected node names (or namespaces) ending in ros__parameters"
                ));
            }
        }
    }
    Ok(())
}

fn read_file(
    path: &Path,
    names: &Names,
    out: &mut BTreeMap<String, Value>,
) -> Result<(), ParamLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ParamLoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |reason: String| ParamLoadError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let doc: Value = serde_yaml_ng::from_str(&text).map_err(|e| format(e.to_string()))?;
    let Value::Mapping(top) = doc else {
        return Err(format("expected a mapping of node names".into()));
    };
    let mut found = Vec::new();
    sections("", &top, &mut found).map_err(format)?;
    let fqn = names.fqn();
    for (section, params) in found {
        if !section_matches(&section, &fqn) {
            if section.trim_start_matches('/') == names.node() {
                tracing::warn!(
                    file = %path.display(),
                    "params file section {section:?} does not address {fqn}: as in rcl, a bare node name means the root namespace (write /**/{} for any namespace)",
                    names.node()
                );
            }
            continue;
        }
        if !matches!(params, Value::Mapping(_)) {
            return Err(format(format!(
                "{section}: ros__parameters must be a mapping"
            )));
        }
        flatten("", &params, out);
    }
    Ok(())
}

/// Loads, overrides and validates the node's parameters.
pub fn load(
    names: &Names,
    files: &[PathBuf],
    overrides: &[(String, String)],
) -> Result<NodeParams, ParamLoadError> {
    let mut flat = BTreeMap::new();
    for f in files {
        read_file(f, names, &mut flat)?;
    }
    for (name, text) in overrides {
        // `-p` values are YAML, as in rcl: `3` is an integer, `true` a bool, `[1, 2]` a list.
        let v = serde_yaml_ng::from_str(text).unwrap_or_else(|_| Value::String(text.clone()));
        flat.insert(name.clone(), v);
    }
    // The path tells which parameter a type error is about ("max_pending: invalid type").
    let params: NodeParams = serde_path_to_error::deserialize(unflatten(&flat)).map_err(|e| {
        let path = e.path().to_string();
        ParamLoadError::Invalid(format!("`{path}`: {}", e.into_inner()))
    })?;
    params.validate()?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("qis_node", "/robot1", vec![]).unwrap()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn files_then_overrides() {
        let f = file(
            "/**:\n  ros__parameters:\n    fleet: base\n    max_pending: 7\n\
             /robot1/qis_node:\n  ros__parameters:\n    fleet: warehouse\n    synthesis:\n      prior_strength: 2.5\n\
             other_node:\n  ros__parameters:\n    bogus: 1\n",
        );
        let p = load(
            &names(),
            &[f.path().to_path_buf()],
            &[
                ("synthesis.min_support".into(), "3.0".into()),
                ("shadow_mode".into(), "true".into()),
            ],
        )
        .unwrap();
        assert_eq!(p.fleet, "warehouse");
        assert_eq!(p.max_pending, 7);
        assert_eq!(p.synthesis.prior_strength, 2.5);
        assert_eq!(p.synthesis.min_support, 3.0);
        assert!(p.shadow_mode);
    }

    #[test]
    fn errors_name_the_parameter() {
        let e = load(&names(), &[], &[("max_pendin".into(), "3".into())]).unwrap_err();
        assert!(e.to_string().contains("max_pendin"), "{e}");
        let e = load(&names(), &[], &[("max_pending".into(), "many".into())]).unwrap_err();
        assert!(e.to_string().contains("max_pending"), "{e}");
        let e = load(
            &names(),
            &[],
            &[("synthesis.outlier_z".into(), "-1".into())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("synthesis.outlier_z"), "{e}");
        let e = load(&names(), &[PathBuf::from("/nonexistent/p.yaml")], &[]).unwrap_err();
        assert!(matches!(e, ParamLoadError::Io { .. }));
    }

    #[test]
    fn sections_match_node_names_as_rcl_does() {
        let m = section_matches;
        for (section, fqn, expected) in [
            ("/**", "/robot1/qis_node", true),
            ("/**", "/qis_node", true),
            ("**", "/qis_node", true),
            ("/**/qis_node", "/qis_node", true),
            ("/**/qis_node", "/a/b/qis_node", true),
            ("/**/qis_node", "/a/b/other", false),
            ("/*/qis_node", "/robot1/qis_node", true),
            ("/*/qis_node", "/qis_node", false),
            ("/*/qis_node", "/a/b/qis_node", false),
            ("/robot1/*", "/robot1/qis_node", true),
            ("/robot1/qis_node", "/robot1/qis_node", true),
            ("robot1/qis_node", "/robot1/qis_node", true),
            ("/robot2/qis_node", "/robot1/qis_node", false),
            ("qis_node", "/qis_node", true),
            ("qis_node", "/robot1/qis_node", false),
            ("/robot1", "/robot1/qis_node", false),
        ] {
            assert_eq!(m(section, fqn), expected, "{section} vs {fqn}");
        }
    }

    #[test]
    fn nested_namespaces_wildcards_and_file_order() {
        let f = file(
            "/**:\n  ros__parameters:\n    fleet: all\n    max_pending: 1\n\
             /robot1:\n  qis_node:\n    ros__parameters:\n      fleet: nested\n\
             /*/qis_node:\n  ros__parameters:\n    max_pending: 3\n\
             qis_node:\n  ros__parameters:\n    fleet: root_only\n\
             /robot2/qis_node:\n  ros__parameters:\n    bogus: 1\n",
        );
        let p = load(&names(), &[f.path().to_path_buf()], &[]).unwrap();
        assert_eq!(p.fleet, "nested");
        assert_eq!(p.max_pending, 3);
        let root = Names::new("qis_node", "/", vec![]).unwrap();
        let p = load(&root, &[f.path().to_path_buf()], &[]).unwrap();
        assert_eq!((p.fleet.as_str(), p.max_pending), ("root_only", 1));
        let bad = file("qis_node:\n  fleet: x\n");
        assert!(matches!(
            load(&root, &[bad.path().to_path_buf()], &[]),
            Err(ParamLoadError::Format { .. })
        ));
    }

    #[test]
    fn the_shipped_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/qis.yaml");
        let p = load(&names(), &[path], &[]).unwrap();
        assert!(!p.fingerprint.features.is_empty());
    }
}
