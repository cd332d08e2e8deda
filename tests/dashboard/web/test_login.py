"""Logging in and out (dashboard/auth): scrypt hashes, session cookies, rate limiting, disabled users, API tokens."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from dashboard.audit import CLI_ACTOR
from dashboard.auth import ThrottlePolicy, create_user, hash_password, verify_password
from dashboard.auth.passwords import needs_rehash
from dashboard.errors import AccountError
from dashboard.store import ApiToken, AuditEntry, LoginThrottle, Role, Store, User, WebSession
from tests.dashboard.web.conftest import PASSWORD, Site, password_hash


def _audit(store: Store, action: str) -> list[AuditEntry]:
    with store.session() as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def test_passwords_are_salted_slow_hashes() -> None:
    stored = password_hash()
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**15, 8, 3)
    assert len(salt) >= 22 and len(key) >= 43
    assert PASSWORD not in stored
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + "x", stored)
    assert not verify_password(PASSWORD, "scrypt$1$1$1$AAAA$AAAA"), "a malformed hash never matches"
    assert not verify_password(PASSWORD, "md5$abc")
    assert not needs_rehash(stored)
    assert needs_rehash("scrypt$16384$8$1$AAAA$AAAA")


def test_create_user_refuses_weak_passwords_and_duplicates(sqlite_store: Store) -> None:
    with pytest.raises(AccountError, match="at least 10"):
        create_user(sqlite_store, "ann", Role.CLINICIAN, "short", actor=CLI_ACTOR)
    with pytest.raises(AccountError, match="must not be the username"):
        create_user(sqlite_store, "ann.clinician", Role.CLINICIAN, "Ann.Clinician", actor=CLI_ACTOR)
    with pytest.raises(AccountError, match="unknown role"):
        create_user(sqlite_store, "ann", "superuser", PASSWORD, actor=CLI_ACTOR)
    with pytest.raises(AccountError, match="username"):
        create_user(sqlite_store, "ann smith", Role.CLINICIAN, PASSWORD, actor=CLI_ACTOR)
    user = create_user(sqlite_store, "Ann", Role.CLINICIAN, PASSWORD, actor=CLI_ACTOR)
    assert user.username == "ann", "usernames are case-insensitive"
    with pytest.raises(AccountError, match="already exists"):
        create_user(sqlite_store, "ANN", Role.ADMIN, PASSWORD, actor=CLI_ACTOR)
    with sqlite_store.session() as session:
        row = session.scalars(select(User)).one()
    assert verify_password(PASSWORD, row.password_hash) and row.password_hash != hash_password(PASSWORD)
    assert [entry.target for entry in _audit(sqlite_store, "user.create")] == [f"user:{user.id}"]


def test_login_sets_a_hardened_session_cookie_and_logout_ends_it(sqlite_site: Site) -> None:
    user = sqlite_site.add_user(Role.CLINICIAN, "Alice")
    client = sqlite_site.client()
    response = sqlite_site.login("ALICE", client=client)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "medge_session=" in v)
    attributes = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert "secure" not in attributes, "plain HTTP on loopback (demo): a Secure cookie would never come back"
    token = client.cookies["medge_session"]
    with sqlite_site.store.session() as session:
        row = session.scalars(select(WebSession)).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
    assert row.user_id == user.id and row.client_ip == "127.0.0.1"
    page = client.get("/")
    assert page.status_code == 200 and "alice" in page.text
    assert client.post("/logout", data={"csrf_token": row.csrf_token}).headers["location"] == "/login"
    stale = sqlite_site.client()
    stale.cookies.set("medge_session", token)
    assert stale.get("/").status_code == 303, "the session is gone from the store, not only from the browser"
    assert [e.action for e in _audit(sqlite_site.store, "login.success") + _audit(sqlite_site.store, "logout")] == [
        "login.success",
        "logout",
    ]


def test_cookies_are_secure_behind_an_https_proxy(site_factory: Callable[..., Site], sqlite_store: Store) -> None:
    site = site_factory(sqlite_store, behind_https_proxy=True)
    site.add_user(Role.ADMIN, "root")
    client = site.client()
    login_cookie = client.get("/login").headers["set-cookie"]
    assert "secure" in login_cookie.lower() and "samesite=strict" in login_cookie.lower()
    # httpx keeps Secure cookies away from http://, as a browser would: hand it over as the proxy would pass it.
    token = login_cookie.split(";")[0].split("=", 1)[1]
    response = client.post(
        "/login",
        data={"username": "root", "password": PASSWORD, "csrf_token": token},
        headers={"cookie": f"medge_login_csrf={token}"},
    )
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and "medge_session=" in v)
    assert "secure" in cookie.lower() and "httponly" in cookie.lower()


def test_a_wrong_password_is_refused_and_audited_without_saying_which_part(sqlite_site: Site) -> None:
    sqlite_site.add_user(Role.CLINICIAN, "bob")
    wrong = sqlite_site.login("bob", "not the password")
    unknown = sqlite_site.login("nobody", "not the password")
    assert wrong.status_code == unknown.status_code == 401
    assert "wrong username or password" in wrong.text and "wrong username or password" in unknown.text
    reasons = [json.loads(entry.detail)["reason"] for entry in _audit(sqlite_site.store, "login.failure")]
    assert reasons == ["wrong password", "unknown user"]


def test_logins_are_rate_limited_per_user_and_per_address(site_factory: Callable[..., Site], store: Store) -> None:
    # X-Forwarded-For from the trusted proxy (127.0.0.1) stands for clients at many addresses.
    site = site_factory(store, login_max_failures=3, login_lockout_s=30, trusted_proxies=["127.0.0.1"])
    site.add_user(Role.CLINICIAN, "carol")
    site.add_user(Role.CLINICIAN, "dave")

    def attempt(username: str, password: str, address: str) -> int:
        client = site.client(headers={"x-forwarded-for": address})
        return site.login(username, password, client=client).status_code

    # Per user: three wrong passwords from three addresses lock carol everywhere, even with the right one.
    assert [attempt("carol", "guess-guess", f"10.0.0.{i}") for i in (1, 2, 3)] == [401, 401, 401]
    throttled = site.client(headers={"x-forwarded-for": "10.0.0.4"})
    response = site.login("carol", PASSWORD, client=throttled)
    assert response.status_code == 429 and 25 <= int(response.headers["retry-after"]) <= 31
    assert "too many failed logins" in response.text
    # Per address: three usernames guessed from one address lock that address, for every user.
    assert [attempt(name, "guess-guess", "10.0.9.9") for name in ("x1", "x2", "x3")] == [401, 401, 401]
    assert attempt("dave", PASSWORD, "10.0.9.9") == 429
    assert attempt("dave", PASSWORD, "10.0.9.10") == 303, "other addresses and users are not locked out"
    entries = _audit(site.store, "login.throttled")
    assert [(e.actor, e.client_ip) for e in entries] == [("carol", "10.0.0.4"), ("dave", "10.0.9.9")]
    # When the lockout has passed, the right password works again and clears the user's count.
    with site.store.write() as session:
        for row in session.scalars(select(LoginThrottle)):
            row.locked_until = datetime.now(UTC) - timedelta(seconds=1)
    assert attempt("carol", PASSWORD, "10.0.0.5") == 303
    with site.store.session() as session:
        assert session.get(LoginThrottle, "user:carol") is None


def test_each_failure_beyond_the_limit_doubles_the_lockout(store: Store) -> None:
    policy = ThrottlePolicy(max_failures=2, window_s=900, lockout_s=10)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    keys = ["user:eve"]
    lockouts = []
    moment = start
    for _ in range(5):
        with store.write() as session:
            policy.failed(session, keys, moment)
        with store.session() as session:
            lockouts.append(round(policy.locked_for(session, keys, moment)))
            row = session.get(LoginThrottle, "user:eve")
            assert row is not None
            moment = row.locked_until or moment
    assert lockouts == [0, 10, 20, 40, 80]
    with store.session() as session:
        assert policy.locked_for(session, keys, moment + timedelta(seconds=1)) == 0


def test_a_disabled_user_is_logged_out_at_once_and_cannot_log_in(sqlite_site: Site) -> None:
    admin = sqlite_site.as_role(Role.ADMIN)
    user = sqlite_site.add_user(Role.CLINICIAN, "frank")
    frank = sqlite_site.session_of(user)
    assert frank.get("/").status_code == 200
    assert admin.post_form(f"/admin/users/{user.id}/disable").status_code == 303
    assert frank.get("/").status_code == 303
    assert sqlite_site.login("frank").status_code == 401
    assert admin.post_form(f"/admin/users/{user.id}/enable").status_code == 303
    assert sqlite_site.login("frank").status_code == 303
    assert [e.action for e in _audit(sqlite_site.store, "user.disable") + _audit(sqlite_site.store, "user.enable")] == [
        "user.disable",
        "user.enable",
    ]


def test_an_admin_creates_users_on_the_users_page(sqlite_site: Site) -> None:
    admin = sqlite_site.as_role(Role.ADMIN)
    weak = admin.post_form("/admin/users", {"username": "gina", "role": "clinician", "password": "short"})
    assert weak.status_code == 400 and "at least 10" in weak.text
    created = admin.post_form("/admin/users", {"username": "gina", "role": "clinician", "password": PASSWORD})
    assert created.status_code == 303
    page = admin.get("/admin/users").text
    assert "gina" in page and "scrypt$" not in page
    assert sqlite_site.login("gina").status_code == 303


def test_api_tokens_are_shown_once_stored_hashed_and_revocable(sqlite_site: Site) -> None:
    admin = sqlite_site.as_role(Role.ADMIN)
    finding = sqlite_site.publish_one()
    page = admin.post_form("/admin/tokens", {"name": "validation", "role": "clinician", "valid_days": "30"})
    assert page.status_code == 200
    secret = page.text.split('id="token-secret">')[1].split("<")[0]
    assert secret.startswith("medge_") and len(secret) > 40
    assert secret not in admin.get("/admin/users").text, "shown once only"
    with sqlite_site.store.session() as session:
        row = session.scalars(select(ApiToken)).one()
    assert row.token_hash == hashlib.sha256(secret.encode()).hexdigest() and row.role == Role.CLINICIAN
    script = sqlite_site.client(headers={"authorization": f"Bearer {secret}"})
    assert script.get("/api/v1/me").json()["name"] == "token:validation"
    # A token needs no CSRF token: it is not a cookie a browser would send on its own.
    assert script.post(f"/api/v1/findings/{finding}/acknowledge").json()["state"] == "acknowledged"
    assert script.get("/api/v1/audit").status_code == 403, "it acts with its role only"
    assert admin.post_form(f"/admin/tokens/{row.id}/revoke").status_code == 303
    assert script.get("/api/v1/me").status_code == 401
    actions = [e.action for e in _audit(sqlite_site.store, "token.create") + _audit(sqlite_site.store, "token.revoke")]
    assert actions == ["token.create", "token.revoke"]
    acknowledged = _audit(sqlite_site.store, "finding.acknowledge")
    assert [(e.actor, e.role) for e in acknowledged] == [("token:validation", "clinician")]


@pytest.mark.parametrize(
    "ended",
    [
        {"last_seen_at": datetime.now(UTC) - timedelta(minutes=61)},  # idle longer than web.session_idle_minutes
        {"expires_at": datetime.now(UTC) - timedelta(seconds=1)},  # past web.session_max_hours, however active
    ],
)
def test_an_idle_or_expired_session_ends(sqlite_site: Site, ended: dict[str, datetime]) -> None:
    client = sqlite_site.session_of(sqlite_site.add_user(Role.CLINICIAN))
    assert client.get("/").status_code == 200
    with sqlite_site.store.write() as session:
        session.execute(update(WebSession).values(**ended))
    assert client.get("/").status_code == 303
    assert client.get("/api/v1/findings").status_code == 401


def test_an_active_session_is_kept_alive(sqlite_site: Site) -> None:
    client = sqlite_site.session_of(sqlite_site.add_user(Role.CLINICIAN))
    with sqlite_site.store.write() as session:
        session.execute(update(WebSession).values(last_seen_at=datetime.now(UTC) - timedelta(minutes=50)))
    assert client.get("/").status_code == 200
    with sqlite_site.store.session() as session:
        seen = session.scalars(select(WebSession.last_seen_at)).one()
    assert datetime.now(UTC) - seen < timedelta(minutes=1), "a request renews the idle timeout"


@pytest.mark.parametrize(
    ("asked", "lands"),
    [("/fleet?x=1", "/fleet?x=1"), ("//evil.example/x", "/"), ("https://evil.example", "/"), ("/\\evil", "/")],
)
def test_after_login_only_a_page_of_this_site_is_a_place_to_go(sqlite_site: Site, asked: str, lands: str) -> None:
    sqlite_site.add_user(Role.CLINICIAN, "lena")
    client = sqlite_site.client()
    page = client.get("/login", params={"next": asked})
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    response = client.post(
        "/login", data={"username": "lena", "password": PASSWORD, "csrf_token": token, "next": asked}
    )
    assert response.status_code == 303 and response.headers["location"] == lands
