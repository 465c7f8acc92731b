//! The integration-test binary (one binary, many modules).

mod bad_input;
mod cli;
mod common;
mod data_expectations;
mod data_files;
mod python;
mod roundtrip;
