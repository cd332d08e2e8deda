"""``/api/v1/me``, ``/api/v1/audit``, ``/api/v1/openapi.json`` and the offline API docs page.

FastAPI's own ``/docs`` loads Swagger UI from a CDN, which a closed hospital
network cannot reach (and our Content-Security-Policy forbids). So the
dashboard serves the OpenAPI document behind the same auth as the API, and
``/api/v1/docs`` renders it as a plain server-side page from the shipped
templates: no Swagger UI, nothing external.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from dashboard.web.deps import AuditViewer, ContextDep, PrincipalDep
from dashboard.web.queries import audit_page
from dashboard.web.schemas import AuditPage, MePublic

router = APIRouter(prefix="/api/v1", tags=["meta"])


@router.get("/me", response_model=MePublic, summary="Who the API sees (your role and permissions)")
def me(principal: PrincipalDep) -> MePublic:
    return MePublic(
        name=principal.name,
        kind=principal.kind,
        role=principal.role.value,
        permissions=sorted(p.value for p in principal.permissions),
    )


@router.get("/audit", response_model=AuditPage, summary="The audit log, newest first (admins)")
def list_audit(
    _principal: AuditViewer,
    context: ContextDep,
    before: Annotated[int | None, Query(description="next_before of the previous page")] = None,
    action: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    items, next_before = audit_page(context.store, before=before, limit=limit, action=action)
    return AuditPage(items=items, next_before=next_before)


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _principal: PrincipalDep) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    operations = []
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            parameters = [
                {
                    "name": parameter["name"],
                    "in": parameter["in"],
                    "required": parameter.get("required", False),
                    "description": parameter.get("description") or "",
                    "type": _type(parameter.get("schema", {})),
                }
                for parameter in operation.get("parameters", [])
            ]
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            ok = operation.get("responses", {}).get("200", {}).get("content", {})
            responses = [
                f"{media}: {_type(content.get('schema', {})) if content.get('schema') else media}"
                for media, content in ok.items()
            ]
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "tags": operation.get("tags", []),
                    "parameters": parameters,
                    "body": _type(body) if body else None,
                    "responses": responses,
                }
            )
    return operations


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(option) for option in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list[{_type(schema.get('items', {}))}]"
    if "enum" in schema:
        return " | ".join(repr(value) for value in schema["enum"])
    return str(schema.get("type", "object"))


@router.get("/docs", include_in_schema=False, response_class=HTMLResponse)
def docs(request: Request, _principal: PrincipalDep, context: ContextDep) -> HTMLResponse:
    schema = request.app.openapi()
    components = schema.get("components", {}).get("schemas", {})
    models = [
        {
            "name": name,
            "description": model.get("description", ""),
            "fields": [
                {"name": field, "type": _type(spec), "required": field in model.get("required", [])}
                for field, spec in model.get("properties", {}).items()
            ],
        }
        for name, model in sorted(components.items())
    ]
    context_ = {"operations": _operations(schema), "models": models, "info": schema.get("info", {})}
    return context.renderer.page(request, "api_docs.html", context_)
