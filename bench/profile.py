"""Where the worker's CPU goes: a summary of a py-spy raw (collapsed stacks) profile.

    python -m bench --profile .sluice/bench/worker-profile.txt   # record during the phase day
    python -m bench profile .sluice/bench/worker-profile.txt     # summarize it again

Lines are `frame;frame;...;leaf count`, frames `function (path:line)`, outermost first.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::(?P<line>\d+))?\)$")

# Component of a leaf frame, by its file path (first match wins).
COMPONENTS = [
    ("asyncpg", "asyncpg (protocol, codecs, pool)"),
    ("temporalio/bridge", "Temporal SDK core bridge"),
    ("temporalio/worker/_workflow", "Temporal workflow worker (activations)"),
    ("temporalio/worker/workflow_sandbox", "Temporal workflow sandbox"),
    ("temporalio/worker/_activity", "Temporal activity worker"),
    ("temporalio/converter", "Temporal data converter"),
    ("temporalio/contrib/pydantic", "Temporal data converter"),
    ("temporalio", "Temporal SDK (other)"),
    ("google/protobuf", "protobuf"),
    ("pydantic", "pydantic (models, validation, json)"),
    ("structlog", "logging (structlog)"),
    ("logging", "logging (structlog)"),
    ("workers/logs.py", "logging (structlog)"),
    ("asyncio", "asyncio event loop"),
    ("selectors", "asyncio event loop"),
    ("activities/", "sluice activities (Python code)"),
    ("workflows/", "sluice workflow code"),
    ("schemas/", "sluice schemas"),
]


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for raw in Path(path).read_text(errors="replace").splitlines():
        raw = raw.strip()
        if not raw:
            continue
        stack, _, count = raw.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = []
        for f in stack.split(";"):
            m = _FRAME.match(f.strip())
            frames.append((m["func"], m["file"]) if m else (f.strip(), ""))
        stacks.append((frames, n))
    return stacks


def component(frames: list[tuple[str, str]]) -> str:
    func, file = frames[-1] if frames else ("", "")
    for key, name in COMPONENTS:
        if key in file:
            return name
    if not file or file.startswith("<"):
        return "native / other"
    return "other Python"


# Inclusive time of the send path's steps: a sample counts once for the first name found, innermost first.
STEPS = [
    ("_reserve", "activities/send.py"),
    ("_record", "activities/send.py"),
    ("send", "channels/outbox.py"),
    ("reconcile", "channels/outbox.py"),
    ("dispatch", "activities/send.py"),
    ("refresh_audience", "activities/audience.py"),
    ("send_slice", "activities/send.py"),
    ("_run_activity", "temporalio/worker/_activity.py"),
    ("_handle_activation", "temporalio/worker/_workflow.py"),
]


def summarize(path: Path, top: int = 25) -> str:
    stacks = parse(path)
    total = sum(n for _, n in stacks) or 1
    comps: Counter = Counter()
    leaves: Counter = Counter()
    steps: Counter = Counter()
    for frames, n in stacks:
        comps[component(frames)] += n
        if frames:
            func, file = frames[-1]
            leaves[f"{func} ({_short(file)})"] += n
        names = {(f, _short(file)) for f, file in frames}
        for func, file in STEPS:
            if any((f == func or f.endswith("." + func)) and file in fl for f, fl in names):
                steps[f"{func} ({file})"] += n
    out = [f"{total:,} samples", "", "by component (leaf frame):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in comps.most_common()]
    out += ["", "inclusive, by step of the path:"]
    out += [f"  {steps[f'{f} ({fl})'] / total:6.1%}  {f} ({fl})" for f, fl in STEPS]
    out += ["", f"top {top} leaf functions (self time):"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in leaves.most_common(top)]
    return "\n".join(out)


def _short(file: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file
