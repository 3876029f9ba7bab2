"""Property: random spawn / kill / call sequences against a model of what must be running."""

from __future__ import annotations

import os
import signal

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import actorq
from actorq.testing import wait_until


class Member(actorq.Actor):
    def __init__(self, tag):
        self.tag = tag
        self.calls = 0

    def ping(self):
        self.calls += 1
        return (self.tag, os.getpid(), self.context.restarts)


class SupervisionModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.system = actorq.ActorSystem(root_max_restarts=1000)
        self.refs = {}  # tag -> ref
        self.alive = {}  # tag -> expected to serve calls
        self.restart = {}
        self.kills = {}
        self.n = 0

    def teardown(self):
        self.system.close()

    @rule(restart=st.sampled_from(["permanent", "transient", "temporary"]))
    def spawn(self, restart):
        tag = f"m{self.n}"
        self.n += 1
        self.refs[tag] = self.system.spawn(Member, tag, name=tag, restart=restart)
        self.alive[tag] = True
        self.restart[tag] = restart
        self.kills[tag] = 0

    @precondition(lambda self: any(self.alive.values()))
    @rule(data=st.data())
    def kill(self, data):
        tag = data.draw(st.sampled_from(sorted(t for t, a in self.alive.items() if a)))
        ref = self.refs[tag]
        _tag, pid, _r = ref.ping().result(timeout=20)
        os.kill(pid, signal.SIGKILL)
        self.kills[tag] += 1
        if self.restart[tag] == "temporary":
            self.alive[tag] = False
            wait_until(lambda: self.system.metrics()["actors"][tag]["state"] == "stopped",
                       timeout=20)
        else:
            # SIGKILL is abnormal: permanent and transient actors come back
            wait_until(lambda: self._restarted(tag, pid), timeout=20)

    def _restarted(self, tag, old_pid):
        try:
            _tag, pid, restarts = self.refs[tag].ping().result(timeout=20)
        except actorq.ActorCrashed:
            return False
        return pid != old_pid and restarts == self.kills[tag]

    @precondition(lambda self: bool(self.refs))
    @rule(data=st.data())
    def call(self, data):
        tag = data.draw(st.sampled_from(sorted(self.refs)))
        if self.alive[tag]:
            got_tag, _pid, restarts = self.refs[tag].ping().result(timeout=20)
            assert got_tag == tag
            assert restarts == self.kills[tag]
        else:
            try:
                self.refs[tag].ping()
            except actorq.ActorStopped:
                pass
            else:
                raise AssertionError(f"{tag} should be stopped")

    @invariant()
    def states_match_the_model(self):
        actors = self.system.metrics()["actors"]
        for tag, alive in self.alive.items():
            state = actors[tag]["state"]
            if alive:
                assert state in ("starting", "running", "restarting"), (tag, state)
            else:
                assert state == "stopped", (tag, state)


TestSupervisionModel = SupervisionModel.TestCase
TestSupervisionModel.settings = settings(
    max_examples=6, stateful_step_count=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
