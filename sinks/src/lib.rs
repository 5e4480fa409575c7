//! gammaray's event sinks and router (work in progress).
#![deny(missing_docs)]
#![forbid(unsafe_code)]
