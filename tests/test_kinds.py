"""The kind registry: every kind is one module, and nothing outside it asks which kind it handles.

- a source scan: no `kind ==`, `isinstance(spec, ...)` or kind-name literal in
  code outside kinds/ (the workflow, the activities, the API, the schemas);
- the API's spec union and OpenAPI schema are built from the registry;
- relative phase days resolve against the shop's calendar (K-PHASED) and a
  K-OLDCUST spec without a send day takes the first open day;
- the examples start as shipped, on any day, through `sluice start`.
"""

from __future__ import annotations

import io
import re
import tokenize
from datetime import UTC, date, datetime, time
from pathlib import Path

import pytest
from pydantic import TypeAdapter
from sluice.api.http import create_app
from sluice.kinds import KINDS, CampaignSpec, Shop, compile_plan
from sluice.kinds.oldcust import OldCustomerSpec, first_send_day
from sluice.kinds.phased import Phased, PhasedSpec, phase_days
from sluice.schemas.rules import RuleViolation
from sluice.schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["activities", "api", "audiences", "schemas", "workflows", "workers", "db"]
FORBIDDEN = [
    (re.compile(r"\.kind\s*(==|!=|\bin\b)|\bkind\s*(==|!=)\s*[\"']K-"), "a comparison of a kind"),
    (re.compile(r"isinstance\(\s*spec\b"), "isinstance on a spec"),
    (re.compile(r"""["']K-[A-Z]+"""), "a kind's name"),
]
TZ = "Asia/Shanghai"


def _code_without_comments_and_docstrings(path: Path) -> str:
    out, prev = [], None
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if tok.type == tokenize.COMMENT:
            continue
        if tok.type == tokenize.STRING and prev in (tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT, None):
            continue  # a docstring
        out.append(tok.string)
        if tok.type not in (tokenize.NL, tokenize.COMMENT):
            prev = tok.type
    return " ".join(out)


def test_nothing_outside_a_kind_module_asks_which_kind_it_handles():
    found = []
    for pkg in SCANNED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            code = _code_without_comments_and_docstrings(path)
            found += [f"{path.relative_to(ROOT)}: {what}" for rx, what in FORBIDDEN if rx.search(code)]
    # The demo builds a K-OLDCUST spec to submit, as a merchant would: that names a kind, it does not branch on one.
    assert [f for f in found if not f.startswith("workers/demo.py: a kind's name")] == []


