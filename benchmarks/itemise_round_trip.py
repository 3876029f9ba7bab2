"""Where a round trip's interpreter work goes: bytecodes and C calls per Python frame.

    python benchmarks/itemise_round_trip.py [N]

Runs ``msgpath_harness.py``'s ``call-real`` mode (both sides of a synchronous call in
one thread, over real rings) warm, then N more calls (default 10) traced with
``sys.settrace`` (``f_trace_opcodes``: each bytecode) and ``sys.setprofile`` (each C
call), and prints per round trip: the bytecodes and calls of each Python function, then
the C functions each one calls. Callgrind gives the instructions
(``msgpath_harness.py --count call-real``); this says which frames they come from.
"""

from __future__ import annotations

import collections
import sys
from types import FrameType
from typing import Any

import msgpath_harness as mh


def _key(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename.split('actorq/')[-1]}:{frame.f_code.co_name}"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    h = mh.Harness(mh._system_hub)
    ops: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    ccalls: collections.Counter[tuple[str, str]] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "call":
            frames[_key(frame)] += 1
        elif event == "opcode":
            ops[_key(frame)] += 1
        return tracer

    def profiler(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call":
            ccalls[(_key(frame), getattr(arg, "__qualname__", str(arg)))] += 1

    try:
        h.calls_real(300)  # warm: the interpreter's specialised forms in place
        sys.settrace(tracer)
        sys.setprofile(profiler)
        h.calls_real(n)
    finally:
        sys.settrace(None)
        sys.setprofile(None)
        h.close()
    print(f"per round trip: {sum(ops.values()) / n:.0f} bytecodes, "
          f"{sum(frames.values()) / n:.1f} Python frames")
    for key, count in ops.most_common():
        print(f"{count / n:7.1f} bytecodes {frames[key] / n:4.1f} calls  {key}")
    print("C calls (per round trip, by calling frame)")
    for (key, fn), count in sorted(ccalls.items(), key=lambda kv: (kv[0][0], -kv[1])):
        print(f"{count / n:5.1f}  {key}  {fn}")


if __name__ == "__main__":
    main()
