"""`tritonstack model load|unload`: serve an exported version on a running stack, or stop serving one, without
moving traffic.

Triton runs in explicit model-control mode, so a version written by `tritonstack export` is served only once it is
loaded. `load` does that without moving traffic (the rule in `gateway.rollout.service`: loading a version never
moves traffic by itself):

1. when another version of the model is serving and the rollouts file does not list the model, record that version
   as the stable one (`{stable: S, versions: {S: 100}}`), so the choice survives any gateway restart and shows in
   `tritonstack model status` and `GET /admin/rollouts`; gateways without a rollout for the model serve the oldest
   ready version anyway, so for a newer version the record is belt and braces, while for an *older* version it is
   what keeps traffic in place — then the gateways must read the file (checked, as `promote` does) and reload it
   before Triton loads anything;
2. on every Triton: load the version next to what it serves (`version_policy: specific`), or, for a model that is
   not loaded yet, as its `config.pbtxt` says; then check the version is ready.

Chat completions on a local generation model (a decoupled Triton model) go to Triton's newest ready version and do
not follow rollouts, so loading a newer version next to the serving one would move all chat traffic: `load` refuses
and names `promote --weight 100`, the deliberate switch. `unload` refuses a version that takes traffic (a weight
above 0 in the rollouts file, the oldest ready version of a model that no rollout lists, the newest of a generation
model); without a version it unloads the whole model. No typer here (`tritonstack.model_cli`).
"""

from __future__ import annotations

from pathlib import Path

from gateway.rollout.config import ModelRollout, RolloutsConfig, version_key
from tritonstack.rollout import RolloutError, RolloutPlan, TritonControl, oldest, stable_version


def newest_in_repository(repository: Path, model: str) -> str:
    """The highest version directory of `model` in a local repository (what `export` wrote last)."""
    directory = repository / model
    names = [p.name for p in directory.iterdir() if p.is_dir()] if directory.is_dir() else []
    versions = sorted((n for n in names if n.isdigit() and not n.startswith("0")), key=version_key)
    if not versions:
        raise RolloutError(f"no version of '{model}' in {repository} ({directory}/<N>/ missing): export it first "
                           f"(`tritonstack export …`), or name the version with --version")
    return versions[-1]


def load(plan: RolloutPlan, model: str, version: str) -> None:
    """Serve `version` of `model` on every Triton next to what each serves, recording the serving version first."""
    ready = plan.ready(model)
    if all(version in current for current in ready):
        plan.say(f"'{model}' version {version} is already loaded on every Triton")
        return
    serving = set().union(*ready) - {version}
    config = plan.config()
    stable = stable_version(config.models.get(model), serving)
    if stable is not None:
        _refuse_generation_switch(plan, model, version, serving, ready)
        if model not in config.models:
            _record_stable(plan, config, model, stable, older=version_key(version) < version_key(stable))
    for triton, current in zip(plan.tritons, ready, strict=True):
        if version not in current:
            _load_on(plan, triton, model, version, current)
    rollout = config.models.get(model)
    if stable is None:
        plan.say(f"'{model}': version {version} loaded and serving (no other version was serving)")
    elif rollout is not None and rollout.canaries:
        shares = ", ".join(f"version {v} {p:g}%" for v, p in rollout.shares().items())
        plan.say(f"'{model}': version {version} loaded; traffic keeps the rollout's weights ({shares})")
    else:
        plan.say(f"'{model}': version {version} loaded; traffic stays on version {stable} until "
                 f"`tritonstack model promote {model} {version} --weight 5`")


def _record_stable(plan: RolloutPlan, config: RolloutsConfig, model: str, stable: str, *, older: bool) -> None:
    """List `model` in the rollouts file with `stable` at 100%."""
    if older:  # only the file keeps traffic on `stable` once the older version is ready: a gateway must read it
        plan.check_gateways()
    rollout = ModelRollout(versions={stable: 100}, stable=stable)
    plan.publish(config.model_copy(update={"models": {**config.models, model: rollout}}), reload=older)
    plan.say(f"recorded version {stable} as the stable version of '{model}'")


def _refuse_generation_switch(plan: RolloutPlan, model: str, version: str, serving: set[str],
                              ready: list[list[str]]) -> None:
    newest = max(serving, key=version_key)
    if version_key(version) > version_key(newest) and _generation(plan, model, ready):
        raise RolloutError(
            f"'{model}' is a generation model: chat completions go to Triton's newest ready version and do not follow "
            f"rollouts, so loading version {version} next to {newest} would move all chat traffic to it. Switch "
            f"deliberately: `tritonstack model promote {model} {version} --weight 100` (loads {version}, then unloads "
            f"{newest})")


