//! One stream's segment records in the RocksDB catalog, as drd-core's
//! [`drd_core::storage::Catalog`]: the core's [`Record`]s in, the
//! catalog's [`SegmentRecord`]s (and the stream's [`StreamMeta`]) stored.

use crate::storage::catalog::{Catalog, CatalogError, SegmentRecord, StreamMeta};
use drd_core::replica::Record;
use drd_proto::StreamName;
use std::sync::Arc;

/// A catalog record as drd-core's session keeps it.
pub fn core_record(r: &SegmentRecord) -> Result<Record, CatalogError> {
    Ok(Record {
        segment: r.segment_name()?,
        start: r.start,
        size: r.size,
        sealed: r.sealed,
        sha256: r.sha256.as_deref().and_then(drd_core::chain::from_hex),
        chain: r.chain.as_deref().and_then(drd_core::chain::from_hex),
        check: r.check,
        epoch: r.epoch,
        received_at_ms: r.received_at_ms,
        sealed_at_ms: r.sealed_at_ms,
    })
}

/// The catalog record to store for the session's `rec`. The record the
/// session began with (`base`) keeps what the receive path does not
/// decide; a sealed one is never changed by it.
pub fn catalog_record(rec: &Record, base: Option<&SegmentRecord>) -> SegmentRecord {
    match base.filter(|b| b.name == rec.segment.as_str()) {
        Some(b) if b.sealed => b.clone(),
        Some(b) => SegmentRecord {
            size: rec.size,
            sealed: rec.sealed,
            sha256: rec.sha256.map(hex::encode),
            sealed_at_ms: rec.sealed_at_ms,
            chain: rec.chain.map(hex::encode),
            check: rec.check,
            ..b.clone()
        },
        None => SegmentRecord {
            name: rec.segment.to_string(),
            start: rec.start,
            size: rec.size,
            sealed: rec.sealed,
            sha256: rec.sha256.map(hex::encode),
            epoch: rec.epoch,
            received_at_ms: rec.received_at_ms,
            sealed_at_ms: rec.sealed_at_ms,
            fork: false,
            in_source: false,
            chain: rec.chain.map(hex::encode),
            check: rec.check,
            pruned_at_ms: None,
        },
    }
}

/// One stream's records in the catalog, committed with the stream's meta.
pub struct StreamCatalog {
    catalog: Arc<Catalog>,
    stream: StreamName,
    /// The tail's record as the receive session began: the fields the
    /// core does not keep (fork, in_source, pruned_at_ms) come from it
    /// when its record is committed again (see [`catalog_record`]).
    base: Option<SegmentRecord>,
    /// The stream's counters, written with every commit (one synced batch
    /// with the records); its chain head is the commit's.
    meta: StreamMeta,
}

impl StreamCatalog {
    pub fn new(
        catalog: Arc<Catalog>,
        stream: StreamName,
        base: Option<SegmentRecord>,
        meta: StreamMeta,
    ) -> Self {
        Self {
            catalog,
            stream,
            base,
            meta,
        }
    }

    /// The catalog record a commit stores for `rec`.
    pub fn record(&self, rec: &Record) -> SegmentRecord {
        catalog_record(rec, self.base.as_ref())
    }

    /// The stream's meta as the last commit stored it (or will).
    pub fn meta(&self) -> &StreamMeta {
        &self.meta
    }

    /// The stream's meta as the last commit stored it.
    pub fn into_meta(self) -> StreamMeta {
        self.meta
    }
}

impl drd_core::storage::Catalog for StreamCatalog {
    type Error = CatalogError;

    fn load(&mut self) -> Result<(Vec<Record>, [u8; 32]), CatalogError> {
        let mut records = self
            .catalog
            .segments(&self.stream)?
            .iter()
            .map(core_record)
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| r.start);
        let head = self.catalog.stream_meta(&self.stream)?.chain_head();
        Ok((records, head))
    }

    /// One synced RocksDB batch: the records and the meta.
    fn commit(&mut self, records: &[Record], chain_head: [u8; 32]) -> Result<(), CatalogError> {
        let records: Vec<SegmentRecord> = records.iter().map(|r| self.record(r)).collect();
        let refs: Vec<&SegmentRecord> = records.iter().collect();
        // A stream with no seal yet stores no chain head (None, which
        // reads as the genesis value): only a different head is written.
        if chain_head != self.meta.chain_head() {
            self.meta.chain_head = Some(hex::encode(chain_head));
        }
        self.catalog.commit(&self.stream, &refs, &self.meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drd_core::storage::{contract, Catalog as _};

    #[test]
    fn the_catalog_passes_the_catalog_suite_and_its_commits_survive_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let stream = StreamName::new("s").unwrap();
        let open = || Arc::new(Catalog::open(&d.path().join("catalog")).unwrap());
        let mut c = StreamCatalog::new(open(), stream.clone(), None, StreamMeta::default());
        contract::catalog(&mut c).unwrap();
        let before = c.load().unwrap();
        drop(c);
        let mut c = StreamCatalog::new(open(), stream, None, StreamMeta::default());
        assert_eq!(c.load().unwrap(), before);
        assert_eq!(before.0.len(), 2);
        assert_eq!(before.1, [2; 32]);
    }
}
