"""The report page (/ui/) in a real headless Chromium against the real API on real Postgres (R-REP-1, R-REP-2).

A campaign is seeded with known deliveries, replies and orders (rows written
directly, as tests/test_reports.py does); the API runs under uvicorn; Debian's
/usr/bin/chromium, driven by playwright (no browser is downloaded), loads the
page, is given the key, opens the campaign, and every number the page shows is
compared with the JSON the API answers: its data-value must be the JSON value
and its text that value formatted by the page's rules (written out again here,
independently). The failures table is paged and filtered like the API's
recipients route. A K-EDM campaign (tests/test_report_funnel.py's) shows its
funnel (R-ED-5), each stage for the campaign and per channel as the API's. A
full-page screenshot of each lands in the test's tmp_path and in tests/output/
(report-page.png, report-page-funnel.png).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sluice.api.ui import UI_CSP, UI_PAGE
from sluice.channels.base import AMBIGUOUS, REJECTED_BY_PROVIDER
from sluice.schemas.activities import NOT_SENT_CANCELLED, SUPPRESS_SHOP_DAY, SUPPRESS_UNSUBSCRIBED

from tests.api_helpers import bearer, running_app, serving, shop_key
from tests.factories import make_campaign
from tests.test_report_funnel import edm_campaign

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is absent: Debian's chromium package (./scripts/bootstrap installs it when run as root)",
)

TZ = "Asia/Shanghai"
SHOP, OTHER = "rp1", "rp2"
WF = f"{SHOP}.spring"
EDM = f"{SHOP}.edm"
OUTPUT = Path(__file__).parent / "output" / "report-page.png"

# The page's number formats (web/report.js), written out again as the test's oracle.
COUNTS = {"sent", "failed", "reached", "replied", "converted", "orders", "campaigns", "count"}
MONEY = {"revenue", "cost"}
RATES = {"inquiry_rate", "conversion_rate", "roi", "conversion"}
FIGURES = ("sent", "reached", "inquiry_rate", "conversion_rate", "revenue", "cost", "roi")
MINOR = ("failed", "replied", "converted", "orders")
DASH = "\u2013"


def shown(name: str, value, signed: bool = False) -> str:
    """What the page must show for a JSON value of the field `name`."""
    if value is None:
        return DASH
    if name in MONEY:
        q = Decimal(value).quantize(Decimal("0.01"), ROUND_HALF_UP)
        sign = "" if q == 0 else "-" if q < 0 else "+" if signed else ""
        return f"{sign}{abs(q):,.2f}"
    if name in RATES:
        q = Decimal(value * 100).quantize(Decimal("0.1"), ROUND_HALF_UP)  # the double's exact value, half up
        return f"{'-' if q < 0 else ''}{abs(q):,.1f}%"
    if isinstance(value, int):
        sign = "-" if value < 0 else "+" if signed and value > 0 else ""
        return f"{sign}{abs(value):,}"
    return str(value)


def test_the_oracle_formats():
    assert shown("sent", 1234567) == "1,234,567"
    assert shown("sent", -2, signed=True) == "-2" and shown("sent", 3, signed=True) == "+3"
    assert shown("revenue", "1234.505") == "1,234.51" and shown("cost", "0.2000") == "0.20"
    assert shown("revenue", "-15.00", signed=True) == "-15.00" and shown("cost", "0.0000", signed=True) == "0.00"
    assert shown("roi", 249.0) == "24,900.0%" and shown("inquiry_rate", 0.0625) == "6.3%"
    assert shown("conversion_rate", None) == DASH


def test_the_page_has_nothing_inline_and_nothing_from_elsewhere():
    import re

    web = Path(__file__).parent.parent / "web"
    html = (web / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
    assert "style=" not in html and "<style" not in html and not re.search(r"\son\w+=", html)
    assert not re.search(r"<input[^>]*\sname=", html)  # a form submitted without the script sends no key anywhere
    script = (web / "report.js").read_text()
    assert "innerHTML" not in script and "eval(" not in script and "localStorage" not in script
    for text in (html, script, (web / "report.css").read_text()):
        assert set(re.findall(r"https?://[^\s\"')]+", text)) <= {"http://www.w3.org/2000/svg"}  # the SVG namespace only


def resolve(answer, path: str):
    node = answer
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def field_name(path: str) -> str:
    return [p for p in path.split(".") if not p.isdigit()][-1]


def check_numbers(items: list[dict], source: str, answer: dict) -> set[str]:
    """Every number element of a section: its data-value is the API's value, its text that value formatted."""
    seen = set()
    for it in items:
        if it["source"] != source or it["value"] is None:
            continue
        path = it["field"]
        value = resolve(answer, path)
        assert json.loads(it["value"]) == value, (source, path)
        assert it["text"] == shown(field_name(path), value, signed=path.startswith("change.")), (source, path, it["text"])
        seen.add(path)
    return seen


