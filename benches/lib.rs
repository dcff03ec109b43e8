//! Shared helpers for the criterion benchmarks (see the `[[bench]]` targets).
