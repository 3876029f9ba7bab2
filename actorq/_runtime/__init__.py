"""The system side: actor cells, their processes, crashes and restarts, the system hub."""
