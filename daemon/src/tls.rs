//! TLS material and mTLS plumbing (being written).
