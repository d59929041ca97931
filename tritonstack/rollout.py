"""Promote and roll back model versions without failed requests: Triton explicit load/unload + the rollouts file.

The order of steps is what makes it safe (docs/deploy.md, "Model version rollout"):

- promote V (weight W): load V next to the versions being served (`load_model` with a config override whose
  `version_policy` is `specific`) on every Triton → check every listed version is ready → write the rollouts
  file (stable: W% less, V: W%) → reload the gateways → only then, after a drain pause, unload what the new
  table no longer lists (at W=100: the old stable version).
- rollback: the rollouts file back to 100% stable → reload the gateways (nothing waits on Triton before this) →
  reload the stable version where a Triton lost it → drain pause → unload the canary.

Weights move only to versions that are already ready, and versions are unloaded only once no gateway routes to
them (Triton finishes the requests it holds before a version goes). Before anything changes, promote and rollback
ask each gateway (`GET /admin/rollouts`) which rollouts file it reads and refuse when none reads this one: weights
written where no gateway looks would be reported but never applied. Used by `tritonstack model` (typer in
`tritonstack.model_cli`); no typer here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tritonclient.grpc import InferenceServerClient
from tritonclient.utils import InferenceServerException

from gateway.rollout.config import (
    ModelRollout,
    RolloutConfigError,
    RolloutsConfig,
    load_rollouts,
    version_key,
    write_rollouts,
)


class RolloutError(RuntimeError):
    """A promote or rollback step cannot proceed; the message says what is missing and what to do."""


def _explain(exc: InferenceServerException, url: str, action: str) -> RolloutError:
    message = exc.message() or str(exc)
    if "not allowed" in message.lower():
        return RolloutError(f"Triton at {url} refuses to {action}: it is not in explicit model-control mode "
                            f"({message}). Start it with --model-control-mode=explicit (`tritonstack triton` does).")
    if "unavailable" in (exc.status() or "").lower() and "connect" in message.lower():
        return RolloutError(f"cannot reach Triton's gRPC endpoint at {url}: is it running? ({message})")
    return RolloutError(f"Triton at {url} failed to {action}: {message}")


class TritonControl:
    """One Triton server's model repository API (gRPC)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = InferenceServerClient(url)

    def close(self) -> None:
        """Close the channel."""
        self.client.close()

    def _index(self) -> list[dict]:
        try:
            return list(self.client.get_model_repository_index(as_json=True).get("models", []))
        except InferenceServerException as exc:
            raise _explain(exc, self.url, "list its model repository") from None

    def loaded_models(self) -> list[str]:
        """The models with at least one READY version, by name."""
        return sorted({str(m["name"]) for m in self._index() if m.get("state") == "READY" and m.get("name")})

    def ready_versions(self, model: str) -> list[str]:
        """The versions of `model` that are READY, ascending; RolloutError when the repository lacks `model`."""
        index = self._index()
        if not any(m.get("name") == model for m in index):
            known = sorted({str(m.get("name")) for m in index})
            raise RolloutError(f"model '{model}' is not in the model repository of Triton at {self.url} "
                               f"(it has: {', '.join(known) or 'nothing'})")
        ready = {str(m["version"]) for m in index
                 if m.get("name") == model and m.get("state") == "READY" and m.get("version")}
        return sorted(ready, key=version_key)

    def serve(self, model: str, versions: Iterable[str]) -> None:
        """Load `model` serving exactly `versions` (config override, `version_policy: specific`); returns once
        they are all ready (RolloutError naming those that are not: not in the repository, or failed to load)."""
        wanted = sorted(set(versions), key=version_key)
        try:
            config = self.client.get_model_config(model, as_json=True)["config"]
        except InferenceServerException as exc:
            raise _explain(exc, self.url, f"read the config of '{model}' (is a version of it loaded?)") from None
        config["version_policy"] = {"specific": {"versions": [int(v) for v in wanted]}}
        try:
            self.client.load_model(model, config=json.dumps(config))
        except InferenceServerException as exc:
            raise _explain(exc, self.url, f"load '{model}' versions {', '.join(wanted)}") from None
        self._check_ready(model, wanted)

    def _check_ready(self, model: str, wanted: Iterable[str]) -> None:
        missing = [v for v in wanted if not self.client.is_model_ready(model, v)]
        if missing:
            raise RolloutError(
                f"version(s) {', '.join(missing)} of '{model}' did not become ready on Triton at {self.url}: "
                f"not in its model repository ({model}/{missing[0]}/ missing: run `tritonstack export …`), or it "
                "failed to load (see Triton's log)")

    def load(self, model: str) -> None:
        """Load `model` as its `config.pbtxt` says (its own version policy): for a model not loaded yet."""
        try:
            self.client.load_model(model)
        except InferenceServerException as exc:
            raise _explain(exc, self.url, f"load '{model}'") from None

    def unload(self, model: str) -> None:
        """Unload every version of `model` (Triton finishes the requests it holds first)."""
        try:
            self.client.unload_model(model)
        except InferenceServerException as exc:
            raise _explain(exc, self.url, f"unload '{model}'") from None

    def decoupled(self, model: str) -> bool:
        """Whether the loaded `model` streams responses (a generation model: chat does not follow rollouts)."""
        try:
            config = self.client.get_model_config(model, as_json=True)["config"]
        except InferenceServerException as exc:
            raise _explain(exc, self.url, f"read the config of '{model}'") from None
        return bool(config.get("model_transaction_policy", {}).get("decoupled", False))


