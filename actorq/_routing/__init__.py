"""Routing: pools of actors, the routers that pick a member per call, the Executor."""
