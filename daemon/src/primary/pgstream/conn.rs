//! A PostgreSQL client connection (replication or ordinary): startup, authentication, simple queries, CopyBoth.
