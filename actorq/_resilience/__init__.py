"""Policies for transient failures: backoff (and later retries and circuit breakers)."""
