"""The web viewer's routes without a browser: the page and its bundle are public and served with a
strict Content-Security-Policy, a missing bundle is a clear 503, and the job inputs the viewer
fuses are served to their owner only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.api import routes_viewer
from tests.services.apikit import Api, write_pair


@pytest.fixture
def bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "index.html").write_text('<!doctype html><title>autopaint viewer</title>'
                                       '<script type="module" src="viewer/static/viewer.js"></script>')
    (folder / "viewer.js").write_text("console.log('viewer')")
    (folder / "viewer.css").write_text("body { margin: 0 }")
    monkeypatch.setattr(routes_viewer, "STATIC_DIR", folder)
    return folder


def test_page_is_public_with_strict_csp(api: Api, bundle: Path) -> None:
    r = api.client.get("/viewer")  # no API key: the page is public, its data calls are not
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "autopaint viewer" in r.text
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"].startswith("'self'")
    assert directives["frame-ancestors"] == "'none'"
    assert "http" not in csp and "*" not in csp and "unsafe" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    js = api.client.get("/viewer/static/viewer.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == csp and js.headers["x-content-type-options"] == "nosniff"
    assert api.client.get("/viewer/static/viewer.css").headers["content-type"].startswith("text/css")
    assert api.client.get("/viewer/", follow_redirects=False).headers["location"] == "/viewer"


@pytest.mark.parametrize("name", ["missing.js", "..%2Fapp.py", ".hidden.js", "index.html", "app.py", "a%00.js"])
def test_only_bundle_files_are_served(api: Api, bundle: Path, name: str) -> None:
    r = api.client.get(f"/viewer/static/{name}")
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"


def test_missing_bundle_is_a_clear_503(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes_viewer, "STATIC_DIR", tmp_path / "not-built")
    for path in ("/viewer", "/viewer/static/viewer.js"):
        r = api.client.get(path)
        assert r.status_code == 503
        assert r.json()["code"] == "viewer_not_built"
        assert "make setup" in r.json()["detail"]


def test_built_bundle_loads_nothing_remote() -> None:
    index = routes_viewer.STATIC_DIR / "index.html"
    if not index.is_file():
        pytest.skip("the viewer bundle is not built (make setup)")
    html = index.read_text()
    assert "http://" not in html and "https://" not in html and "//" not in html.replace("<!--", "")
    assert {p.name for p in routes_viewer.STATIC_DIR.iterdir()} >= {"index.html", "viewer.js", "viewer.css"}


def test_inputs_are_served_to_their_owner_only(api: Api, tmp_path: Path) -> None:
    ct, pet = write_pair(tmp_path / "in")
    r = api.submit({"ct": ct, "pet": pet}, params={"preset": "thorax"})
    assert r.status_code == 202, r.text
    job = r.json()
    for role in ("ct", "pet"):
        got = api.client.get(f"/v1/jobs/{job['id']}/inputs/{role}", headers=api.h("a"))
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == job["inputs"][role]["sha256"]
        assert got.headers["content-type"] == "application/gzip"
    assert api.client.get(f"/v1/jobs/{job['id']}/inputs/ct", headers=api.h("b")).status_code == 404
    assert api.client.get(f"/v1/jobs/{job['id']}/inputs/ct").status_code == 401
    for role in ("label", "organ_mask", "CT", "results"):
        assert api.client.get(f"/v1/jobs/{job['id']}/inputs/{role}", headers=api.h("a")).status_code == 404
