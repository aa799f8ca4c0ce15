//! A Zenoh router with the storage manager linked in, holding every qis record, so a
//! robot that joins after another has gone offline still receives its records.
//!
//! This is Zenoh's own engine (router + `zenoh-plugin-storage-manager`, memory volume),
//! started in our process because zenohd loads plugins only as shared libraries built
//! with the same compiler (FACTS.md, "Zenoh for scale-out"). No qis logic runs here:
//! the storage keeps the latest sample per key, which is the latest record per source.
//!
//! Its storages must lie inside the record key space [`RECORD_KEY_SPACE`]
//! (`qis/v2/` and 16 `*` chunks), so no peer can make the router keep keys of any other shape;
//! [`router_config`] refuses a config whose storage does not. Zenoh's memory volume has
//! no bound on the number of keys (docs/RELIABILITY.md, "Bounds on what the network can
//! grow").

use thiserror::Error;
use tracing::info;
use zenoh::Session;
use zenoh::internal::plugins::RunningPlugin;
use zenoh::internal::runtime::{DynamicRuntime, Runtime, RuntimeBuilder};
use zenoh::key_expr::KeyExpr;
use zenoh_plugin_storage_manager::StoragesPlugin;
use zenoh_plugin_trait::Plugin;

use super::keys::RECORD_KEY_SPACE;
use super::volume::{Volume, VolumeError};

/// The embedded router config (config/zenoh-router.json5).
pub const DEFAULT_ROUTER_CONFIG: &str = include_str!("../../config/zenoh-router.json5");

/// Name under which the storage manager's settings sit in the config (`plugins/<name>`).
const STORAGE_PLUGIN: &str = "storage-manager";

/// Why the router could not be configured or started.
#[derive(Debug, Error)]
pub enum RouterError {
    /// The config was refused (names the config key).
    #[error("router config {key}: {reason}")]
    Config {
        /// The Zenoh config key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The persistent volume failed to open or replay.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// Zenoh failed to build, start or close the router.
    #[error("router {stage}: {reason}")]
    Zenoh {
        /// What was being done.
        stage: &'static str,
        /// Zenoh's message.
        reason: String,
    },
}

/// The router config: `file` (Zenoh JSON5) or the embedded default, with the listen
/// endpoints replaced when `listen` is non-empty. Forces router mode and timestamping,
/// which the storage needs to order updates, and refuses storages whose `key_expr` is not
/// inside [`RECORD_KEY_SPACE`].
pub fn router_config(
    file: Option<&std::path::Path>,
    listen: &[String],
) -> Result<zenoh::Config, RouterError> {
    let cfg_err = |key, e: &dyn std::fmt::Display| RouterError::Config {
        key,
        reason: e.to_string(),
    };
    let mut cfg = match file {
        Some(p) => zenoh::Config::from_file(p).map_err(|e| cfg_err("file", &e))?,
        None => {
            zenoh::Config::from_json5(DEFAULT_ROUTER_CONFIG).map_err(|e| cfg_err("file", &e))?
        }
    };
    cfg.insert_json5("mode", "\"router\"")
        .map_err(|e| cfg_err("mode", &e))?;
    cfg.insert_json5(
        "timestamping",
        "{ enabled: { router: true, peer: true, client: true } }",
    )
    .map_err(|e| cfg_err("timestamping", &e))?;
    if !listen.is_empty() {
        let eps = serde_json::to_string(listen).map_err(|e| cfg_err("listen/endpoints", &e))?;
        cfg.insert_json5("listen/endpoints", &eps)
            .map_err(|e| cfg_err("listen/endpoints", &e))?;
    }
    let plugin = cfg
        .get_json(&format!("plugins/{STORAGE_PLUGIN}"))
        .map_err(|e| cfg_err("plugins/storage-manager", &e))?;
    if plugin == "null" || plugin.is_empty() {
        return Err(RouterError::Config {
            key: "plugins/storage-manager",
            reason: "missing: the router exists to hold a storage".into(),
        });
    }
    check_storages(&plugin)?;
    Ok(cfg)
}

/// Every storage of the storage manager's settings (JSON) lies inside the record key space.
fn check_storages(plugin: &str) -> Result<(), RouterError> {
    const KEY: &str = "plugins/storage-manager/storages";
    let bad = |reason: String| RouterError::Config { key: KEY, reason };
    let settings: serde_json::Value =
        serde_json::from_str(plugin).map_err(|e| bad(e.to_string()))?;
    let Some(storages) = settings.get("storages").and_then(|s| s.as_object()) else {
        return Err(bad("missing: the router exists to hold a storage".into()));
    };
    let space = KeyExpr::try_from(RECORD_KEY_SPACE).map_err(|e| bad(e.to_string()))?;
    for (name, storage) in storages {
        let Some(ke) = storage.get("key_expr").and_then(|k| k.as_str()) else {
            return Err(bad(format!("storage {name:?} has no key_expr")));
        };
        let ke = KeyExpr::try_from(ke).map_err(|e| bad(format!("storage {name:?}: {e}")))?;
        if !space.includes(&ke) {
            return Err(bad(format!(
                "storage {name:?} key_expr {ke} is not inside the record key space {RECORD_KEY_SPACE}"
            )));
        }
    }
    Ok(())
}

/// A running router with its storage; dropped or [`close`](Self::close)d to stop.
pub struct FleetRouter {
    runtime: Runtime,
    session: Session,
    _storage: RunningPlugin,
    volume: Option<Volume>,
}

impl FleetRouter {
    /// Builds the router runtime, starts the storage manager on it, then starts listening.
    /// Its storage is memory only: a restart starts empty (see [`Self::start_with_volume`]).
    pub async fn start(config: zenoh::Config) -> Result<FleetRouter, RouterError> {
        Self::start_with_volume(config, None).await
    }

