"""Music every stage speaks: notes and score events in beats, keys and scales."""
