//! Shared helpers of the e2e suite.
