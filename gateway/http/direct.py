"""`DirectRoute`: a FastAPI route, documented as any other, served without FastAPI's per-request machinery.

For the hot route (`POST /v1/embeddings`). FastAPI serves a route through its dependency solver, two exit stacks,
a per-route exception wrapper and its request/response plumbing, a sizeable share of what a cache hit costs. A
`DirectRoute` keeps what FastAPI builds from the endpoint's signature and `openapi_extra` (the OpenAPI operation,
405 for other methods, the `route` the metrics label reads) and serves it by calling the endpoint's one dependency
and then the endpoint: the shape it accepts is exactly that, checked when the route is built:

    async def provider(request: Request) -> Call: ...          # no sub-dependencies, no other parameters
    async def endpoint(call: Call = Depends(provider)) -> Response: ...

`app.dependency_overrides` applies to the provider, as with FastAPI's solver. Errors raised by either propagate
to the app's exception handlers, as from any route. Add the route to the app's routes itself (`app.router.routes`):
through `include_router`, FastAPI would serve it with its own handler again.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

Provider = Callable[[Request], Awaitable[Any]]


def _has_parameters(dependant: Dependant) -> bool:
    return bool(dependant.path_params or dependant.query_params or dependant.header_params
                or dependant.cookie_params or dependant.body_params)


def single_provider(dependant: Dependant) -> Provider:
    """The provider of the endpoint's only dependency; ValueError unless the shape is the one `DirectRoute` serves."""
    name = getattr(dependant.call, "__name__", "endpoint")
    if _has_parameters(dependant) or len(dependant.dependencies) != 1 or dependant.request_param_name:
        raise ValueError(f"{name}: a DirectRoute endpoint takes exactly one parameter, a Depends(provider)")
    (sub,) = dependant.dependencies
    if _has_parameters(sub) or sub.dependencies or not sub.request_param_name:
        raise ValueError(f"{name}: the provider of a DirectRoute takes only the Request")
    if not (inspect.iscoroutinefunction(sub.call) and inspect.iscoroutinefunction(dependant.call)):
        raise ValueError(f"{name}: a DirectRoute's endpoint and provider are `async def` functions")
    return sub.call


class DirectRoute(APIRoute):
    """An `APIRoute` whose endpoint gets its one dependency from a direct call of the provider."""

    def __init__(self, path: str, endpoint: Callable[..., Awaitable[Response]], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.provider = single_provider(self.dependant)
        self.app = self.serve  # what Route.handle calls once the method matched

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app of this route."""
        overrides = getattr(scope.get("app"), "dependency_overrides", None)
        provider = overrides.get(self.provider, self.provider) if overrides else self.provider
        response = await self.endpoint(await provider(Request(scope, receive, send)))
        await response(scope, receive, send)
