"""Small utilities: progress reporting, crash-safe file writes, device selection."""
