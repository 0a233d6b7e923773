"""Gateway sessions and their recordings (built in a later step)."""