@dataclass
class RolloutPlan:
    """Where a rollout acts: Triton servers, the rollouts file, gateways to reload, and the drain pause."""

    tritons: Sequence[TritonControl]
    rollouts_file: Path
    gateways: Sequence[str] = ()
    admin_key: str | None = None
    drain_s: float = 2.0
    repository: Path | None = None
    say: Callable[[str], None] = print
    http: Callable[..., httpx.Response] = field(default=httpx.post)
    check_gateway: bool = True  # promote/rollback: refuse unless every gateway reads `rollouts_file`
    fetch: Callable[..., httpx.Response] = field(default=httpx.get)

    # --- steps ---------------------------------------------------------------------------------------------

    def check_repository(self, model: str, version: str) -> None:
        """With a local repository: refuse early when the version directory is missing."""
        if self.repository is not None and not (self.repository / model / version).is_dir():
            raise RolloutError(f"version {version} of '{model}' is not in {self.repository} "
                               f"({self.repository / model / version}/ missing): export it first, e.g. "
                               f"`tritonstack export minilm --repository {self.repository}`")

    def config(self) -> RolloutsConfig:
        """The rollouts file as it is now (empty when it does not exist yet)."""
        try:
            return load_rollouts(self.rollouts_file)
        except RolloutConfigError as exc:
            raise RolloutError(f"{exc}\nfix or remove the file, then retry") from None

    def ready(self, model: str) -> list[list[str]]:
        """Each Triton's ready versions of `model`."""
        return [t.ready_versions(model) for t in self.tritons]

    def load_alongside(self, model: str, versions: Iterable[str], ready: Sequence[Sequence[str]]) -> None:
        """Serve `versions` in addition to what each Triton serves now."""
        wanted = set(versions)
        for triton, current in zip(self.tritons, ready, strict=True):
            if not wanted <= set(current):
                self.say(f"Triton {triton.url}: loading '{model}' versions {', '.join(sorted(wanted | set(current)))}")
                triton.serve(model, wanted | set(current))

    def unload_except(self, model: str, keep: Iterable[str]) -> None:
        """After the drain pause, make every Triton serve only `keep`."""
        keep = set(keep)
        ready = self.ready(model)
        if all(set(current) <= keep for current in ready):
            return
        if self.drain_s > 0:
            self.say(f"waiting {self.drain_s:g} s for requests routed before the switch to finish")
            time.sleep(self.drain_s)
        for triton, current in zip(self.tritons, ready, strict=True):
            gone = sorted(set(current) - keep, key=version_key)
            if gone:
                self.say(f"Triton {triton.url}: unloading '{model}' version(s) {', '.join(gone)}")
                triton.serve(model, keep)

    def check_gateways(self) -> None:
        """Unless `check_gateway` is off: every gateway answers and reads `rollouts_file` (RolloutError naming the
        setting and both files otherwise), so the weights about to be written take effect."""
        if not self.check_gateway:
            return
        if not self.gateways:
            raise RolloutError("no gateway to check: pass --gateway URL, or --no-gateway-check when a gateway will "
                               f"read {self.rollouts_file} later")
        if not self.admin_key:
            raise RolloutError(f"checking that the gateway reads {self.rollouts_file} needs an admin API key: pass "
                               "--admin-key or set TRITONSTACK_ADMIN_KEY (`tritonstack up` keeps its admin key in "
                               ".tritonstack/dev-api-key), or skip the check with --no-gateway-check")
        for url in self.gateways:
            self._check_gateway(url.rstrip("/"))

    def _check_gateway(self, url: str) -> None:
        ours = self.rollouts_file.resolve()
        setting = f"TRITONSTACK_GATEWAY_ROLLOUTS_FILE={ours}"
        theirs = self._rollouts_file_of(url, ours, setting)
        if theirs is None:
            raise RolloutError(
                f"the gateway at {url} reads no rollouts file (TRITONSTACK_GATEWAY_ROLLOUTS_FILE is not set there), "
                f"so the weights written to {ours} would never apply: restart it with {setting} (`tritonstack up` "
                "sets it to .tritonstack/rollouts.yaml)")
        if Path(theirs).resolve() != ours:
            raise RolloutError(
                f"the gateway at {url} reads {theirs} (its TRITONSTACK_GATEWAY_ROLLOUTS_FILE), not {ours}: the "
                f"weights would never apply; pass --rollouts-file {theirs}, or restart the gateway with {setting}")

    def _rollouts_file_of(self, url: str, ours: Path, setting: str) -> str | None:
        """The rollouts file the gateway at `url` reads (`GET /admin/rollouts`), None when it reads none."""
        try:
            response = self.fetch(f"{url}/admin/rollouts", headers={"authorization": f"Bearer {self.admin_key}"},
                                  timeout=10.0)
        except httpx.HTTPError as exc:
            raise RolloutError(
                f"no gateway answers at {url} ({exc}), so nothing would read {ours}: start the stack (`make up`), "
                f"pass --gateway with the URL of the gateway started with {setting}, or --no-gateway-check if a "
                "gateway will read the file later") from None
        if response.status_code == 404:  # a gateway without the rollouts routes' service
            return None
        try:
            body = response.json() if response.status_code == 200 else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or "file" not in body:
            raise RolloutError(f"cannot ask the gateway at {url} which rollouts file it reads: `GET /admin/rollouts` "
                               f"answered {response.status_code}: {_error_detail(response)} (the admin key?)")
        return body["file"]

    def publish(self, config: RolloutsConfig, *, reload: bool = True) -> None:
        """Write the rollouts file, then (`reload`) make every listed gateway reload it now."""
        write_rollouts(self.rollouts_file, config)
        self.say(f"wrote {self.rollouts_file}")
        if not reload:
            return
        if self.gateways and not self.admin_key:
            raise RolloutError("reloading the gateways needs an admin API key: pass --admin-key or set "
                               "TRITONSTACK_ADMIN_KEY (the file is written; gateways pick it up within a second)")
        for url in self.gateways:
            self._reload_gateway(url.rstrip("/"))

    def _reload_gateway(self, url: str) -> None:
        try:
            response = self.http(f"{url}/admin/rollouts/reload", headers={"authorization": f"Bearer {self.admin_key}"},
                                 timeout=10.0)
        except httpx.HTTPError as exc:
            raise RolloutError(f"cannot reach the gateway at {url} to reload its rollouts: {exc}") from None
        if response.status_code != 200:
            raise RolloutError(f"gateway {url} refused to reload its rollouts ({response.status_code}): "
                               f"{_error_detail(response)}")
        self.say(f"gateway {url} reloaded its rollouts")


