"""Browser tests of the web viewer (headless Chromium driven by Playwright).

The browser is the system Chromium (Debian's ``chromium``; ``make setup`` tries to install it) or
the one named by ``AUTOPAINT_CHROMIUM``, else Playwright's own download when present. Without a
browser, without Playwright, or without the built viewer bundle the tests are skipped with the
reason (they never fail for a missing system browser).

Screenshots go to a temporary folder; set ``AUTOPAINT_SCREENSHOTS=docs/screenshots`` to refresh
the committed ones (written as small palette PNGs).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "services" / "api" / "static" / "viewer" / "index.html"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# WebGL2 in headless Chromium without a GPU: ANGLE on SwiftShader (software).
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu-compositing",
                 "--disable-dev-shm-usage"]


def chromium_executable() -> str | None:
    given = os.environ.get("AUTOPAINT_CHROMIUM")
    candidates = [given] if given else [shutil.which(n) for n in CHROMIUM_NAMES]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (`make setup` installs the dev extras)")
    if not BUNDLE.is_file():
        pytest.skip(f"the viewer bundle is not built ({BUNDLE} missing): run `make setup` (Node.js 20 + npm)")
    exe = chromium_executable()
    with sync_playwright() as p:
        if exe is None and Path(p.chromium.executable_path).is_file():
            exe = p.chromium.executable_path
        if exe is None:
            pytest.skip("no Chromium found: `apt-get install chromium` (make setup tries it) or set "
                        "AUTOPAINT_CHROMIUM=/path/to/chromium")
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[bytes, str], Path]:
    """``screenshot(png_bytes, "viewer-result.png")``: saved under ``AUTOPAINT_SCREENSHOTS`` (as a
    256-colour PNG) when set, else in a temporary folder; returns the path."""
    target = os.environ.get("AUTOPAINT_SCREENSHOTS")
    folder = (ROOT / target) if target and not Path(target).is_absolute() else Path(target or "")
    if not target:
        folder = tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def save(png: bytes, name: str) -> Path:
        path = folder / name
        if target:
            from PIL import Image

            img = Image.open(io.BytesIO(png)).convert("RGB")
            img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
                path, optimize=True)
        else:
            path.write_bytes(png)
        return path

    return save
