//! Key versions stay consistent in every node's state ([`VersionsConsistent`]):
//! - `one-primary-per-key`: the version a name points to is the newest that
//!   ever turned active, and every older version that turned active has its
//!   retirement deadline set (a rotation finished), with version numbers never
//!   reused among a name's rotations;
//! - `retired-version-takes-requests`: no request was taken on a version
//!   after its retirement deadline by the log's time (requests committed
//!   before it may still finish during the overlap; with no overlap, one
//!   committed in the same millisecond as the promotion ends at the deadline
//!   itself). Request records are kept for good, so this is judged once, on
//!   every node's final state.
//!
//! Shares released for a retired version are judged by
//! `out-of-service-releases-nothing`, which counts `retired` as out of
//! service. The planted `skip-retirement` (an overlap that never ends) must be
//! caught here.

use std::collections::BTreeSet;

use synod_node::state::ClusterState;
use synod_proto::NodeId;

use super::{Checker, Step, Violation};

pub struct VersionsConsistent;

impl VersionsConsistent {
    fn primaries(id: NodeId, state: &ClusterState) -> Result<(), Violation> {
        for (name, primary) in &state.key_names {
            let versions = state.versions_of(name);
            let activated: Vec<_> = versions.iter().filter(|k| k.activated_at_ms.is_some()).collect();
            let Some(newest) = activated.iter().max_by_key(|k| k.version) else { continue };
            if &newest.id != primary {
                return Err(Violation::new(
                    "one-primary-per-key",
                    format!(
                        "n{id}: key {name}'s primary is {primary}, but version {} ({}) is the newest that turned active",
                        newest.version, newest.id
                    ),
                ));
            }
            if let Some(old) = activated.iter().find(|k| k.id != newest.id && k.retire_at_ms.is_none()) {
                return Err(Violation::new(
                    "one-primary-per-key",
                    format!("n{id}: key {name}'s version {} is not the primary and has no retirement", old.version),
                ));
            }
            let rotated: Vec<u32> = versions.iter().filter(|k| k.rotation.is_some()).map(|k| k.version).collect();
            if rotated.iter().collect::<BTreeSet<_>>().len() != rotated.len() {
                return Err(Violation::new(
                    "one-primary-per-key",
                    format!("n{id}: key {name}'s rotations reuse a version number: {rotated:?}"),
                ));
            }
        }
        Ok(())
    }

    fn requests(id: NodeId, state: &ClusterState) -> Result<(), Violation> {
        for request in state.requests.values() {
            let Some(key) = state.keys.get(&request.key_id) else { continue };
            let Some(retire_at) = key.retire_at_ms else { continue };
            if request.created_at_ms > retire_at {
                return Err(Violation::new(
                    "retired-version-takes-requests",
                    format!(
                        "n{id}: request {} (attempt {}) was taken at {} ms on key {} version {}, which retired at {} ms",
                        request.request_id, request.attempt, request.created_at_ms, key.name, key.version, retire_at
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Checker for VersionsConsistent {
    fn name(&self) -> &'static str {
        "versions-consistent"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            Self::primaries(v.id, &v.node.state().read().state)?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            let applied = v.node.state().read();
            Self::primaries(v.id, &applied.state)?;
            Self::requests(v.id, &applied.state)?;
        }
        Ok(())
    }
}
