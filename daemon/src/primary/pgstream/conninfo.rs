//! The libpq connection string subset drd understands.
