"""Property: random spawn / kill / exit / stop / call sequences against a model of what runs.

Members live under the root or under a supervisor of their own; they die of SIGKILL, of an
abnormal exit (code 3) or of a normal one (code 0), which tells ``transient`` (restarted
after an abnormal end only) from ``permanent`` (always) and ``temporary`` (never).
HYPOTHESIS_PROFILE=soak (or nightly) runs it long.
"""

from __future__ import annotations

import os
import signal

import pytest
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

    def leave(self, code):
        os._exit(code)


class SupervisionModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.system = actorq.ActorSystem(root_max_restarts=1000, warm_spares=1)
        self.sup = self.system.supervisor(max_restarts=1000, within=1.0, name="members")
        self.refs = {}  # tag -> ref
        self.alive = {}  # tag -> expected to serve calls
        self.restart = {}
        self.kills = {}  # tag -> restarts expected so far
        self.n = 0

    def teardown(self):
        self.system.close()

    @rule(restart=st.sampled_from(["permanent", "transient", "temporary"]),
          under=st.sampled_from(["root", "supervisor"]))
    def spawn(self, restart, under):
        tag = f"m{self.n}"
        self.n += 1
        parent = self.system if under == "root" else self.sup
        self.refs[tag] = parent.spawn(Member, tag, name=tag, restart=restart)
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

    @precondition(lambda self: any(self.alive.values()))
    @rule(data=st.data(), code=st.sampled_from([0, 3]))
    def exit(self, data, code):
        tag = data.draw(st.sampled_from(sorted(t for t, a in self.alive.items() if a)))
        ref = self.refs[tag]
        _tag, pid, _r = ref.ping().result(timeout=20)
        try:
            ref.leave(code).result(timeout=20)
        except actorq.ActorCrashed:
            pass  # it died handling the call: its caller is told
        comes_back = self.restart[tag] == "permanent" or (
            self.restart[tag] == "transient" and code != 0)
        if comes_back:
            self.kills[tag] += 1
            wait_until(lambda: self._restarted(tag, pid), timeout=20)
        else:
            self.alive[tag] = False
            wait_until(lambda: self.system.metrics()["actors"][tag]["state"] == "stopped",
                       timeout=20)

    @precondition(lambda self: any(self.alive.values()))
    @rule(data=st.data())
    def stop(self, data):
        tag = data.draw(st.sampled_from(sorted(t for t, a in self.alive.items() if a)))
        self.system.stop(self.refs[tag])  # for good, whatever its restart type
        self.alive[tag] = False

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
# real processes, restarts and stops: minutes on a loaded 2-core machine, soak much longer
TestSupervisionModel = pytest.mark.timeout(3600 if os.environ.get(
    "HYPOTHESIS_PROFILE") in ("soak", "nightly") else 240)(TestSupervisionModel)
SOAK = os.environ.get("HYPOTHESIS_PROFILE") in ("soak", "nightly")
TestSupervisionModel.settings = settings(
    max_examples=100 if SOAK else 5, stateful_step_count=40 if SOAK else 12, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
