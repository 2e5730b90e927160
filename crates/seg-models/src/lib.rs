//! seg-models
