"""What every stage needs and no stage owns: crash-safe file writes and the two error kinds."""
