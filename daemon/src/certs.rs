//! Certificate generation (being written).
