//! Stowage custom resource types.
