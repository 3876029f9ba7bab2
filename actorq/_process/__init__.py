"""OS processes: start methods, death signals, stop escalation. Knows nothing of actors."""
