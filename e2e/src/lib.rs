//! The test bed.
pub mod csi;
