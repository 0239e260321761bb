//! The edge: the control API (`drctl`'s gRPC service on the Unix socket
//! and, with mTLS, on TCP). The replication service the primaries talk to
//! is the replica driver's (`replica::server`).
pub mod control;