def test_the_scan_would_see_a_branch_on_the_kind(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""docstring K-X"""\n# kind == "K-X" in a comment is fine\nif plan.kind == "K-OLDCUST":\n    pass\n')
    code = _code_without_comments_and_docstrings(probe)
    assert [what for rx, what in FORBIDDEN if rx.search(code)] == ["a comparison of a kind", "a kind's name"]


def test_the_spec_union_and_the_openapi_schema_come_from_the_registry():
    schema = TypeAdapter(CampaignSpec).json_schema()
    assert set(schema["discriminator"]["mapping"]) == set(KINDS)
    openapi = create_app(Settings()).openapi()
    shown = {s.get("properties", {}).get("kind", {}).get("const") for s in openapi["components"]["schemas"].values()}
    assert set(KINDS) <= shown
    for name, kind in KINDS.items():
        assert kind.name == name and kind.spec.model_fields["kind"].annotation.__args__ == (name,)
        assert kind.audiences, name


def _phased(**over) -> PhasedSpec:
    phases = over.pop("phases", [
        {"name": "preheat", "days": 3, "text": "soon"},
        {"name": "promote", "days": 2, "text": "now"},
        {"name": "recall", "text": "last"},
    ])
    return PhasedSpec.model_validate({"kind": "K-PHASED", "shop_id": "s1", "campaign_id": "p", "phases": phases, **over})


def test_relative_phase_days_follow_each_other_from_the_first_open_day():
    morning = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai: today's 10:00 window is open
    night = datetime(2026, 12, 1, 14, 30, tzinfo=UTC)  # 22:30: the first open day is tomorrow
    d = date(2026, 12, 1)
    assert phase_days(_phased(), TZ, morning) == [
        (d, date(2026, 12, 3)), (date(2026, 12, 4), date(2026, 12, 5)), (date(2026, 12, 6), date(2026, 12, 6))]
    assert phase_days(_phased(), TZ, night)[0] == (date(2026, 12, 2), date(2026, 12, 4))
    fixed = _phased(phases=[{"name": "promote", "start_date": "2026-12-10", "days": 2, "text": "x"},
                            {"name": "recall", "text": "y"}])
    assert phase_days(fixed, TZ, morning) == [(date(2026, 12, 10), date(2026, 12, 11)), (date(2026, 12, 12),) * 2]
    plan = compile_plan(_phased(), campaign_db_id=1, shop=Shop("s1", TZ, False), now=morning)
    assert [(p.name, p.start_date, p.end_date) for p in plan.phases] == [
        ("preheat", d, date(2026, 12, 3)), ("promote", date(2026, 12, 4), date(2026, 12, 5)),
        ("recall", date(2026, 12, 6), date(2026, 12, 6))]


async def test_a_relative_phase_that_overlaps_a_fixed_one_is_refused_with_its_rule():
    spec = _phased(phases=[{"name": "preheat", "days": 5, "text": "x"},
                           {"name": "promote", "start_date": "2026-12-03", "days": 1, "text": "y"}])
    with pytest.raises(RuleViolation) as exc:
        await Phased().check(None, spec, Shop("s1", TZ, False), datetime(2026, 12, 1, 1, 0, tzinfo=UTC))
    assert (exc.value.field, exc.value.rule) == ("phases.1.start_date", "R-PH-1")


def test_end_date_and_days_together_are_refused():
    with pytest.raises(ValueError, match="R-PH-2"):
        _phased(phases=[{"name": "promote", "start_date": "2026-12-03", "end_date": "2026-12-04", "days": 2, "text": "y"}])


def test_an_oldcust_spec_without_a_send_day_takes_the_first_open_day():
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id="c", scene="S", card_text="Hi", send_time=time(10))
    assert first_send_day(spec, TZ, datetime(2026, 12, 1, 13, 59, tzinfo=UTC)) == date(2026, 12, 1)  # 21:59 local
    assert first_send_day(spec, TZ, datetime(2026, 12, 1, 14, 0, tzinfo=UTC)) == date(2026, 12, 2)  # 22:00 local


def test_a_phase_left_without_an_attribution_window_gets_the_kinds(monkeypatch):
    """R-ATT-1: a kind whose compile does not set `attribution` cannot ignore the spec's `attribution_days`:
    compile_plan puts the kind's window (Kind.attribution) on such a phase, and keeps one a compile set."""
    from typing import ClassVar, Literal

    from sluice.kinds.base import Kind, SpecBase
    from sluice.schemas.campaign import AttributionWindow, Channel, PhasePlan

    class BareSpec(SpecBase):
        kind: Literal["K-BARE"]

    class Bare(Kind):
        name: ClassVar[str] = "K-BARE"
        spec: ClassVar[type[SpecBase]] = BareSpec
        audiences: ClassVar[tuple[str, ...]] = ("shop_all",)

        async def check(self, conn, spec, shop, now) -> None:
            return None

        def compile(self, spec, shop, now) -> list[PhasePlan]:
            day = date(2030, 6, 10)
            common = dict(start_date=day, end_date=day, send_time=time(10), audience="shop_all", channel=Channel.chat,
                          template_cap=None, text="hi")  # fmt: skip
            return [PhasePlan(name="unset", **common),
                    PhasePlan(name="own", attribution=AttributionWindow.phase_period(), **common)]  # fmt: skip

    monkeypatch.setitem(KINDS, "K-BARE", Bare())
    now, shop = datetime(2030, 6, 1, tzinfo=UTC), Shop("s", TZ, False)
    for days, window in ((None, Bare().attribution(BareSpec(kind="K-BARE", shop_id="s", campaign_id="c"))),
                         (3, AttributionWindow.after(3))):  # fmt: skip
        spec = BareSpec(kind="K-BARE", shop_id="s", campaign_id="c", attribution_days=days)
        unset, own = compile_plan(spec, campaign_db_id=1, shop=shop, now=now).phases
        assert unset.attribution == window, days
        assert own.attribution == AttributionWindow.phase_period()
    assert AttributionWindow.after(3) != PhasePlan.model_fields["attribution"].default_factory()


def test_every_rule_id_a_kind_or_a_schema_cites_is_explained_in_rules_md():
    """An error's rule id means something to a user only if docs/rules.md explains it: every id written as a string
    in kinds/ and schemas/ (what refusals report) has its own `### <id>` section there."""
    explained = set(re.findall(r"^### (R-[A-Z0-9-]+)", (ROOT / "docs" / "rules.md").read_text(), re.M))
    cited = {
        (path.relative_to(ROOT).as_posix(), rule)
        for folder in ("kinds", "schemas")
        for path in sorted((ROOT / folder).glob("*.py"))
        for rule in re.findall(r"""["'](R-[A-Z]+(?:-[A-Z0-9]+)+)["']""", path.read_text())
    }
    assert len(cited) > 40
    assert not {(f, r) for f, r in cited if r not in explained}
