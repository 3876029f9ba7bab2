"""Supervision: restart policies, the supervisor tree, dead letters."""
