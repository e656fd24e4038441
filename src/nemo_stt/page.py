"""A page to try the service, served by the HTTP mode: GET / and its files under /page/.

Plain HTML, CSS and JavaScript from `assets/page/` (no build step, nothing fetched from elsewhere). The page
uploads files to /v1/audio/transcriptions and streams the microphone to the websocket mode. It loads without
the API key (it holds no data; its calls to the API carry the key typed into it) and stays out of the
OpenAPI schema, which describes the API.
"""

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response

PREFIX = "/page"

_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
# The page's scripts are its own files; its calls go to this origin and to the websocket mode, on any host
# (another port, or a proxy), so connect-src names the schemes.
_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'self'; connect-src 'self' ws: wss:; frame-ancestors 'none'",
}


def serves(path: str) -> bool:
    """Whether `path` is the page or one of its files, which load without the API key."""
    return path == "/" or path.startswith(PREFIX + "/")


def _assets() -> dict[str, tuple[bytes, str]]:
    """The page's files by name, read once: they are a few kB and never change while the server runs."""
    folder = files("nemo_stt") / "assets" / "page"
    assets = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _MEDIA_TYPES:
            assets[entry.name] = (entry.read_bytes(), _MEDIA_TYPES[suffix])
    return assets


def router(websocket_port: int, websocket_url: str | None = None, api_key_required: bool = False) -> APIRouter:
    """The page's routes. `websocket_url` is the stream URL the page starts with; None lets the page build it
    from its own host and `websocket_port`."""
    assets = _assets()
    index, _ = assets.pop("index.html")
    config = {"websocket_url": websocket_url, "websocket_port": websocket_port, "api_key_required": api_key_required}
    page = APIRouter(include_in_schema=False)

    @page.get("/")
    async def index_page() -> Response:
        return HTMLResponse(index, headers=_HEADERS)

    @page.get(PREFIX + "/config.json")
    async def page_config() -> Response:
        return JSONResponse(config, headers=_HEADERS)

    @page.get(PREFIX + "/{name}")
    async def page_file(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, f"no file {name!r} in the page")
        body, media_type = assets[name]
        return Response(body, media_type=media_type, headers=_HEADERS)

    return page
