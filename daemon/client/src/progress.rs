//! Progress tokens: drctl names its request's operation with one
//! (`progress_token`) and finds it again in `Status` to draw a bar; the
//! daemon keeps at most [`MAX_TOKEN_LEN`] characters of it.

/// Longest progress token kept from a client (longer ones are cut).
pub const MAX_TOKEN_LEN: usize = 64;
