"""Small utilities: progress reporting, atomic file writes, hashing."""
