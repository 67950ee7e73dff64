"""Data lifecycle: how long rows live (retention and pruning), downsampled history (rollups), and what
the stored data costs (storage figures)."""