def _load_on(plan: RolloutPlan, triton: TritonControl, model: str, version: str, current: list[str]) -> None:
    if current:
        plan.say(f"Triton {triton.url}: loading '{model}' version {version} next to {', '.join(current)}")
        triton.serve(model, {*current, version})
        return
    plan.say(f"Triton {triton.url}: loading '{model}' (not loaded yet)")
    triton.load(model)
    if triton.ready_versions(model) != [version]:  # its own version policy chose others: serve just this one
        triton.serve(model, {version})


def _generation(plan: RolloutPlan, model: str, ready: list[list[str]]) -> bool:
    """Whether `model` (loaded on some Triton) is a generation model, which chat serves from its newest version."""
    loaded = [t for t, current in zip(plan.tritons, ready, strict=True) if current]
    return bool(loaded) and loaded[0].decoupled(model)


def _taking_traffic(plan: RolloutPlan, model: str, rollout: ModelRollout | None, ready: list[list[str]]) -> set[str]:
    """The loaded versions of `model` that gateways send traffic to (see the module docstring)."""
    serving = set().union(*ready)
    routed = {v for v, weight in rollout.versions.items() if weight > 0 and v in serving} if rollout else set()
    live = routed or {v for v in [oldest(serving)] if v is not None}
    if serving and _generation(plan, model, ready):
        live.add(max(serving, key=version_key))
    return live


def unload(plan: RolloutPlan, model: str, version: str | None) -> None:
    """Stop serving `version` of `model` on every Triton (all of `model` when None); refuses a version that takes
    traffic."""
    ready = plan.ready(model)
    if version is None:
        for triton, current in zip(plan.tritons, ready, strict=True):
            if current:
                plan.say(f"Triton {triton.url}: unloading '{model}'")
                triton.unload(model)
        plan.say(f"'{model}' unloaded")
        return
    serving = set().union(*ready)
    if version not in serving:
        raise RolloutError(f"version {version} of '{model}' is not loaded on any Triton "
                           f"(loaded: {', '.join(sorted(serving, key=version_key)) or 'none'})")
    if version in _taking_traffic(plan, model, plan.config().models.get(model), ready):
        raise RolloutError(
            f"version {version} of '{model}' takes traffic: move it first (`tritonstack model promote {model} "
            f"VERSION --weight 100`, or `tritonstack model rollback {model}`), or unload the whole model "
            f"(`tritonstack model unload {model}`)")
    for triton, current in zip(plan.tritons, ready, strict=True):
        if version in current:
            plan.say(f"Triton {triton.url}: unloading '{model}' version {version}")
            triton.serve(model, set(current) - {version})
    plan.say(f"'{model}': version {version} unloaded")


def restore(plan: RolloutPlan) -> None:
    """After Triton (re)starts, before any gateway: serve what the rollouts file says, and pin what serves now.

    A restarted Triton loads each model as its `config.pbtxt` says (the newest version only), which would move
    traffic to a version exported since. So: a listed model gets its listed versions back (a generation model
    exactly those, as chat follows its newest ready version); a model the file does not list yet is recorded with
    the version serving now as its stable one, so a later export and restart keeps it there.
    """
    config = plan.config()
    models = dict(config.models)
    for triton in plan.tritons:
        for model in triton.loaded_models():
            current = triton.ready_versions(model)
            rollout = models.get(model)
            if rollout is None:
                stable = oldest(current)
                if stable is not None:
                    models[model] = ModelRollout(versions={stable: 100}, stable=stable)
                    plan.say(f"'{model}': version {stable} serves; recorded as its stable version")
                continue
            listed = {v for v, weight in rollout.versions.items() if weight > 0} | {rollout.stable_version}
            wanted = listed if triton.decoupled(model) else listed | set(current)
            if wanted != set(current):
                plan.say(f"Triton {triton.url}: '{model}' serves {', '.join(sorted(wanted, key=version_key))} "
                         f"as the rollouts file says (it had loaded {', '.join(current)})")
                triton.serve(model, wanted)
    if models != config.models:
        plan.publish(config.model_copy(update={"models": models}), reload=False)
