//! Stowage data path.
