"""Scripts that fetch public deraining benchmarks into derainkit's data root (see README.md)."""
