"""HTTP plumbing of the API: `{"error", "detail"}` answers for every refusal, HTTP basic auth, and the
`/docs` + `/openapi.json` pages (self-contained: no script from a CDN)."""
import base64
import binascii
import html
import secrets
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

API_PREFIX = "/sdapi/v1"
REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
           422: "Unprocessable Entity", 500: "Internal Server Error"}


class ApiError(Exception):
    """A refusal with its HTTP status and one sentence naming what is wrong."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def error_response(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": REASONS.get(status, "Error"), "detail": detail}, status_code=status,
                        headers=headers)


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.detail, exc.headers)


async def validation_error_handler(request: Request, exc: RequestValidationError):
    """API requests get one sentence per problem in our error shape; the page's own routes keep FastAPI's."""
    if not request.url.path.startswith(API_PREFIX):
        return await request_validation_exception_handler(request, exc)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        where = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (where.get("ctx") or {}).get("error", "")
        return error_response(400, f"The request body is not valid JSON ({reason}).".replace(" ()", ""))
    return error_response(422, " ".join(_sentence(e) for e in errors))


def _sentence(error: dict) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
    kind = error.get("type", "")
    if kind == "missing":
        return f"Field '{'.'.join(loc)}' is required." if loc else "The request needs a JSON body."
    if kind in ("model_attributes_type", "dict_type") and not loc:
        return "The request body must be a JSON object."
    value = error.get("input")
    got = f" (got {value!r})" if value is not None and not isinstance(value, (dict, list)) else ""
    field = f"Field '{'.'.join(loc)}': " if loc else ""
    return f"{field}{error.get('msg', 'invalid value')}{got}."


class BasicAuth:
    """HTTP basic auth against `user:password` pairs (`--api-auth`); no pairs means no check."""

    def __init__(self, credentials):
        self.credentials = [(user.encode(), password.encode()) for user, password in credentials or []]

    def __call__(self, request: Request):
        if not self.credentials:
            return
        user, password = _basic_credentials(request.headers.get("authorization", ""))
        # Compare against every pair (no early exit), so timing does not tell which user names exist.
        ok = False
        for known_user, known_password in self.credentials:
            ok |= secrets.compare_digest(user, known_user) & secrets.compare_digest(password, known_password)
        if not ok:
            raise ApiError(401, "Incorrect or missing user name and password (HTTP basic auth, --api-auth).",
                           {"WWW-Authenticate": "Basic"})


def same_origin(request: Request):
    """Refuse a state-changing call that a page of another site makes from a visitor's browser (browsers send
    `Origin` with such calls; scripts and clients like webuiapi send none)."""
    origin = request.headers.get("origin")
    if request.method == "GET" or not origin:
        return
    if urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        raise ApiError(403, f"Calls from pages of another site ({origin}) are refused.")


def _basic_credentials(header: str) -> tuple[bytes, bytes]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
    except (binascii.Error, ValueError):
        return b"", b""
    return user, password


def docs_page(schema: dict) -> HTMLResponse:
    """A plain page listing every route with its fields and defaults (read from the OpenAPI schema)."""
    components = schema.get("components", {}).get("schemas", {})
    rows = []
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            fields = _request_fields(operation, components)
            rows.append(f"<h3><code>{method.upper()} {html.escape(path)}</code></h3>"
                        f"<p>{html.escape(operation.get('description') or operation.get('summary') or '')}</p>"
                        + (f"<table><tr><th>field</th><th>type</th><th>default</th><th></th></tr>{fields}</table>"
                           if fields else ""))
    body = "\n".join(rows)
    title = html.escape(schema["info"]["title"])
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}"
                        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
                        f"</style></head><body><h1>{title}</h1>"
                        "<p>The schema as JSON: <a href='/openapi.json'>/openapi.json</a></p>"
                        f"{body}</body></html>")


def _request_fields(operation: dict, components: dict) -> str:
    params = [(p["name"], p.get("schema", {})) for p in operation.get("parameters", [])]
    ref = (operation.get("requestBody", {}).get("content", {}).get("application/json", {})
           .get("schema", {}).get("$ref", ""))
    model = components.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
    params += list(model.get("properties", {}).items())
    required = set(model.get("required", []))
    rows = []
    for name, spec in params:
        kind = spec.get("type") or " | ".join(s.get("type", "?") for s in spec.get("anyOf", []))
        default = "required" if name in required else repr(spec.get("default"))
        rows.append(f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(kind)}</td>"
                    f"<td>{html.escape(default)}</td><td>{html.escape(spec.get('description', ''))}</td></tr>")
    return "".join(rows)
