//! Data input: image decoding and model preprocessing.

pub mod image;
