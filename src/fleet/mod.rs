//! The fleet exchange over Zenoh: key space, settings, signatures, the exchange service
//! and the router with its bounded storage for scale-out. Depends on `core`; `core` never on this.

pub mod config;
pub mod exchange;
mod follows;
pub mod identity;
pub mod intake;
pub mod keys;
pub mod lanes;
mod outbox;
pub mod republish;
pub mod router;
pub mod signing;
pub mod stats;
pub mod storage;
pub mod volume;

pub use config::{FleetConfig, FleetConfigError, FleetSettings};
pub use exchange::{FleetError, FleetExchange, LaneView, Publish};
pub use identity::{Identity, IdentityError};
pub use intake::{Address, Received};
pub use keys::KeyError;
pub use republish::RepublishPolicy;
pub use router::{FleetRouter, RouterError, RouterSettings, RouterStatsSnapshot};
pub use signing::{Admission, VerifyError};
pub use stats::{FleetStats, FleetStatsSnapshot};