# ------------------------------------------------------------------ the seeded campaign


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), ZoneInfo(TZ))


async def seed(pool) -> int:
    """Two phases over 4 shop days (the last one today); 9 buyers reached, 14 decisions that reached nobody,
    2 replies, orders paid, refunded and before the reach."""
    today = datetime.now(UTC).astimezone(ZoneInfo(TZ)).date()
    d1, d2, d3, d4 = (today - timedelta(days=n) for n in (3, 2, 1, 0))
    cid = await make_campaign(pool, SHOP, "spring", state="completed")
    await make_campaign(pool, SHOP, "summer", state="sending")
    await pool.execute("UPDATE campaigns SET phase_names = '{warm-up,offer}' WHERE id = $1", cid)

    def delivery(phase, consumer, day, state, reason=None, cost=None):
        return (cid, phase, consumer, day, "chat", SHOP, "g", day, state, reason, at(day, 10), cost)

    cents = Decimal("0.05")
    rows = [delivery(0, b, d1, "sent", cost=None if b == 6 else cents) for b in range(1, 7)]
    rows += [delivery(0, 1, d2, "sent", cost=cents)]
    rows += [delivery(0, b, d1, "failed", REJECTED_BY_PROVIDER) for b in range(101, 107)]
    rows += [delivery(0, b, d1, "suppressed", SUPPRESS_SHOP_DAY) for b in range(107, 111)]
    rows += [delivery(0, 111, d1, "suppressed", SUPPRESS_UNSUBSCRIBED)]
    rows += [delivery(1, b, d3, "sent", cost=Decimal("0.10")) for b in (1, 7, 8)]
    rows += [delivery(1, b, d3, "not_sent", NOT_SENT_CANCELLED) for b in (112, 113)]
    rows += [delivery(1, 114, d3, "unknown", AMBIGUOUS), delivery(1, 9, d4, "sent", cost=Decimal("0.10"))]
    await pool.executemany(
        "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
        " state, reason, decided_at, cost) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        rows,
    )
    await pool.executemany(
        "INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, occurred_at) VALUES ($1, $2, 'replied', $3, $4)",
        [(SHOP, "page-r2", 2, at(d1, 12)), (SHOP, "page-r7", 7, at(d3, 12))],
    )
    orders = [  # consumer, created, paid, amount, refunded, status
        (2, at(d1, 14), True, "50.00", "0", "paid"),
        (1, at(d3, 12), True, "1234.50", "0", "paid"),
        (7, at(d4, 9), True, "20.00", "5.00", "refunded"),
        (3, at(d1 - timedelta(days=10), 9), True, "40.00", "0", "paid"),  # before the reach: not the campaign's
    ]
    await pool.executemany(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, refunded_amount, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(cid * 100 + i, SHOP, c, t, t + timedelta(minutes=5) if paid else None, Decimal(a), Decimal(r), s)
         for i, (c, t, paid, a, r, s) in enumerate(orders)],
    )  # fmt: skip
    return cid


# ------------------------------------------------------------------ the page

NUMBERS_JS = """() => [...document.querySelectorAll("[data-field]")].map(e => ({
  source: e.closest("[data-source]")?.dataset.source ?? null, field: e.dataset.field,
  value: e.dataset.value ?? null, text: e.textContent}))"""
ROWS_JS = """() => [...document.querySelectorAll("#failure-table tbody tr[data-row]")].map(tr =>
  Object.fromEntries([...tr.querySelectorAll("[data-field]")].map(td => [td.dataset.field.split(".").pop(), td.textContent])))"""
POINTS_JS = """() => [...document.querySelectorAll("#trend-chart circle[data-point]")].map(c => ({
  point: c.dataset.point, value: JSON.parse(c.dataset.value), cy: Number(c.getAttribute("cy"))}))"""


def table_rows(page_json: dict, report: dict) -> list[dict]:
    names = {p["phase"]: p["name"] for p in report["phases"]}
    return [{"phase": names[r["phase"]], "consumer_id": str(r["consumer_id"]), "day": r["day"], "channel": r["channel"],
             "state": r["state"], "reason": r["reason"] or DASH} for r in page_json["recipients"]]  # fmt: skip


async def redrawn(page, action) -> None:
    """Run `action` (a click, a select) and wait until the failures table has drawn the page it asked for."""
    before = await page.evaluate("() => Number(document.getElementById('failures').dataset.loads || 0)")
    await action()
    await page.wait_for_function(f"() => Number(document.getElementById('failures').dataset.loads || 0) > {before}")


