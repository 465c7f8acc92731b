//! The integration-test binary (one binary, many modules).

// Tests report skips (missing ../shared locally) on stderr.
#![allow(clippy::print_stderr)]

mod absorption_parity;
mod bad_input;
mod catalogue;
mod cli;
mod common;
mod compression;
mod data_expectations;
mod data_files;
mod data_validation;
mod defaults;
mod determinism;
mod dynamical;
mod dynamical_confidence;
mod dynamo_parity;
mod examples;
mod flags;
mod fuzz_corpus;
mod gpcca_parity;
mod kernel_exprs;
mod kernel_io;
mod kernel_parity;
mod labeling;
mod labeling_dynamo_parity;
mod lineage_tracing;
mod messages;
mod names_batch;
mod perturb;
mod pipeline;
mod python;
mod raw_run;
mod report;
mod roundtrip;
mod umap;
mod upstream_parity;
mod vectorfield;
mod writes;
