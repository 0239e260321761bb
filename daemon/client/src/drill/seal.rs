//! Signing and checking a drill's files with the DR node's mTLS identity.
//! (Being written: issue 21.)
