"""Live routing objects built from the routes file: deployments (backend + breaker + load) and routes."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.backends.chat import ChatBackend
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.config import OpenAIDeployment, Policy, Price, Route, RoutesConfig, TritonDeployment

DeploymentConfig = TritonDeployment | OpenAIDeployment


@dataclass
class Deployment:
    """One upstream as the router sees it: its backend, circuit breaker and in-flight count."""

    name: str
    config: DeploymentConfig
    backend: ChatBackend
    breaker: CircuitBreaker
    in_flight: int = 0

    @property
    def upstream_model(self) -> str:
        """The model name the upstream knows."""
        return self.config.model

    @property
    def price(self) -> Price:
        """USD per million tokens."""
        return self.config.price

    @property
    def local(self) -> bool:
        """Served on the local host (Triton)."""
        return self.config.local

    @property
    def saturated(self) -> bool:
        """In-flight calls at the configured bound: overflow to the next deployment."""
        bound = self.config.max_in_flight
        return bound is not None and self.in_flight >= bound

    def acquire(self) -> None:
        """Count one more in-flight call (pair with `release`)."""
        self.in_flight += 1

    def release(self) -> None:
        """Count one in-flight call less."""
        self.in_flight -= 1

    @contextmanager
    def lease(self) -> Iterator[None]:
        """Count one in-flight call for the duration of the block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def describe(self) -> dict[str, object]:
        """Public facts for `GET /admin/deployments` (never the API key)."""
        base_url = getattr(self.config, "base_url", None)
        return {"name": self.name, "kind": self.config.kind, "model": self.upstream_model, "base_url": base_url,
                "in_flight": self.in_flight, "max_in_flight": self.config.max_in_flight,
                "price": self.price.model_dump(), "breaker": self.breaker.snapshot()}


@dataclass
class ChatRoute:
    """A public model name: its tiers of deployments and its policy."""

    name: str
    config: Route
    tiers: list[list[Deployment]]
    deployments: list[Deployment] = field(init=False)

    def __post_init__(self) -> None:
        self.deployments = [d for tier in self.tiers for d in tier]

    @property
    def policy(self) -> Policy:
        """Retry, timeout, cache and budget policy."""
        return self.config.policy

    @property
    def single(self) -> bool:
        """Only one deployment: its breaker never ejects it (clients get the upstream's honest error)."""
        return len(self.deployments) == 1

    def redacts(self, deployment: Deployment) -> bool:
        """Whether prompts are PII-redacted before going to `deployment` (auto: cloud only)."""
        mode = self.config.redact_pii
        return mode == "on" or (mode == "auto" and not deployment.local)

    def max_price(self) -> Price:
        """The dearest input and output prices among the deployments (what a reservation assumes)."""
        return Price(input_per_1m=max(d.price.input_per_1m for d in self.deployments),
                     output_per_1m=max(d.price.output_per_1m for d in self.deployments))

    def order(self, rng: random.Random) -> list[Deployment]:
        """Deployments in trial order: tiers in order, each tier shuffled by weight."""
        out: list[Deployment] = []
        for tier in self.tiers:
            out.extend(tier if len(tier) == 1 else weighted_order(tier, rng))
        return out


def weighted_order(items: list[Deployment], rng: random.Random) -> list[Deployment]:
    """A weighted random permutation (Efraimidis–Spirakis: sort by u^(1/w))."""
    return sorted(items, key=lambda d: rng.random() ** (1.0 / d.config.weight), reverse=True)


class RouteTable:
    """Every route and deployment, by name."""

    def __init__(self, routes: dict[str, ChatRoute], deployments: dict[str, Deployment]) -> None:
        self.routes = routes
        self.deployments = deployments

    def get(self, model: str) -> ChatRoute | None:
        """The route serving public model `model`."""
        return self.routes.get(model)

    async def aclose(self) -> None:
        """Close every backend."""
        for deployment in self.deployments.values():
            await deployment.backend.aclose()


def build_table(
    config: RoutesConfig,
    backend_for: Callable[[str, DeploymentConfig], ChatBackend],
    breaker_for: Callable[[str, DeploymentConfig], CircuitBreaker],
) -> RouteTable:
    """Instantiate one backend and breaker per deployment and wire the routes to them."""
    deployments = {
        name: Deployment(name, dep, backend_for(name, dep), breaker_for(name, dep))
        for name, dep in config.deployments.items()
    }
    routes = {
        name: ChatRoute(name, route, [[deployments[d] for d in tier] for tier in route.tiers])
        for name, route in config.routes.items()
    }
    return RouteTable(routes, deployments)
