//! The composition root's side of the drivers: builds, from the [`Node`],
//! the narrow handle each driver runs with — the shipper's
//! [`ShipContext`], spool pruning's [`SpoolPruner`], the DR site's
//! [`RetentionPruner`] — so that the drivers in `primary/` and `replica/`
//! never hold the node and never import the operations.

use crate::config::StreamConfig;
use crate::node::{Node, Shipper};
use crate::primary::pgstream::PgContext;
use crate::primary::prune::SpoolPruner;
use crate::primary::shipper::{Fence, ShipContext};
use crate::replica::prune::RetentionPruner;
use drd_proto::StreamName;
use futures::future::BoxFuture;
use std::sync::Arc;

impl Node {
    /// The handle `cfg`'s shipper runs with (`status`: its live state).
    pub fn ship_context(
        self: &Arc<Self>,
        cfg: &StreamConfig,
        status: &Arc<Shipper>,
    ) -> anyhow::Result<ShipContext> {
        Ok(ShipContext {
            cfg: cfg.clone(),
            status: status.clone(),
            role: self.stream_role(&cfg.name)?,
            catalog: self.catalog.clone(),
            tuning: self.config.tuning.clone(),
            node_id: self.config.node_id.clone(),
            bandwidth: self.bandwidth.clone(),
            dialer: self.dialer(),
            fence: Arc::new(FenceSelf(self.clone())),
        })
    }

    /// The handle `cfg`'s spool pruning runs with (`shipper`: its live
    /// state).
    pub fn spool_pruner(
        &self,
        cfg: &StreamConfig,
        shipper: &Arc<Shipper>,
    ) -> anyhow::Result<SpoolPruner> {
        Ok(SpoolPruner {
            cfg: cfg.clone(),
            shipper: shipper.clone(),
            role: self.stream_role(&cfg.name)?,
            catalog: self.catalog.clone(),
        })
    }

    /// The handle `cfg`'s database session runs with, for a
    /// `source = "postgres"` stream (None for any other).
    pub fn pg_context(
        &self,
        cfg: &StreamConfig,
        shipper: &Arc<Shipper>,
    ) -> anyhow::Result<Option<PgContext>> {
        let Some(source) = cfg.postgres.clone() else {
            return Ok(None);
        };
        Ok(Some(PgContext {
            cfg: cfg.clone(),
            source,
            status: shipper.clone(),
            role: self.stream_role(&cfg.name)?,
            catalog: self.catalog.clone(),
            side_dir: crate::sidefiles::side_dir(&self.config.data_dir, &cfg.name),
            tuning: self.config.tuning.clone(),
        }))
    }

    /// The handle one object-store target's task runs with.
    pub fn target_context(
        &self,
        cfg: &StreamConfig,
        shipper: &Arc<Shipper>,
        state: &Arc<crate::targets::TargetState>,
    ) -> anyhow::Result<crate::targets::TargetContext> {
        let target = cfg
            .targets
            .iter()
            .find(|t| t.url == state.url)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("target {} is not configured", state.url))?;
        Ok(crate::targets::TargetContext {
            stream: cfg.clone(),
            target,
            catalog: self.catalog.clone(),
            role: self.stream_role(&cfg.name)?,
            shipper: shipper.clone(),
            node_id: self.config.node_id.to_string(),
            data_dir: self.config.data_dir.clone(),
            state: state.clone(),
        })
    }

    /// The handle the DR site's retention passes run with.
    pub fn retention_pruner(&self) -> Arc<RetentionPruner> {
        Arc::new(RetentionPruner {
            catalog: self.catalog.clone(),
            roles: self.roles.clone(),
            retention: self.config.replica.as_ref().map(|r| r.retention.clone()),
            data_dir: self.config.data_dir.clone(),
            streams: self.config.streams.clone(),
        })
    }
}

/// The shipper's [`Fence`]: the fence operation, on this node.
struct FenceSelf(Arc<Node>);

impl Fence for FenceSelf {
    fn fence_self<'a>(
        &'a self,
        stream: &'a StreamName,
        seen_epoch: u64,
        reason: &'a str,
        from: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(crate::ops::remote::fence_self(
            &self.0, stream, seen_epoch, reason, from,
        ))
    }
}
