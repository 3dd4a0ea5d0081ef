//! The test bed.
pub mod bed;
pub mod controlplane;
pub mod crds;
pub mod csi;
pub mod databases;
pub mod envtest;
pub mod etcd;
pub mod gate;
pub mod namespace;
pub mod node;
pub mod pki;
pub mod pods;
pub mod process;
pub mod support;
pub mod testbed;

pub use bed::{TestBed, bed, wait_for};