    /// Like [`start`](Self::start), with a persistent volume at `volume` (a redb file,
    /// created when missing): every record it holds is back in the storage before the
    /// router listens, and every record put later is written to it ([`Volume`]).
    pub async fn start_with_volume(
        config: zenoh::Config,
        volume: Option<&std::path::Path>,
    ) -> Result<FleetRouter, RouterError> {
        let zerr = |stage| {
            move |e: zenoh::Error| RouterError::Zenoh {
                stage,
                reason: e.to_string(),
            }
        };
        let mut runtime = RuntimeBuilder::new(config)
            .build()
            .await
            .map_err(zerr("build"))?;
        let dynamic: DynamicRuntime = runtime.clone().into();
        let storage = StoragesPlugin::start(STORAGE_PLUGIN, &dynamic).map_err(zerr("storage"))?;
        let session = zenoh::session::init(dynamic)
            .await
            .map_err(zerr("session"))?;
        let volume = match volume {
            Some(path) => Some(Volume::open(&session, path).await?),
            None => None,
        };
        // Listening starts only here; before it, nothing can connect.
        runtime.start().await.map_err(zerr("start"))?;
        info!(zid = %runtime.zid(), locators = ?runtime.get_locators(), "qis router with storage started");
        Ok(FleetRouter {
            runtime,
            session,
            _storage: storage,
            volume,
        })
    }

    /// The router's own session (e.g. to check what its storage holds).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The endpoints it listens on.
    pub fn locators(&self) -> Vec<String> {
        self.runtime
            .get_locators()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Closes the volume (everything heard committed), the session and the runtime.
    pub async fn close(mut self) -> Result<(), RouterError> {
        if let Some(v) = self.volume.take() {
            v.close();
        }
        let zerr = |stage| {
            move |e: zenoh::Error| RouterError::Zenoh {
                stage,
                reason: e.to_string(),
            }
        };
        self.session.close().await.map_err(zerr("close session"))?;
        self.runtime.close().await.map_err(zerr("close"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_router_config_has_the_storage() {
        let cfg = router_config(None, &["tcp/127.0.0.1:7999".into()]).unwrap();
        assert_eq!(cfg.get_json("mode").unwrap(), "\"router\"");
        assert_eq!(
            cfg.get_json("plugins/storage-manager/storages/qis/key_expr")
                .unwrap(),
            format!("\"{RECORD_KEY_SPACE}\"")
        );
        assert!(cfg.get_json("listen/endpoints").unwrap().contains("7999"));
    }

    #[test]
    fn a_storage_outside_the_record_key_space_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = |ke: &str| {
            let path = dir.path().join("router.json5");
            let text = DEFAULT_ROUTER_CONFIG.replace(RECORD_KEY_SPACE, ke);
            assert_ne!(text, DEFAULT_ROUTER_CONFIG);
            std::fs::write(&path, text).unwrap();
            router_config(Some(&path), &[])
        };
        for ke in [
            "qis/**",
            "**",
            "qis/v2/**",
            "qis/v2/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/**",
            "qis/v1/*/*/*/*",
        ] {
            let e = with(ke).err().unwrap_or_else(|| panic!("{ke} accepted"));
            assert!(
                matches!(
                    e,
                    RouterError::Config {
                        key: "plugins/storage-manager/storages",
                        ..
                    }
                ),
                "{ke}: {e}"
            );
        }
        // A narrower storage (one fleet) is fine.
        let one_fleet = format!("qis/v2/depot{}", "/*".repeat(15));
        assert!(with(&one_fleet).is_ok());
        let shipped =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/zenoh-mtls-router.json5");
        assert!(router_config(Some(&shipped), &[]).is_ok());
    }

    #[test]
    fn the_shipped_access_control_router_config_denies_by_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/zenoh-mtls-acl-router.json5");
        let cfg = router_config(Some(&path), &[]).unwrap();
        assert_eq!(cfg.get_json("access_control/enabled").unwrap(), "true");
        assert_eq!(
            cfg.get_json("access_control/default_permission").unwrap(),
            "\"deny\""
        );
        assert!(
            cfg.get_json("access_control/rules")
                .unwrap()
                .contains("qis/v2/default/**")
        );
        assert_eq!(
            cfg.get_json("transport/link/tls/enable_mtls").unwrap(),
            "true"
        );
    }
}
