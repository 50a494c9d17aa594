"""`--config FILE.yaml`: parameter values, plus optional `limits:` and `require:` for CI gates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmcache.errors import KvmcacheError
from kvmcache.limits import excerpt
from kvmcache.params import parse_mapping

RESERVED = ("limits", "require")


@dataclass
class Config:
    """What a config file holds: parameters (MODEL.md names), limits and requirements."""

    params: dict[str, int | bool] = field(default_factory=dict)
    limits: list[str] = field(default_factory=list)  # "COUNTER=VALUE" or "COUNTER=+N%"
    require: list[str] = field(default_factory=list)  # "spinlock-safe", "balanced"
    path: str = ""


def load_config(path: str | None) -> Config:
    """Read a YAML config file (top-level keys are parameter names, plus limits/require)."""
    if not path:
        return Config()
    from kvmcache.yamlio import load_yaml_file

    # One line naming the file for non-UTF-8 bytes, invalid YAML or a duplicate key.
    data: Any = load_yaml_file(path, "a YAML config file", kind="config file")
    if data is None:
        return Config(path=path)
    if not isinstance(data, dict):
        raise KvmcacheError(f"{path}: a config file is a mapping of parameter names to values")
    cfg = Config(path=path)
    limits = data.get("limits")
    if limits is not None:
        if isinstance(limits, dict):
            _check_limit_items(path, limits)
            cfg.limits = [f"{k}={v}" for k, v in limits.items()]
        elif isinstance(limits, list) and all(isinstance(x, str) for x in limits):
            cfg.limits = list(limits)
        else:
            raise KvmcacheError(
                f"{path}: limits must be a mapping COUNTER: VALUE (or '+N%') or a list of strings"
            )
    req = data.get("require")
    if req is not None:
        if isinstance(req, str):
            req = [req]
        if not isinstance(req, list) or not all(isinstance(x, str) for x in req):
            raise KvmcacheError(f"{path}: require must be a name or a list of names")
        cfg.require = list(req)
    cfg.params = parse_mapping({k: v for k, v in data.items() if k not in RESERVED}, path)
    return cfg


def _check_limit_items(path: str, limits: dict) -> None:
    """Each ``limits`` entry is a counter name and a scalar (never a list or mapping, whose
    text could be huge)."""
    for k, v in limits.items():
        if not isinstance(k, str) or isinstance(v, (list, dict, bytes)) or v is None:
            raise KvmcacheError(
                f"{path}: limits: {excerpt(k)}: {excerpt(v)} is not COUNTER: VALUE (or '+N%')"
            )
