"""Every input bounded at the edge: ids, text, dates, amounts; and one unreadable row is skipped, not fatal."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from shared.deals import tick
from shared.models import Deal, User
from tests.environment import ROOT, base_env
from tests.helpers import PASSWORD, deal_body, iso_in, make_deal, new_user_client, unique_email

HUGE_IDS = ("99999999999999999999999", "9223372036854775808")  # past bigint; the second is MAX_ID + 1
JSON_ORIGIN = {"Content-Type": "application/json"}


def _deal_count(db) -> int:
    with db.read() as s:
        return int(s.scalar(select(func.count()).select_from(Deal)) or 0)


@pytest.mark.parametrize("fast_path", [True, False])
def test_every_int_route_answers_404_for_an_id_beyond_bigint(settings, db, fast_path) -> None:
    from web import create_app

    app = create_app(settings.with_(ratelimit_enabled=False, fast_path=fast_path))
    admin = new_user_client(app, db, "admin")
    routes = [r for r in app.url_map.iter_rules() if "<int:" in r.rule]
    assert len(routes) >= 6  # deal detail, orders, admin open/close/stats, the deal and admin pages
    for rule in routes:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            for huge in HUGE_IDS:
                path = rule.rule
                for arg in rule.arguments:
                    path = path.replace(f"<int:{arg}>", huge)
                body = {"quantity": 1} if method == "POST" else None
                r = admin.open(path, method=method, json=body, headers=JSON_ORIGIN)
                assert r.status_code == 404, (method, path, r.status_code, r.data[:200])


def test_a_deal_ending_in_year_10000_utc_is_refused_before_postgresql(app, db, client) -> None:
    admin = new_user_client(app, db, "admin")
    before = _deal_count(db)
    for over in (
        {"ends_at": "9999-12-31T23:00:00-05:00"},  # year 10000 in UTC: stored by PostgreSQL, unreadable by psycopg
        {"ends_at": "2150-01-01T00:00:00Z"},
        {"starts_at": "1970-01-01T00:00:00Z"},
        {"starts_at": "0001-01-01T00:00:00+05:00"},
    ):
        r = admin.post("/api/admin/deals", json=deal_body(**over))
        assert r.status_code == 422, (over, r.status_code, r.data[:200])
        assert r.json["error"]["code"] == "invalid"
    assert _deal_count(db) == before
    assert client.get("/api/deals").status_code == 200


def test_deal_dates_are_stored_in_utc(app, db) -> None:
    admin = new_user_client(app, db, "admin")
    start = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    r = admin.post(
        "/api/admin/deals",
        json=deal_body(starts_at=start.isoformat().replace("+00:00", "-05:00"), ends_at=iso_in(86400)),
    )
    assert r.status_code == 201, r.json
    assert datetime.fromisoformat(r.json["starts_at"]) == start + timedelta(hours=5)
    assert r.json["starts_at"].endswith("+00:00"), r.json["starts_at"]  # any zone in, UTC out


@pytest.mark.parametrize(
    "over",
    [
        {"title": "Lamp\x00"},
        {"title": "La\x1bmp"},
        {"title": "Lamp\nLamp"},
        {"product_name": "P\x00"},
        {"description": "nul \x00 here"},
        {"price": "123456789012"},  # 12 digits: pydantic's max_digits alone let it through to Numeric(12, 2)
        {"price": "1e300"},
        {"price": "NaN"},
        {"product_id": 2**63},
        {"product_id": 10**30},
    ],
)
def test_deal_fields_postgresql_would_refuse_are_422(app, db, over) -> None:
    admin = new_user_client(app, db, "admin")
    before = _deal_count(db)
    r = admin.post("/api/admin/deals", data=json.dumps(deal_body(**over)), content_type="application/json")
    assert r.status_code == 422, (over, r.status_code, r.data[:200])
    assert _deal_count(db) == before


def test_a_description_may_hold_line_breaks(app, db) -> None:
    admin = new_user_client(app, db, "admin")
    r = admin.post("/api/admin/deals", json=deal_body(description="Line one\nLine two\tend"))
    assert r.status_code == 201 and r.json["description"] == "Line one\nLine two\tend"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ('{"email": "%s", "password": "correct-horse-9", "name": "Nul\\u0000Name"}', 422),
        ('{"email": "%s", "password": "correct-horse-9", "name": "Bell\\u0007"}', 422),
        ('{"email": "%s", "password": "correct\\u0000horse9", "name": "Nul Password"}', 422),
        # A lone surrogate has no UTF-8 form: the JSON parser refuses the body (400).
        ('{"email": "%s", "password": "correct-horse-9", "name": "Lone \\ud800 surrogate"}', 400),
        ('{"email": "%s", "password": "correct-\\ud800-9", "name": "Surrogate Password"}', 400),
    ],
)
def test_signup_text_with_control_characters_or_surrogates_is_refused(client, db, raw, status) -> None:
    email = unique_email("ctl")
    r = client.post("/api/auth/signup", data=raw % email, content_type="application/json")
    assert r.status_code == status, (r.status_code, r.data[:200])
    with db.read() as s:
        assert s.scalar(select(User).where(User.email == email)) is None


@pytest.mark.parametrize(
    "creds",
    [
        {"email": "nul\x00@example.com", "password": "x"},
        {"email": "buyer@example.com", "password": "nul\x00"},
    ],
)
def test_login_with_values_the_database_or_hasher_refuse_is_not_a_500(client, creds) -> None:
    raw = json.dumps(creds)
    r = client.post("/api/auth/login", data=raw, content_type="application/json")
    assert r.status_code == 422, (r.status_code, r.data[:200])
    page = client.get("/login")
    token = page.data.decode().split('name="csrf_token" value="')[1].split('"')[0]
    r = client.post("/login", data={**creds, "csrf_token": token})
    assert r.status_code == 401, (r.status_code, r.data[:200])


def test_signup_page_refuses_control_characters(client, db) -> None:
    page = client.get("/signup")
    token = page.data.decode().split('name="csrf_token" value="')[1].split('"')[0]
    email = unique_email("page")
    r = client.post("/signup", data={"email": email, "password": PASSWORD, "name": "N\x00", "csrf_token": token})
    assert r.status_code == 422
    with db.read() as s:
        assert s.scalar(select(User).where(User.email == email)) is None


def _insert_unreadable_deal(db, ends_at: str) -> int:
    """A deal row as a hand edit or an older release could have left it: past what psycopg can read."""
    with db.transaction() as s:
        product = s.execute(text("INSERT INTO products (name) VALUES ('Broken') RETURNING id")).scalar_one()
        return s.execute(
            text(
                "INSERT INTO deals (product_id, title, price, total_stock, per_user_limit, starts_at, ends_at, status)"
                " VALUES (:p, 'Broken', 1, 1, 1, now() - interval '1 minute', CAST(:e AS timestamptz), 'open')"
                " RETURNING id"
            ),
            {"p": product, "e": ends_at},
        ).scalar_one()


def _delete_deal(db, deal_id: int) -> None:
    with db.transaction() as s:
        s.execute(text("DELETE FROM deals WHERE id = :d"), {"d": deal_id})


@pytest.mark.parametrize("ends_at", ["9999-12-31T23:00:00-05:00", "infinity"])
def test_one_unreadable_deal_does_not_take_down_the_list_the_pages_or_the_tick(app, db, client, ends_at) -> None:
    svc = app.extensions["flashdeal"]
    good = make_deal(db, svc.gate, stock=3)
    bad = _insert_unreadable_deal(db, ends_at)
    svc.redis.incr(svc.keys.deal_list_version)  # as any deal change does: the list is rebuilt from PostgreSQL
    try:
        r = client.get("/api/deals?per_page=100")
        assert r.status_code == 200, r.data[:300]
        ids = [d["id"] for d in r.json["items"]]
        assert good.id in ids and bad not in ids
        assert client.get("/").status_code == 200
        assert client.get(f"/api/deals/{bad}").status_code == 404
        assert client.get(f"/deals/{bad}").status_code == 404
        report = tick(svc.db, svc.gate)
        assert bad in report.skipped
        admin = new_user_client(app, db, "admin")
        for method, path in (
            ("GET", f"/api/admin/deals/{bad}/stats"),
            ("POST", f"/api/admin/deals/{bad}/open"),
            ("POST", f"/api/admin/deals/{bad}/close"),
        ):
            r = admin.open(path, method=method, headers={"X-Requested-With": "test"})
            assert r.status_code == 409 and r.json["error"]["code"] == "deal_unreadable", (path, r.status_code)
        later = make_deal(db, None, starts_in=5)  # the tick still loads the other deals into the gate
        report = tick(svc.db, svc.gate)
        assert later.id in report.loaded and bad in report.skipped
    finally:
        _delete_deal(db, bad)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "celery"), "-A", "worker", "flashdeal", *args],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_refuses_dates_out_of_range_and_control_characters(db) -> None:
    before = _deal_count(db)
    common = ["deal", "create", "--price", "9.99", "--stock", "5", "--limit", "1"]
    r = _cli(*common, "--title", "Far", "--starts-at", iso_in(60), "--ends-at", "9999-12-31T23:00:00-05:00")
    assert r.returncode == 2 and "--ends-at" in r.stderr, r.stderr
    r = _cli(*common, "--title", "Bell\x07", "--open-now")
    assert r.returncode == 2 and "--title" in r.stderr, r.stderr
    assert _deal_count(db) == before
