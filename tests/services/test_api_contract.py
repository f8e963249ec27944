"""The API keeps its OpenAPI contract (issue #14): Schemathesis against the live embedded service.

The embedded service (API + one real worker process, SQLite, TEST-ONLY fake pipeline so jobs finish
in about a second) serves its own ``/openapi.json``; Schemathesis' engine — what ``st run`` runs —
loads it with ``schemathesis.openapi.from_url`` and runs the examples, coverage, fuzzing and stateful
phases with every check, authenticated with a real bearer key. Real ids (a finished job, a cohort)
are made first and offered to the generator as examples, so the job and cohort routes are exercised
past their 404s too. The test fails on any failure and prints a summary.

No check is disabled. One is narrowed: ``positive_data_acceptance`` on ``POST /v1/jobs`` also
accepts 413/422, because a schema-valid multipart upload is random bytes where the service wants a
NIfTI or a DICOM zip — OpenAPI cannot say "a valid CT", so the content checks must reject it (the
check still fails on a 400 or a 5xx there). Likewise on ``POST /v1/cohorts`` (201/422): a schema-valid
``callback_url`` is any string, and OpenAPI cannot say "an http(s) URL whose host resolves to public
addresses" (the URL guard answers 422 ``callback_url_not_allowed``). Settings are bounded (max examples per operation, a time limit) so the run
stays well under a minute and a half on two cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autopaint.client import Client
from services.embedded import EmbeddedService
from tests.services.workerkit import FAKE_ENV, api_key, free_port, make_settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev extra")

MAX_EXAMPLES = 25  # per operation and phase
STATEFUL_EXAMPLES = 30  # scenarios of linked calls
# No engine ``max-time``: with one, Schemathesis keeps cycling the phases until the time is spent.
# Without it each phase runs once (about 15 s here); the pytest timeout below is the guard.


class Live:
    def __init__(self, url: str, key: str, job_id: str, cohort_id: str) -> None:
        self.url, self.key, self.job_id, self.cohort_id = url, key, job_id, cohort_id


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    from autopaint.data.phantom import write_cohort

    tmp = tmp_path_factory.mktemp("contract")
    phantom = tmp / "phantom"
    write_cohort("thorax", 1, 0, phantom, "small", 0.0)
    case = next(p for p in sorted(phantom.iterdir()) if p.is_dir())
    settings = make_settings("embedded", tmp, None)  # request: only for the redis kind
    service = EmbeddedService(settings, port=free_port(), workers=1, log_dir=tmp / "logs",
                              worker_env={**FAKE_ENV, "AUTOPAINT_TEST_SLOW_S": "0.2"})
    key = api_key(settings)
    with service.running(), Client(service.url, key) as client:
        client.wait_ready(timeout=30)
        cohort = client.http.post("/v1/cohorts", json={"name": "contract"})
        assert cohort.status_code == 201, cohort.text
        cohort_id = cohort.json()["id"]
        job = client.submit(ct=case / "ct.nii.gz", pet=case / "pet.nii.gz",
                            params={"preset": "thorax", "suv_already": True}, case_name="c1",
                            cohort_id=cohort_id)
        job = client.wait(job["id"], poll_s=0.1, timeout=60)
        assert job["state"] == "succeeded", job
        yield Live(service.url, key, job["id"], cohort_id)


def _with_real_ids(doc: dict[str, Any], live: Live) -> None:
    """Offer the real job / cohort ids (and a real result name) as path-parameter examples."""
    real = {"job_id": live.job_id, "cohort_id": live.cohort_id, "name": "mask.nii.gz", "role": "ct"}
    for item in doc["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []) if isinstance(op, dict) else []:
                if param.get("in") == "path" and param["name"] in real:
                    param["examples"] = {"real": {"value": real[param["name"]]}}


@pytest.mark.timeout(240)
def test_openapi_contract(live: Live) -> None:
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import Status, from_schema
    from schemathesis.engine import events as ev

    config = SchemathesisConfig.from_dict({
        "base-url": live.url,
        "seed": 14,
        "workers": 1,  # two cores: the API and the worker process need the other one
        "suppress-health-check": ["too_slow", "filter_too_much"],
        "auth": {"openapi": {"bearer": {"bearer": live.key}}},
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": False},
        "checks": {"enabled": True},
        "operations": [{
            "include-name": "POST /v1/jobs",  # (include-path + include-method would be OR-ed)
            # see the module docstring: random bytes are rightly rejected by content
            "checks": {"positive_data_acceptance": {"expected-statuses": [202, 413, 422]}},
        }, {
            "include-name": "POST /v1/cohorts",
            # see the module docstring: a schema-valid callback_url is any string; the URL guard wants one
            # whose host resolves to public addresses (422 callback_url_not_allowed)
            "checks": {"positive_data_acceptance": {"expected-statuses": [201, 422]}},
        }],
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            # links inferred from the 201/202 responses' Location headers and from the schema
            "stateful": {"enabled": True, "max-steps": 4, "generation": {"max-examples": STATEFUL_EXAMPLES},
                         "inference": {"algorithms": ["location-headers", "dependency-analysis"]}},
        },
    })
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json", config=config, timeout=10)
    doc = schema.raw_schema
    # the document itself says what the service does
    assert {"bearer", "apiKey"} <= set(doc["components"]["securitySchemes"])
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "JobParams" in doc["components"]["schemas"]
    _with_real_ids(doc, live)

    started = time.monotonic()
    operations: set[str] = set()
    cases = 0
    failures: dict[tuple[str, str, str], str] = {}  # (operation, check, title) -> a reproduction
    errors: list[str] = []
    stop = None
    per_phase: dict[str, list[float]] = {}  # phase -> [cases, seconds]
    for event in from_schema(schema).execute():
        if isinstance(event, ev.PhaseStarted):
            per_phase[event.phase.name.value] = [0, -event.timestamp]
        elif isinstance(event, ev.PhaseFinished):
            per_phase[event.phase.name.value][1] += event.timestamp
        if isinstance(event, ev.ScenarioFinished):
            cases += len(event.recorder.cases)
            per_phase.setdefault(event.phase.value, [0, 0.0])[0] += len(event.recorder.cases)
            operations.add(event.label or "")
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        case = event.recorder.cases[case_id].value
                        where = f"{case.operation.method.upper()} {case.operation.path}"
                        failures.setdefault((where, check.name, check.failure_info.failure.title),
                                            f"[{event.phase.name}] {where} {check.name}: "
                                            f"{check.failure_info.failure.title}\n{check.failure_info.code_sample}")
        elif isinstance(event, ev.NonFatalError):
            errors.append(f"{event.label}: {event.info}")
        elif isinstance(event, ev.FatalError):
            errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, ev.EngineFinished):
            stop = event.stop_reason
    elapsed = time.monotonic() - started
    print(f"\nschemathesis: {len(operations - {''})} operations, {cases} cases generated, "
          f"{len(failures)} failures, {len(errors)} errors, {elapsed:.1f} s, stop: {stop}; "
          + ", ".join(f"{name}: {int(n)} cases {t:.0f} s" for name, (n, t) in per_phase.items()))
    assert not failures, "\n\n".join(failures.values())
    assert not errors, "\n".join(errors)
    assert str(stop) == "completed", stop


def test_error_bodies_match_the_documented_schema(live: Live) -> None:
    """Today's bodies (``code`` + ``detail``) validate against ErrorOut; the 401 is documented."""
    from services.api.schemas import ErrorOut

    r = httpx.get(live.url + "/v1/jobs", timeout=10)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    ErrorOut.model_validate(r.json())
    r = httpx.get(live.url + "/v1/jobs", params={"limit": "x"}, headers={"Authorization": f"Bearer {live.key}"},
                  timeout=10)
    assert r.status_code == 422
    assert ErrorOut.model_validate(r.json()).code == "invalid_request"
    models = httpx.get(live.url + "/v1/models", headers={"X-API-Key": live.key}, timeout=10)
    assert models.status_code == 200


def test_models_list_sizes_and_architectures(tmp_path: Path) -> None:
    """``GET /v1/models`` fills size/arch from the cards (``model_cards.SUMMARY_KEYS``)."""
    from fastapi.testclient import TestClient

    from autopaint.db.migrate import upgrade
    from autopaint.model_cards import list_cards
    from autopaint.settings import Settings
    from services.api.app import create_app
    from tests.services.apikit import FakePublisher

    s = Settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'a.db'}", broker_url="memory://",
                 storage_dir=tmp_path / "st", api_key_required=False, _env_file=None)  # type: ignore[call-arg]
    s.ensure_dirs()
    upgrade(s.database_url)
    cards = list_cards(s.resolved_models_dir())
    with TestClient(create_app(s, publisher=FakePublisher())) as client:
        body = client.get("/v1/models").json()
    assert [m["name"] for m in body] == [c["name"] for c in cards]
    for m, c in zip(body, cards, strict=True):
        if c["card"].get("image_size") is not None:
            assert m["size"] == c["card"]["image_size"]
        if c["card"].get("architecture") is not None:
            assert m["arch"] == c["card"]["architecture"]
