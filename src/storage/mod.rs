//! File-backed stable storage for a node (docs/storage.md). (Being built.)
