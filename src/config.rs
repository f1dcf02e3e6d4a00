//! Cluster membership and node settings: `--peers`, `--config FILE`. (Being built.)
