"""The web viewer: ``GET /viewer`` (the page) and ``GET /viewer/static/{name}`` (its bundle), public.

The bundle (``index.html``, ``viewer.js``, ``viewer.css``) is built from ``viewer/`` (NiiVue +
plain JS modules, esbuild) into ``services/api/static/viewer/`` by ``make setup``; it is served
by the API itself (no second server, no CDN). The page is public; every data call it makes sends
the user's API key as ``Authorization: Bearer`` (never in a URL), so ownership is enforced by the
same routes as for any client. A strict Content-Security-Policy allows this origin only.

``GET /v1/jobs/{id}/inputs/{role}`` serves the job's stored (sanitized) CT or PET to its owner:
the viewer fuses them under the results (the scan vs the inpainted "healthy" image).
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from services.api.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static" / "viewer"
"""Where ``make setup`` writes the bundle (git-ignored; rebuilt when ``viewer/`` changes)."""

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self' data: blob:; font-src 'self'; worker-src 'self' blob:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
ASSET_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
               ".map": "application/json", ".html": "text/html; charset=utf-8",
               ".png": "image/png", ".svg": "image/svg+xml"}
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

router = APIRouter(include_in_schema=False)


def _not_built() -> ApiError:
    return ApiError(503, "viewer_not_built",
                    f"the web viewer is not built ({STATIC_DIR} is missing): run `make setup` "
                    "(needs Node.js 20 and npm)")


def _file(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if not (STATIC_DIR / "index.html").is_file():
        raise _not_built()
    if not path.is_file():
        raise ApiError(404, "not_found", "no such viewer file")
    return FileResponse(path, media_type=ASSET_TYPES.get(path.suffix, "application/octet-stream"),
                        headers=SECURITY_HEADERS)


@router.get("/viewer")
def viewer_page() -> FileResponse:
    return _file("index.html")


@router.get("/viewer/")
def viewer_slash() -> RedirectResponse:
    return RedirectResponse("/viewer", status_code=308)


@router.get("/viewer/static/{name}")
def viewer_asset(name: str) -> FileResponse:
    if not _ASSET_NAME.match(name) or Path(name).suffix not in ASSET_TYPES or name == "index.html":
        raise ApiError(404, "not_found", "no such viewer file")
    return _file(name)
