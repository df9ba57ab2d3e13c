"""The dashboard page and its scripts, served by the API itself (no CDN: a farm's control
room may have no internet).  Plotly's bundle comes from the plotly package's own copy.

The page and scripts hold no data and are open; the page asks for an API key once, keeps it
in the browser's localStorage, and sends it on every data request.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

STATIC = Path(__file__).with_name("static")


@cache
def plotly_js() -> bytes:
    """plotly.min.js as shipped in the plotly package."""
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    return path.read_bytes()


def router() -> APIRouter:
    r = APIRouter(tags=["dashboard"])

    @r.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(),
                            headers={"Cache-Control": "no-cache"})

    @r.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name == "plotly.min.js":
            return Response(plotly_js(), media_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})
        path = STATIC / name
        if name not in {"dashboard.js", "dashboard.css"} or not path.is_file():
            raise HTTPException(404, "not found")
        media = "application/javascript" if name.endswith(".js") else "text/css"
        return Response(path.read_bytes(), media_type=media,
                        headers={"Cache-Control": "no-cache"})

    return r
