//! Refreshed shares ([`GenerationsConsistent`]):
//! - `group-key-unchanged`: a key's group public key, once known, is the same
//!   on every node at every step, whatever refreshes did to its shares; and
//!   every node holds the same public key package for a generation;
//! - `share-of-current-generation`: every share an honest signer released
//!   verifies against the verifying share of the generation current in the
//!   signer's own state when it checked the request (the generation is read
//!   by the signer's state machine, the verifying share from the committed
//!   package of that generation, and the share is checked by FROST: a signer
//!   that signed with another generation's share cannot pass, whatever it
//!   says). So no session mixes generations: the coordinator asks one
//!   generation, and a signer holding another refuses.
//!
//! The byzantine signer's shares are left to the blame checker (it lies on
//! purpose). The planted `keep-old-generation` (signers that never reload
//! their share after a refresh) must be caught here.

use std::collections::{BTreeMap, BTreeSet};

use frost_ed25519 as frost;
use synod_node::state::ClusterState;
use synod_proto::NodeId;

use super::{Checker, Release, Step, Violation};

pub struct GenerationsConsistent {
    pub byzantine: Option<NodeId>,
    /// Each key's group key as first seen, by key id.
    group_keys: BTreeMap<String, String>,
    /// Each generation's public key package (hex) as first seen, by (key id,
    /// generation, participants): an enrollment adds a participant's
    /// verifying share to the generation's package and changes nobody else's.
    packages: BTreeMap<(String, u32, Vec<NodeId>), String>,
    /// Shares judged already, by (node, request id, slot).
    judged: BTreeSet<(NodeId, String, u64)>,
}

impl GenerationsConsistent {
    pub fn new(byzantine: Option<NodeId>) -> Self {
        GenerationsConsistent {
            byzantine,
            group_keys: BTreeMap::new(),
            packages: BTreeMap::new(),
            judged: BTreeSet::new(),
        }
    }

    fn record(&mut self, id: NodeId, state: &ClusterState) -> Result<(), Violation> {
        for key in state.keys.values() {
            if let Some(group) = &key.group_key {
                let first = self.group_keys.entry(key.id.clone()).or_insert_with(|| group.clone());
                if first != group {
                    return Err(Violation::new(
                        "group-key-unchanged",
                        format!(
                            "n{id} holds key {} ({}) generation {} with group key {group}, first seen as {first}",
                            key.name, key.id, key.generation
                        ),
                    ));
                }
            }
            // A generating or imported key's package is fixed only once active.
            if key.activated_at_ms.is_none() {
                continue;
            }
            let Some(package) = &key.public_key_package else { continue };
            let slot = (key.id.clone(), key.generation, key.participants.clone());
            let first = self.packages.entry(slot).or_insert_with(|| package.clone());
            if first != package {
                return Err(Violation::new(
                    "group-key-unchanged",
                    format!(
                        "n{id} holds another public key package for key {} generation {} (participants {:?}) than was \
                         first seen",
                        key.name, key.generation, key.participants
                    ),
                ));
            }
        }
        Ok(())
    }

    fn judge(&self, release: &Release) -> Result<(), String> {
        let r = &release.released;
        let Some(package_bytes) = &r.signing_package else { return Ok(()) };
        let key_id = {
            let applied = release.handle.state().read();
            let Some(request) = applied.state.requests.get(&r.request_id) else { return Ok(()) };
            request.key_id.clone()
        };
        // A package of the generation that names the signer (an enrollment changes no other share).
        let package_hex = self
            .packages
            .iter()
            .filter(|((id, generation, participants), _)| {
                id == &key_id && *generation == r.generation && participants.contains(&release.node)
            })
            .map(|(_, package)| package)
            .next_back();
        let Some(package_hex) = package_hex else {
            return Ok(()); // A generation no step showed active (cannot be: it signed once applied).
        };
        let public = hex::decode(package_hex)
            .ok()
            .and_then(|b| frost::keys::PublicKeyPackage::deserialize(&b).ok())
            .ok_or("the committed public key package does not parse")?;
        let identifier = u16::try_from(release.node)
            .ok()
            .and_then(|n| frost::Identifier::try_from(n).ok())
            .ok_or("no FROST identifier")?;
        let verifying_share = public
            .verifying_shares()
            .get(&identifier)
            .ok_or(format!("n{} holds no verifying share in generation {}", release.node, r.generation))?;
        let signing_package =
            frost::SigningPackage::deserialize(package_bytes).map_err(|e| format!("signing package: {e}"))?;
        let share = hex::decode(&r.share)
            .ok()
            .and_then(|b| frost::round2::SignatureShare::deserialize(&b).ok())
            .ok_or("the share does not parse")?;
        frost_core::verify_signature_share(
            identifier,
            verifying_share,
            &share,
            &signing_package,
            public.verifying_key(),
        )
        .map_err(|e| {
            format!(
                "it does not verify against n{}'s verifying share of generation {} of key {key_id}, the generation \
                 current in its state when it checked the request ({e})",
                release.node, r.generation
            )
        })
    }
}

impl Checker for GenerationsConsistent {
    fn name(&self) -> &'static str {
        "generations-consistent"
    }

    fn check_step(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes.iter().filter(|v| v.moved) {
            self.record(v.id, &v.node.state().read().state)?;
        }
        for release in step.releases {
            let r = &release.released;
            if Some(release.node) == self.byzantine || !self.judged.insert((release.node, r.request_id.clone(), r.slot))
            {
                continue;
            }
            self.judge(release).map_err(|why| {
                Violation::new(
                    "share-of-current-generation",
                    format!("n{} released a share for request {} (slot {}): {why}", release.node, r.request_id, r.slot),
                )
            })?;
        }
        Ok(())
    }

    fn check_final(&mut self, step: &Step) -> Result<(), Violation> {
        for v in step.nodes {
            self.record(v.id, &v.node.state().read().state)?;
        }
        self.check_step(step)
    }
}
