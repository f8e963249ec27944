"""docker-compose.yml and the Dockerfiles hold the production promises (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_has_all_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "migrate", "api", "worker"} <= set(compose["services"])


def test_redis_aof_and_noeviction(compose: dict[str, Any]) -> None:
    cmd = " ".join(compose["services"]["redis"]["command"])
    assert re.search(r"--appendonly\s+yes", cmd)
    assert re.search(r"--maxmemory-policy\s+noeviction", cmd)


def test_migrate_is_one_shot_and_gates_api_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate.get("restart", "no") == "no"
    assert "migrate" in " ".join(migrate["command"])
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"


def test_healthchecks(compose: dict[str, Any]) -> None:
    for name in ("postgres", "redis", "api", "worker"):
        hc = compose["services"][name].get("healthcheck")
        assert hc and hc.get("test"), f"{name} has no healthcheck"
    assert "/readyz" in " ".join(compose["services"]["api"]["healthcheck"]["test"])


def test_worker_gpu_reservation_and_scalable(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    # --scale worker=N fails with a fixed container name or a published host port
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "gpu" in " ".join(worker["command"])
    dockerfile = (ROOT / worker["build"]["dockerfile"]).read_text()
    assert re.search(r"^FROM\s+nvidia/cuda:", dockerfile, re.M)


def test_no_secret_defaults(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    # every interpolated password/secret/key must be required (${VAR:?...}), never ${VAR:-default}
    for match in re.finditer(r"\$\{([A-Z0-9_]+)([^}]*)\}", text):
        name, rest = match.group(1), match.group(2)
        if re.search(r"PASSWORD|SECRET|KEY|TOKEN", name):
            assert rest.startswith(":?"), f"${{{name}}} must be required, got {match.group(0)}"
    pg_env = _env(compose["services"]["postgres"])
    assert pg_env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    for name in ("api", "worker", "migrate"):
        env = _env(compose["services"][name])
        assert "${POSTGRES_PASSWORD:?" in env["AUTOPAINT_DATABASE_URL"]
        assert env["AUTOPAINT_BROKER_URL"].startswith("redis://redis:")
        for key, value in env.items():
            if re.search(r"PASSWORD|SECRET|API_KEY$", key):
                assert value.startswith("${"), f"{name}.{key} has a literal secret"


def test_shared_storage_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api_vols = set(services["api"]["volumes"])
    worker_vols = set(services["worker"]["volumes"])
    assert any(v.startswith("storage:") for v in api_vols & worker_vols)


def test_dockerfiles_exist_and_install_package(compose: dict[str, Any]) -> None:
    for name in ("api", "worker", "migrate"):
        dockerfile = ROOT / compose["services"][name]["build"]["dockerfile"]
        text = dockerfile.read_text()
        assert re.search(r"pip install (-e )?\.", text)
        assert re.search(r"^USER\s+\S+", text, re.M), f"{dockerfile.name} runs as root"


def test_api_image_serves_the_viewer_bundle() -> None:
    """The API image builds the viewer in a Node stage and copies the bundle where /viewer serves it."""
    text = (ROOT / "docker" / "Dockerfile.api").read_text()
    assert re.search(r"^FROM node:20\S* AS viewer$", text, re.M)
    assert "npm ci" in text and "node build.mjs" in text
    build = (ROOT / "viewer" / "build.mjs").read_text()
    assert "'services', 'api', 'static', 'viewer'" in build  # where the bundle lands
    assert "COPY --from=viewer /src/services/api/static/viewer ./services/api/static/viewer" in text
