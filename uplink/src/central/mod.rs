//! `outpost-central`.
