//! drd-bucket: a stream's log in object storage (S3 and S3-compatible
//! stores, Azure Blob, GCS, a local directory) through the `object_store`
//! crate. Objects are written once and never rewritten or deleted by drd
//! ([`store`]), each carries its own record and hash-chain link
//! ([`object`]), payloads are encrypted on the shipping host for age
//! recipients whose private keys the hospital keeps offline ([`crypto`]),
//! and a restore site reads and checks the log from the bucket alone
//! ([`archive`], [`verify`]). Used by the daemon (uploads) and by drctl
//! (`wal-fetch --from`, `verify --from`, `ls --from`, `keys init`).

pub mod archive;
pub mod crypto;
pub mod object;
pub mod store;
pub mod verify;

pub use archive::{Archive, ArchiveError, Restored, SealedSegment, Written};
pub use crypto::{CryptoError, Opener, Sealer};
pub use store::{Bucket, RetryPolicy, StoreError};
