//! Why a `source = "postgres"` session ended.

use super::conn::PgError;

/// Why a session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum PgStreamError {
    #[error("{0}")]
    Pg(#[from] PgError),
    #[error("PostgreSQL sent something drd cannot follow: {0}")]
    Protocol(String),
    #[error("{0}")]
    Cluster(String),
    /// The WAL drd needs is gone from the database (an invalidated slot,
    /// or a slot created after the WAL was recycled).
    #[error("{0}")]
    Gap(String),
    #[error("drd's copy of the WAL: {0}")]
    Local(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
