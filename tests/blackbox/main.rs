//! bb
