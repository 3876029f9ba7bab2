"""The actor process side: booting an actor, its hub, its loop, its control socket."""
