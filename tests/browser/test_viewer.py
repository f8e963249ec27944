"""The web viewer end to end in headless Chromium: sign in, upload, progress, result (fused CT/PET,
mask outline where the phantom's label is), lesion click, threshold slider, scan <-> inpainted,
and another key seeing none of it.

Runs the embedded service (API + a real Celery worker on SQLite) with the TEST-ONLY pipeline
``tests.browser.fake_results:labelled``: its mask is the phantom's label exactly and its residual
is built so that the threshold 0.6 keeps one lesion of two (see that module).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from scipy import ndimage

from autopaint.client import Client
from services.embedded import EmbeddedService
from tests.services.workerkit import api_key, free_port, make_settings, write_random_model

pytestmark = pytest.mark.browser

OUTLINE_RGB = (0, 230, 64)
VIEWPORT = {"width": 1360, "height": 820}


@dataclass
class Live:
    url: str
    key: str
    other_key: str
    database_url: str = ""

    def queued_job(self, case_name: str) -> str:
        """A QUEUED job of ``key`` on a queue no worker serves: it stays queued until cancelled."""
        from sqlalchemy import select

        from autopaint.contracts import JobState
        from autopaint.db import ApiKey, Job, make_engine, make_session_factory, new_id
        from services.api.auth import hash_key

        engine = make_engine(self.database_url)
        try:
            with make_session_factory(engine)() as s:
                owner = s.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(self.key))).one()
                job = Job(id=new_id(), owner_key_id=owner, state=JobState.QUEUED, params={}, inputs={},
                          queue="nobody-listens", case_name=case_name)
                s.add(job)
                s.commit()
                return job.id
        finally:
            engine.dispose()


@dataclass
class Case:
    dir: Path
    label: Any  # autopaint.imaging.volume.Volume
    lesions: list[dict[str, Any]]  # the label's lesion table (largest first)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.nii.gz"


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    from autopaint.data.phantom import write_cohort
    from autopaint.imaging.io import read_volume
    from autopaint.segment.lesions import lesion_table

    out = tmp_path_factory.mktemp("phantom")
    write_cohort("thorax", 1, 0, out, "small", 0.0)  # two tumours (7 and 39 ml)
    folder = next(p for p in sorted(out.iterdir()) if p.is_dir())
    label = read_volume(folder / "label.nii.gz")
    lesions = lesion_table(label, None)
    assert len(lesions) == 2
    return Case(folder, label, lesions)


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from autopaint.model_cards import DEFAULT_MODEL
    from autopaint.paths import models_dir

    tmp = tmp_path_factory.mktemp("viewer-live")
    # the API checks the model has weights; the TEST-ONLY pipeline never loads it
    if (models_dir() / DEFAULT_MODEL / "model.pt").is_file():
        mdir, model = models_dir(), DEFAULT_MODEL
    else:
        mdir = tmp / "models"
        model = write_random_model(mdir).name
    settings = make_settings("embedded", tmp, request, device="cpu", models_dir=mdir, default_model=model)
    service = EmbeddedService(settings, port=free_port(), workers=1, log_dir=tmp / "logs", worker_env={
        "AUTOPAINT_TEST_PIPELINE": "tests.browser.fake_results:labelled", "AUTOPAINT_TEST_SLOW_S": "3",
        "AUTOPAINT_MODELS_DIR": str(mdir)})
    with service.running():
        live = Live(service.url, api_key(settings), api_key(settings), settings.database_url)
        with Client(live.url, live.key) as c:
            c.wait_ready(timeout=30)
        yield live


@pytest.fixture(scope="module")
def jobs(live: Live, case: Case) -> dict[str, str]:
    """Two finished jobs of the first key (one in a cohort), submitted with the Python client:
    ``view`` (left at its threshold) and ``slider`` (re-thresholded by a test)."""
    with Client(live.url, live.key) as c:
        cohort = c.http.post("/v1/cohorts", json={"name": "browser-cohort"}).json()["id"]
        ids = {name: c.submit(ct=case.path("ct"), pet=case.path("pet"), label=case.path("label"),
                              params={"preset": "thorax", "suv_already": True}, case_name=f"phantom-{name}",
                              **({"cohort_id": cohort} if name == "view" else {}))["id"]
               for name in ("view", "slider")}
        for job_id in ids.values():
            assert c.wait(job_id, poll_s=0.2, timeout=120)["state"] == "succeeded"
    return {**ids, "cohort": cohort}


class Page:
    """A fresh browser context and page that records errors, CSP violations and request URLs."""

    def __init__(self, browser: Any, live: Live) -> None:
        self.live = live
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("request", self._request)
        self.page.add_init_script("document.addEventListener('securitypolicyviolation', e => "
                                  "(window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI))")

    def _request(self, r: Any) -> None:
        self.urls.append(r.url)
        self.requests.append((r.method, urlsplit(r.url).path))

    def count(self, method: str, path: str) -> int:
        """How many requests of ``method`` to exactly ``path`` the page made."""
        return sum(1 for m, p in self.requests if (m, p) == (method, path))

    def sign_in(self, key: str) -> None:
        p = self.page
        p.goto(f"{self.live.url}/viewer")
        p.fill("#api-key", key)
        p.click("#signin button[type=submit]")
        p.wait_for_selector("#nav:not([hidden])")

    def open_job(self, job_id: str) -> None:
        self.page.goto(f"{self.live.url}/viewer#/job/{job_id}")
        self.page.wait_for_selector("#lesions", timeout=30_000)

    def viewer(self, expr: str) -> Any:
        return self.page.evaluate(f"(() => {{ const v = window.autopaintViewer; return {expr} }})()")

    def check_clean(self, allowed: tuple[str, ...] = ()) -> None:
        assert self.page.evaluate("window.__csp || []") == [], "Content-Security-Policy violations"
        assert [e for e in self.errors if not any(a in e for a in allowed)] == []
        assert not [u for u in self.urls if self.live.key in u or self.live.other_key in u], "API key in a URL"
        assert all(u.startswith(self.live.url) or u.startswith(("data:", "blob:")) for u in self.urls), self.urls

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Page]:
    p = Page(browser, live)
    yield p
    p.close()


def outline_pixels(p: Page) -> tuple[np.ndarray, np.ndarray]:
    """Canvas pixels of the mask outline colour -> (pixel (x, y) in canvas px, world mm (x, y, z))."""
    from PIL import Image

    canvas = p.page.locator("#gl")
    img = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    ys, xs = np.nonzero((g > 170) & (r < 90) & (b < 140) & (g - r > 100))
    scale = p.page.evaluate("(() => { const c = document.querySelector('#gl'); return c.width / c.getBoundingClientRect().width })()")
    pts = [[float(x + 0.5) * scale, float(y + 0.5) * scale] for x, y in zip(xs, ys, strict=True)]
    mm = p.viewer(f"{pts}.map((q) => Array.from(v.nv.frac2mm(v.nv.canvasPos2frac(q))).slice(0, 3))")
    return np.stack([xs, ys], axis=1), np.asarray(mm, dtype=float)


def label_voxels(case: Case, mm: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(case.label.affine)
    ijk = (np.c_[mm, np.ones(len(mm))] @ inv.T)[:, :3]
    return np.rint(ijk).astype(int)


# ----------------------------------------------------------------------------------------------


def test_upload_progress_result(page: Page, live: Live, case: Case,
                                screenshot: Callable[[bytes, str], Path]) -> None:
    p = page.page
    page.sign_in(live.key)
    p.click("#nav a[data-nav=new]")
    p.wait_for_selector("#upload")
    p.set_input_files("#ct", str(case.path("ct")))
    p.set_input_files("#pet", str(case.path("pet")))
    p.set_input_files("#label", str(case.path("label")))
    p.select_option("#preset", "thorax")
    p.select_option("#mode", "fast")
    p.fill("#case_name", "phantom-ui")
    assert p.is_checked("#suv_already") and not p.is_visible("#weight_kg")
    p.uncheck("#suv_already")  # Bq/mL: weight, dose and delay become required
    assert p.is_visible("#weight_kg") and p.evaluate("document.querySelector('#dose_mbq').required")
    p.check("#suv_already")
    screenshot(p.screenshot(), "viewer-upload.png")
    p.click("#submit")

    p.wait_for_selector("#progress", timeout=30_000)
    job_id = p.url.split("#/job/")[1]
    seen: list[tuple[str, str, str, str]] = []  # (state, stage, feed, text) of each new panel
    shot, deadline = False, time.monotonic() + 120
    while not p.query_selector("#lesions") and time.monotonic() < deadline:
        el = p.query_selector("#progress")
        if el is not None:
            try:
                snap = (el.get_attribute("data-state") or "", el.get_attribute("data-stage") or "",
                        el.get_attribute("data-feed") or "", el.inner_text())
            except Exception:  # replaced by the next event (or the result) meanwhile
                continue
            if not seen or seen[-1] != snap:
                seen.append(snap)
            if "/ 20" in snap[3] and not shot:  # circles visible while searching
                screenshot(p.screenshot(), "viewer-progress.png")
                shot = True
        time.sleep(0.1)
    states = {s[0] for s in seen}
    assert p.query_selector("#lesions"), f"no result view; states seen {states}"
    assert "running" in states, states
    assert any("Circles" in t and "/ 20" in t for *_, t in seen), seen
    # followed through the event stream, not by polling: one stream, the job read at most a few times
    # (once on opening, once when it started), and the panel advanced through the search step by step
    assert page.count("GET", f"/v1/jobs/{job_id}/events") >= 1, page.requests
    assert page.count("GET", f"/v1/jobs/{job_id}") <= 3, page.requests
    streamed = [t for state, stage, feed, t in seen if feed == "stream" and state == "running" and stage == "searching"]
    assert len({t for t in streamed if "/ 20" in t}) >= 2, seen
    assert all(state != "succeeded" for state, *_ in seen), "the panel showed success before the result"
    assert p.get_attribute("#lesions", "data-count") == "2"
    vols = [float(td.inner_text()) for td in p.query_selector_all("#lesions tbody tr td:nth-child(2)")]
    assert vols == pytest.approx([round(les["volume_ml"], 1) for les in case.lesions], abs=0.051)
    assert page.viewer("v.maskVoxels") == int(np.count_nonzero(case.label.data))
    assert "Research use only" in p.inner_text("body")
    p.wait_for_timeout(300)
    screenshot(p.screenshot(), "viewer-result.png")

    p.click("#nav a[data-nav=jobs]")
    row = p.wait_for_selector("#jobs tr:has-text('phantom-ui')")
    assert "succeeded" in row.inner_text()
    screenshot(p.screenshot(), "viewer-jobs.png")
    page.check_clean()


def test_progress_falls_back_to_polling_and_reopens_the_stream(page: Page, live: Live) -> None:
    """The event stream fails (a network error, then a 503): the page polls the job with backoff,
    tries the stream again after each poll, follows it once it opens, and the stream's final
    ``state`` event (a cancel) ends the view."""
    p = page.page
    answers = ["abort", "503"]  # then the real stream

    def events_route(route: Any) -> None:
        what = answers.pop(0) if answers else "continue"
        if what == "abort":
            route.abort("failed")
        elif what == "503":
            route.fulfill(status=503, content_type="application/json", headers={"Retry-After": "1"},
                          body='{"code":"unavailable","detail":"try later","status":503}')
        else:
            route.continue_()

    page.sign_in(live.key)
    job_id = live.queued_job("phantom-fallback")
    p.route("**/v1/jobs/*/events", events_route)
    started = time.monotonic()
    p.goto(f"{live.url}/viewer#/job/{job_id}")
    p.wait_for_selector("#progress[data-state=queued][data-feed=poll]", timeout=10_000)
    p.wait_for_selector("#progress[data-feed=stream]", timeout=20_000)
    waited = time.monotonic() - started
    events, polls = f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}"
    assert page.count("GET", events) == 3, page.requests  # failed, failed, open
    assert page.count("GET", polls) == 3, page.requests  # the first read, then one poll per failure
    assert waited >= 2.5, f"no backoff between the tries ({waited:.1f} s)"  # 1 s, then 2 s
    p.wait_for_timeout(1500)  # the open stream: no more polls
    assert page.count("GET", polls) == 3 and page.count("GET", events) == 3, page.requests
    with Client(live.url, live.key) as c:
        assert c.http.post(f"/v1/jobs/{job_id}/cancel").status_code in (200, 202)
    p.wait_for_selector("#progress[data-state=cancelled]", timeout=10_000)
    assert "cancelled" in p.inner_text(".alert")
    assert not p.query_selector("#cancel")
    assert page.count("GET", polls) == 3, page.requests  # the state event carried the whole job
    page.check_clean(allowed=("503", "ERR_FAILED"))


def test_sse_parser_in_chromium(browser: Any) -> None:
    """viewer/src/sse.js parses a stream split at every possible place (CR LF across chunks, CR
    alone, comments, retry, ids, multi-line and empty data, an unfinished last event)."""
    from tests.browser.conftest import ROOT

    source = (ROOT / "viewer" / "src" / "sse.js").read_text().replace("export class", "class")
    stream = ("retry: 2000\r\n\r\n: keep-alive\n\nevent: progress\ndata: {\"a\":1}\r\n\r\n"
              "data: x\ndata:y\rid: 7\r\rdata\n\nretry: soon\nfoo: bar\nevent: state\ndata: {\"b\":2}\n\n"
              "event: lost\ndata: partial")
    want = [["retry", 2000], ["comment", "keep-alive"], ["progress", '{"a":1}', ""], ["message", "x\ny", "7"],
            ["message", "", "7"], ["state", '{"b":2}', "7"]]
    context = browser.new_context()
    try:
        pg = context.new_page()
        got = pg.evaluate("""([source, stream]) => {
            const SseParser = new Function(source + '; return SseParser')()
            const out = {}
            for (const size of [1, 2, 3, 5, 7, 11, stream.length]) {
              const got = []
              const p = new SseParser({ onEvent: (t, d, i) => got.push([t, d, i]), onRetry: (ms) => got.push(['retry', ms]),
                                        onComment: (c) => got.push(['comment', c]) })
              for (let i = 0; i < stream.length; i += size) p.push(stream.slice(i, i + size))
              out[size] = got
            }
            return out }""", [source, stream])
    finally:
        context.close()
    assert got and all(events == want for events in got.values()), got


def test_mask_outline_is_drawn_where_the_label_is(page: Page, live: Live, jobs: dict[str, str],
                                                  case: Case) -> None:
    page.sign_in(live.key)
    page.open_job(jobs["view"])
    page.page.click("#view-mode button[data-value=Axial]")
    dilated = ndimage.binary_dilation(case.label.data > 0, iterations=1)
    for i, lesion in enumerate(case.lesions, start=1):
        page.page.click(f"#lesions tr[data-lesion='{i}']")
        page.page.wait_for_timeout(200)
        _, mm = outline_pixels(page)
        assert len(mm) > 30, f"lesion {i}: no outline drawn"
        ijk = label_voxels(case, mm)
        k = int(np.rint((np.linalg.inv(case.label.affine) @ [lesion["centroid_x_mm"], lesion["centroid_y_mm"],
                                                               lesion["centroid_z_mm"], 1])[2]))
        assert (ijk[:, 2] == k).all(), "the outline is not on the lesion's slice"
        inside = dilated[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
        assert inside.mean() > 0.97, f"lesion {i}: {inside.mean():.2f} of the outline lies on the label"
        # and it surrounds this lesion's cross-section: same extent (within 1.5 voxels)
        section = np.argwhere(case.label.data[:, :, k] > 0)
        sx, sy = np.abs(case.label.affine[0, 0]), np.abs(case.label.affine[1, 1])
        near = np.linalg.norm((section[:, :2] - ijk[:, None, :2].mean(axis=0)) * [sx, sy], axis=1) < 60
        lo, hi = section[near].min(axis=0), section[near].max(axis=0)
        assert np.all(np.abs(ijk[:, :2].min(axis=0) - lo) <= 1.5) and np.all(np.abs(ijk[:, :2].max(axis=0) - hi) <= 1.5)
    page.check_clean()


def test_lesion_click_moves_crosshair_and_inpainted_toggle(page: Page, live: Live, jobs: dict[str, str],
                                                           case: Case, screenshot: Callable[[bytes, str], Path]) -> None:
    p = page.page
    page.sign_in(live.key)
    page.open_job(jobs["view"])
    spacing = np.abs(np.diag(case.label.affine)[:3])
    for i in (2, 1):
        les = case.lesions[i - 1]
        p.click(f"#lesions tr[data-lesion='{i}']")
        xyz = np.asarray(page.viewer("v.crosshairMM()"))
        assert np.all(np.abs(xyz - [les["centroid_x_mm"], les["centroid_y_mm"], les["centroid_z_mm"]]) <= spacing)
        assert p.get_attribute(f"#lesions tr[data-lesion='{i}']", "class") == "click selected"
        assert f"{xyz[0]:.1f}, {xyz[1]:.1f}, {xyz[2]:.1f} mm" in p.inner_text("#loc")
    scan_ct = p.inner_text("#loc")
    p.click("#image-mode button[data-value=healthy]")
    assert page.viewer("v.healthy") is True
    assert "Inpainted" in p.inner_text("#mode-tag")
    assert page.viewer("v.nv.volumes.map((x) => x.name)")[:2] == ["inpainted_ct.nii.gz", "inpainted_pet.nii.gz"]
    p.click("#lesions tr[data-lesion='1']")
    assert "CT -850 HU" in p.inner_text("#loc") and "CT -850 HU" not in scan_ct
    p.wait_for_timeout(300)
    screenshot(p.screenshot(), "viewer-inpainted.png")
    p.click("#image-mode button[data-value=scan]")
    assert page.viewer("v.nv.volumes[0].name") == "ct.nii.gz"
    page.check_clean()


def set_threshold(page: Page, value: float) -> None:
    page.page.evaluate("""(t) => { const s = document.querySelector('#threshold'); s.value = String(t);
        s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change')) }""", value)


def test_threshold_slider_changes_mask_and_lesion_count(page: Page, live: Live, jobs: dict[str, str],
                                                        case: Case, screenshot: Callable[[bytes, str], Path]) -> None:
    p = page.page
    page.sign_in(live.key)
    page.open_job(jobs["slider"])
    full = int(np.count_nonzero(case.label.data))
    assert p.get_attribute("#lesions", "data-count") == "2" and page.viewer("v.maskVoxels") == full
    set_threshold(page, 0.6)
    p.wait_for_selector("#lesions[data-count='1']", timeout=30_000)
    fewer = page.viewer("v.maskVoxels")
    assert 0 < fewer < np.count_nonzero(case.label.data) / 4
    assert p.inner_text("#threshold-value") == "0.60" and "mask at 0.60" in p.inner_text("#threshold-status")
    with Client(live.url, live.key) as c:  # the server's state follows the slider
        job = c.job(jobs["slider"])
        assert job["manifest"]["threshold"]["value"] == pytest.approx(0.6)
        assert len(c.http.get(f"/v1/jobs/{jobs['slider']}/results/lesions.json").json()) == 1
    p.click("#lesions tr[data-lesion='1']")
    p.wait_for_timeout(300)
    screenshot(p.screenshot(), "viewer-threshold.png")
    set_threshold(page, 0.2)
    p.wait_for_selector("#lesions[data-count='2']", timeout=30_000)
    assert page.viewer("v.maskVoxels") == full
    page.check_clean()


def test_cohort_listed_for_its_owner(page: Page, live: Live, jobs: dict[str, str]) -> None:
    p = page.page
    page.sign_in(live.key)
    p.click("#nav a[data-nav=cohorts]")
    p.click("#cohorts tr:has-text('browser-cohort')")
    p.wait_for_selector("table.list tr:has-text('phantom-view')")
    assert "1 succeeded" in p.inner_text("main")
    page.check_clean()


def test_another_key_sees_none_of_it(page: Page, live: Live, jobs: dict[str, str]) -> None:
    p = page.page
    page.sign_in(live.other_key)
    p.wait_for_selector("main .empty")
    assert "No jobs yet" in p.inner_text("main")
    p.click("#nav a[data-nav=cohorts]")
    p.wait_for_selector("main .empty")
    assert "browser-cohort" not in p.inner_text("main")
    p.goto(f"{live.url}/viewer#/job/{jobs['view']}")
    alert = p.wait_for_selector(".alert")
    assert "not_found" in alert.inner_text()
    assert not p.query_selector("#gl")
    status = p.evaluate("""(id) => fetch(`v1/jobs/${id}/inputs/ct`, {headers: {Authorization:
        `Bearer ${sessionStorage.getItem('autopaint.apiKey')}`}}).then((r) => r.status)""", jobs["view"])
    assert status == 404
    page.check_clean(allowed=("404",))
