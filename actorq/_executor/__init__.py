"""actorq.Executor: a concurrent.futures.Executor on a pool of function-running actors."""
