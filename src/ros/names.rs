//! ROS 2 name resolution for the node's topics and service: namespace expansion,
//! private names (`~`) and remapping rules, as rcl does it, so launch files work.

use thiserror::Error;

/// A name that is not a valid ROS 2 name.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid ROS name {name:?}: {reason}")]
pub struct NameError {
    /// The name.
    pub name: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// The node's identity and remapping rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    node: String,
    namespace: String,
    remaps: Vec<(String, String)>,
}

fn check_tokens(name: &str, s: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        name: name.to_string(),
        reason,
    };
    for token in s.split('/').filter(|t| !t.is_empty()) {
        if token.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err("a token must not start with a digit"));
        }
        if !token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(err("only letters, digits, '_' and '/' are allowed"));
        }
    }
    if s.contains("//") {
        return Err(err("empty token ('//')"));
    }
    Ok(())
}

impl Names {
    /// Checks the node name and namespace (`""` or `/` = root) and keeps the remaps.
    pub fn new(
        node: &str,
        namespace: &str,
        remaps: Vec<(String, String)>,
    ) -> Result<Self, NameError> {
        if node.is_empty() || node.contains('/') {
            return Err(NameError {
                name: node.to_string(),
                reason: "a node name is one non-empty token",
            });
        }
        check_tokens(node, node)?;
        let ns = format!("/{}", namespace.trim_matches('/'));
        check_tokens(namespace, &ns)?;
        let ns = if ns == "/" { String::new() } else { ns };
        Ok(Names {
            node: node.to_string(),
            namespace: ns,
            remaps,
        })
    }

    /// The node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The namespace, `/`-prefixed (`/` for the root namespace).
    pub fn namespace(&self) -> &str {
        if self.namespace.is_empty() {
            "/"
        } else {
            &self.namespace
        }
    }

    /// Fully qualified node name.
    pub fn fqn(&self) -> String {
        format!("{}/{}", self.namespace, self.node)
    }

    fn expand(&self, name: &str) -> Result<String, NameError> {
        let full = if let Some(rest) = name.strip_prefix('~') {
            format!("{}/{}", self.fqn(), rest.trim_start_matches('/'))
        } else if name.starts_with('/') {
            name.to_string()
        } else {
            format!("{}/{}", self.namespace, name)
        };
        let full = full.trim_end_matches('/').to_string();
        if full.is_empty() {
            return Err(NameError {
                name: name.to_string(),
                reason: "empty name",
            });
        }
        check_tokens(name, &full)?;
        Ok(full)
    }

    /// The absolute name a topic or service `name` resolves to after remapping.
    pub fn resolve(&self, name: &str) -> Result<String, NameError> {
        let full = self.expand(name)?;
        for (from, to) in &self.remaps {
            if self.expand(from)? == full {
                return self.expand(to);
            }
        }
        Ok(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_remaps() {
        let n = Names::new(
            "qis_node",
            "/robot1",
            vec![
                ("prediction".into(), "/wm/pred".into()),
                ("/robot1/outcome".into(), "measured".into()),
            ],
        )
        .unwrap();
        assert_eq!(n.fqn(), "/robot1/qis_node");
        assert_eq!(n.resolve("prediction").unwrap(), "/wm/pred");
        assert_eq!(n.resolve("outcome").unwrap(), "/robot1/measured");
        assert_eq!(n.resolve("discrepancy").unwrap(), "/robot1/discrepancy");
        assert_eq!(n.resolve("/diagnostics").unwrap(), "/diagnostics");
        assert_eq!(n.resolve("~/query").unwrap(), "/robot1/qis_node/query");
        let root = Names::new("qis_node", "/", vec![]).unwrap();
        assert_eq!(root.resolve("prediction").unwrap(), "/prediction");
        assert_eq!(root.fqn(), "/qis_node");
        assert_eq!(root.namespace(), "/");
    }

    #[test]
    fn refuses_bad_names() {
        assert!(Names::new("", "/", vec![]).is_err());
        assert!(Names::new("a/b", "/", vec![]).is_err());
        assert!(Names::new("n", "/1x", vec![]).is_err());
        let n = Names::new("n", "/", vec![]).unwrap();
        assert!(n.resolve("bad name").is_err());
    }
}
