//! Pod exec transport (being written).
