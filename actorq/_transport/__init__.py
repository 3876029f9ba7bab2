"""Moving bytes between processes: shared memory, rings, channels. Knows nothing of actors."""
