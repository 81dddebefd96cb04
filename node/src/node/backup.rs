//! The node's backup (`GET /v1/sys/backup`): its sealed tree and what an
//! operator needs to know about it, signed by the node (see `crate::backup`).

use synod_proto::error::NodeError;

use super::Node;
use crate::backup::{BackedUpShare, BackupFile, NodeBackup, RaftCopy, Record};
use crate::caller::Caller;
use crate::sealed::Purpose;

impl Node {
    /// A signed backup of this node, for an admin. Online and consistent: the
    /// sealed tree is read in one scan after the state is read, and a secret
    /// sealed between the two (a key generated or refreshed in that moment)
    /// is listed as not current.
    pub async fn backup(&self, caller: &Caller) -> Result<BackupFile, NodeError> {
        caller.require_admin("a node backup")?;
        let (cluster_id, cluster_name, log_index, audit_head, keys) = {
            let applied = self.shared.read();
            let state = &applied.state;
            let cluster_id = state.cluster_id.clone().ok_or_else(|| {
                NodeError::unavailable("this node has no cluster yet; back it up once `synod cluster init` has run")
            })?;
            (
                cluster_id,
                state.cluster_name.clone().unwrap_or_default(),
                applied.last_applied.map_or(0, |l| l.index),
                state.audit_head.clone(),
                state.keys.clone(),
            )
        };
        let sealed = self.sealed.clone();
        let (records, contexts) = crate::seams::run_blocking(move || {
            Ok::<_, crate::sealed::SealError>((sealed.records()?, sealed.secret_contexts()?))
        })
        .await
        .map_err(|e| NodeError::unavailable(format!("could not read the sealed store: {e}")))?
        .map_err(|e| NodeError::unavailable(format!("could not read the sealed store: {e}")))?;
        let shares = contexts
            .into_iter()
            .filter(|ctx| ctx.purpose == Purpose::KeyPackage && ctx.node_id == self.id)
            .map(|ctx| {
                let key = keys.get(&ctx.key_id);
                let current = key.is_some_and(|k| k.version == ctx.key_version && k.generation == ctx.generation);
                let verifying_share = key.filter(|_| current).and_then(|k| {
                    let package = k.public_keys()?;
                    let id = crate::state::frost_identifier(self.id)?;
                    Some(hex::encode(package.verifying_shares().get(&id)?.serialize().ok()?))
                });
                BackedUpShare {
                    key_id: ctx.key_id.clone(),
                    name: key.map(|k| k.name.clone()),
                    version: ctx.key_version,
                    generation: ctx.generation,
                    current,
                    verifying_share,
                    group_key: key.and_then(|k| k.group_key.clone()),
                }
            })
            .collect();
        let raft = Some(self.raft_copy(log_index).await?);
        let metrics = self.raft.metrics().borrow().clone();
        let backup = NodeBackup {
            cluster_id,
            cluster_name,
            node_id: self.id,
            ca_fingerprint: crate::pki::fingerprint(&self.identity.ca_der.clone().into()),
            kek_backend: self.sealed.kek().backend().into(),
            kek: self.sealed.kek().describe(),
            taken_at_ms: self.now_ms(),
            log_index,
            term: metrics.current_term,
            audit_head,
            raft,
            shares,
            records: records.into_iter().map(|(k, v)| Record { key: hex::encode(k), value: hex::encode(v) }).collect(),
        };
        tracing::info!(log_index, shares = backup.shares.len(), records = backup.records.len(), "node backup taken");
        Ok(crate::backup::sign(&self.identity, &backup))
    }

    /// The stored snapshot and every committed entry after it up to `last`.
    /// Entries up to the applied index are committed and never truncated; a
    /// purge that ran between the two reads leaves a gap, and the backup is
    /// refused (run it again).
    async fn raft_copy(&self, last: u64) -> Result<RaftCopy, NodeError> {
        use openraft::RaftLogReader;
        let store = self.store.clone();
        let snapshot = crate::seams::run_blocking(move || crate::raft::state_machine::stored_snapshot(&*store))
            .await
            .and_then(|r| r)
            .map_err(|e| NodeError::unavailable(format!("could not read the stored snapshot: {e}")))?;
        let from = snapshot.as_ref().and_then(|(m, _)| m.last_log_id).map_or(0, |l| l.index + 1);
        let mut log = crate::raft::log_store::LogStore::new(self.store.clone());
        let entries = if from <= last {
            log.try_get_log_entries(from..=last)
                .await
                .map_err(|e| NodeError::unavailable(format!("could not read the log: {e}")))?
        } else {
            Vec::new()
        };
        if entries.first().is_some_and(|e| e.log_id.index != from)
            || entries.len() as u64 != (last + 1).saturating_sub(from)
        {
            return Err(NodeError::unavailable(
                "the log was compacted while the backup was read; run the backup again",
            ));
        }
        Ok(RaftCopy {
            snapshot_meta: snapshot.as_ref().map(|(m, _)| m.clone()),
            snapshot: snapshot.map(|(_, d)| hex::encode(d)),
            entries,
        })
    }
}