async def test_report_page_shows_the_api_numbers(clean_db, ts_env, tmp_path):
    from playwright.async_api import async_playwright

    pool = clean_db
    key = await shop_key(pool, SHOP, TZ)
    await shop_key(pool, OTHER, TZ)
    await make_campaign(pool, OTHER, "theirs", state="completed")  # never on rp1's page
    await seed(pool)
    await edm_campaign(pool, SHOP, "edm", OTHER)  # a K-EDM campaign: its report has the funnel

    async with running_app(pool, ts_env, worker=False) as app, serving(app) as base:
        async with httpx.AsyncClient(base_url=base, headers=bearer(key)) as http:
            # The page's files are public, under their own policy; the data needs the key.
            async with httpx.AsyncClient(base_url=base) as anonymous:
                r = await anonymous.get(UI_PAGE)
                assert r.status_code == 200 and r.headers["content-security-policy"] == UI_CSP
                assert r.headers["content-type"].startswith("text/html")
                r = await anonymous.get("/ui/report.js")
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
                for path in ("/ui", "/ui/index.html", "/ui/__init__.py", "/ui/../dashboard"):
                    assert (await anonymous.get(path)).status_code == 401, path  # only the page's files are public
                assert (await anonymous.get("/dashboard")).status_code == 401
                assert (await anonymous.get(f"/campaigns/{WF}/report")).status_code == 401
            # Materialised (as the workflow does after each day), then the answers the page must show.
            r = await http.post(f"/campaigns/{WF}/report/refresh")
            assert r.status_code == 200, r.text
            report = (await http.get(f"/campaigns/{WF}/report")).json()
            r = await http.post(f"/campaigns/{EDM}/report/refresh")
            assert r.status_code == 200, r.text
            edm_report = r.json()
            dashboard = (await http.get("/dashboard")).json()
            campaigns = (await http.get("/campaigns")).json()

            async def recipients(**params) -> dict:
                return (await http.get(f"/campaigns/{WF}/recipients", params={"limit": 10, **params})).json()

            api_pages = [await recipients(failures="true")]
            api_pages.append(await recipients(failures="true", after=api_pages[0]["next"]))
            failed = await recipients(state="failed")
            unsubscribed = await recipients(failures="true", reason=SUPPRESS_UNSUBSCRIBED)
        # The seed gives figures worth comparing: money, rates, several days, two pages of failures.
        assert report["totals"]["orders"] >= 2 and Decimal(report["totals"]["revenue"]) > 1000
        assert report["totals"]["roi"] is not None and len(report["trend"]) >= 4
        assert len(api_pages[0]["recipients"]) == 10 and len(api_pages[1]["recipients"]) == 4
        assert api_pages[1]["next"] is None and len(failed["recipients"]) == 6

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                errors: list[str] = []
                requests: list[tuple[str, str | None]] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda q: requests.append((q.url, q.headers.get("authorization"))))

                await page.goto(f"{base}{UI_PAGE}")
                await page.fill("#api-key", key)
                await page.click("#key-form button[type=submit]")
                await page.wait_for_selector("body[data-ready]")
                assert await page.is_hidden("#login")
                assert await page.evaluate("() => sessionStorage.getItem('sluice.apiKey')") == key

                # The dashboard and the campaign list: the shop's own only.
                items = await page.evaluate(NUMBERS_JS)
                seen = check_numbers(items, "dashboard", dashboard)
                for k in ("sent", "reached", "orders", "revenue", "inquiry_rate", "conversion_rate"):
                    assert {f"totals.{k}", f"today_figures.{k}"} <= seen, k
                assert {"campaigns", "change.sent", "change.revenue"} <= seen
                assert {f"months.{i}.revenue" for i in range(len(dashboard["months"]))} <= seen
                listed = [it["text"] for it in items if it["source"] == "campaigns"]
                assert listed == [c["workflow_id"] for c in campaigns["campaigns"]] == [EDM, f"{SHOP}.summer", WF]

                # The campaign: every number equals the API's.
                await page.click(f"a[href='#campaign={WF}']")
                await page.wait_for_selector(f"body[data-campaign='{WF}']")
                items = await page.evaluate(NUMBERS_JS)
                seen = check_numbers(items, "report", report)
                for i, p in enumerate(report["phases"]):
                    assert {f"phases.{i}.{k}" for k in (*FIGURES, *MINOR)} <= seen, p["name"]
                    assert {f"phases.{i}.states.{s}" for s in p["states"]} <= seen
                assert {f"totals.{k}" for k in (*FIGURES, *MINOR)} <= seen
                assert {f"trend.{i}.{k}" for i in range(len(report["trend"])) for k in ("sent", "reached", "revenue")} <= seen
                assert [h.strip() for h in await page.locator("#phase-cards h4").all_inner_texts()] == ["warm-up", "offer"]
                assert report["funnel"] is None and await page.is_hidden("#funnel-box")  # a kind without a funnel

                # The chart plots the trend: a point per phase and day, higher values drawn higher.
                for metric in ("sent", "revenue"):
                    await page.select_option("#trend-metric", metric)
                    points = await page.evaluate(POINTS_JS)
                    expected = sorted(f"trend.{i}.{metric}" for i in range(len(report["trend"])))
                    assert sorted(p["point"] for p in points) == expected
                    for p in points:
                        assert p["value"] == resolve(report, p["point"])
                    for a in points:
                        for b in points:
                            if Decimal(str(a["value"])) > Decimal(str(b["value"])):
                                assert a["cy"] < b["cy"], (a, b)
                await page.select_option("#trend-metric", "sent")

                # Failures: the API's pages, then filtered by state and by reason.
                assert await page.evaluate(ROWS_JS) == table_rows(api_pages[0], report)
                await redrawn(page, lambda: page.click("#failures-next"))
                assert await page.evaluate(ROWS_JS) == table_rows(api_pages[1], report)
                assert await page.is_disabled("#failures-next")
                await redrawn(page, lambda: page.click("#failures-prev"))
                assert await page.evaluate(ROWS_JS) == table_rows(api_pages[0], report)
                await redrawn(page, lambda: page.select_option("#failure-state", "failed"))
                assert await page.evaluate(ROWS_JS) == table_rows(failed, report)
                await redrawn(page, lambda: page.select_option("#failure-state", ""))
                await redrawn(page, lambda: page.select_option("#failure-reason", SUPPRESS_UNSUBSCRIBED))
                assert await page.evaluate(ROWS_JS) == table_rows(unsubscribed, report)
                await redrawn(page, lambda: page.select_option("#failure-reason", ""))

                shot = tmp_path / "report-page.png"
                await page.screenshot(path=str(shot), full_page=True)
                OUTPUT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, OUTPUT)
                assert shot.stat().st_size > 10_000

                # Reloaded, the tab keeps its key and its campaign; "Forget key" drops it.
                await page.reload()
                await page.wait_for_selector(f"body[data-campaign='{WF}']")

                # The K-EDM campaign: its funnel, for the campaign and per channel, is the API's, stage by stage.
                await page.click("#report-close")
                await page.click(f"a[href='#campaign={EDM}']")
                await page.wait_for_selector(f"body[data-campaign='{EDM}']")
                assert await page.is_visible("#funnel-box")
                funnel = edm_report["funnel"]
                seen = check_numbers(await page.evaluate(NUMBERS_JS), "report", edm_report)
                stages = range(len(funnel["stages"]))
                assert {f"funnel.stages.{i}.{k}" for i in stages for k in ("count", "conversion")} <= seen
                assert {f"funnel.channels.{j}.stages.{i}.{k}" for j in range(len(funnel["channels"])) for i in stages
                        for k in ("count", "conversion")} <= seen  # fmt: skip
                # Worth comparing: two channels, a buyer reached on both counted once, a conversion past 100%.
                assert [c["channel"] for c in funnel["channels"]] == ["inbox", "email"]
                assert funnel["stages"][1]["count"] < sum(c["stages"][1]["count"] for c in funnel["channels"])
                assert any(s["conversion"] is not None and s["conversion"] > 1 for s in funnel["stages"])
                shot = tmp_path / "report-page-funnel.png"
                await page.screenshot(path=str(shot), full_page=True)
                shutil.copyfile(shot, OUTPUT.with_name(shot.name))
                await page.click("#forget")
                assert await page.is_visible("#key-form")
                assert await page.evaluate("() => sessionStorage.getItem('sluice.apiKey')") is None

                assert errors == []  # no script error, no request the page's policy refused
                assert not [u for u, _ in requests if key in u]  # the key never goes into a URL
                data = [(u, a) for u, a in requests if "/ui/" not in u and "/docs/" not in u]
                assert data and all(a == f"Bearer {key}" for _, a in data)

                # A wrong key: the form again, with the reason.
                other = await context.new_page()
                await other.goto(f"{base}{UI_PAGE}")
                await other.fill("#api-key", "sk_wrong")
                await other.click("#key-form button[type=submit]")
                await other.wait_for_selector("#login-error:not([hidden])")
                assert "refused" in await other.inner_text("#login-error")
                assert await other.evaluate("() => sessionStorage.getItem('sluice.apiKey')") is None
            finally:
                await browser.close()