def _error_detail(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500]


def oldest(versions: Iterable[str]) -> str | None:
    """The lowest version: the one a gateway serves while no rollout lists the model (`default_choice`)."""
    ordered = sorted(versions, key=version_key)
    return ordered[0] if ordered else None


def stable_version(rollout: ModelRollout | None, ready: Iterable[str]) -> str | None:
    """The version serving a model now: its rollout's stable version, else the oldest of `ready` (what gateways
    serve while no rollout lists the model)."""
    return rollout.stable_version if rollout is not None else oldest(ready)


def promote(plan: RolloutPlan, model: str, version: int, weight: float = 100.0) -> ModelRollout:
    """Send `weight`% of `model`'s traffic to `version` (100: make it the stable version and unload the old)."""
    if not 0 <= weight <= 100:
        raise RolloutError(f"--weight is a percentage in [0, 100] (got {weight:g})")
    target = str(version)
    plan.check_repository(model, target)
    config = plan.config()
    plan.check_gateways()
    current = config.models.get(model)
    ready = plan.ready(model)
    stable = stable_version(current, set().union(*ready) - {target}) or target
    if stable == target and weight < 100:
        raise RolloutError(f"version {target} is the stable version of '{model}': promote another version, "
                           "or use --weight 100")
    plan.load_alongside(model, {stable, target}, ready)
    if weight >= 100:
        rollout = ModelRollout(versions={target: 100}, stable=target)
    else:
        rollout = ModelRollout(versions={stable: 100 - weight, target: weight}, stable=stable)
    plan.publish(config.model_copy(update={"models": {**config.models, model: rollout}}))
    plan.unload_except(model, rollout.versions)
    plan.say(f"'{model}': " + ", ".join(f"version {v} {p:g}%" for v, p in rollout.shares().items()))
    return rollout


def rollback(plan: RolloutPlan, model: str) -> ModelRollout:
    """All of `model`'s traffic back to its stable version at once; then unload the canary."""
    config = plan.config()
    current = config.models.get(model)
    if current is None or set(current.versions) == {current.stable_version}:
        stable = f" (stable version {current.stable_version} only)" if current is not None else ""
        raise RolloutError(f"'{model}' has no canary to roll back in {plan.rollouts_file}{stable}; to go back to an "
                           f"older version, promote it: `tritonstack model promote {model} VERSION --weight 100`")
    plan.check_gateways()
    stable = current.stable_version
    rollout = ModelRollout(versions={stable: 100}, stable=stable)
    # weights first, before touching Triton: the gateways serve a routed version only where Triton has it
    plan.publish(config.model_copy(update={"models": {**config.models, model: rollout}}))
    plan.load_alongside(model, {stable}, plan.ready(model))  # a no-op unless a Triton lost it (restart)
    plan.unload_except(model, rollout.versions)
    plan.say(f"'{model}': rolled back to version {stable} (100%)")
    return rollout
