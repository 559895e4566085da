"""Loading a cluster config: the core model, with the provider section checked by its provider and each
provider's defaults filled in as Ray fills them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import config as _config
from core.config import ClusterConfig, ProviderRules
from providers import KINDS, section_model, section_problems
from providers.defaults import defaults_for

RULES = ProviderRules(kinds=KINDS, section_check=section_problems, defaults=defaults_for)


def load_config(path: str | Path) -> ClusterConfig:
    return _config.load_config(path, RULES)


def parse_config(data: Any, base_dir: Path | None = None) -> ClusterConfig:
    return _config.parse_config(data, base_dir=base_dir, rules=RULES)


def _is_kind(kind: str) -> dict[str, Any]:
    """A JSON Schema that holds for a provider section of this kind (Ray's `local` with a head_ip is the
    on-prem one, `ssh`)."""
    typed = {"properties": {"type": {"const": kind}}, "required": ["type"]}
    local = {"properties": {"type": {"const": "local"}}, "required": ["type"]}
    coordinated = {"required": ["coordinator_address"]}
    if kind == "local":
        return {"allOf": [typed, {"not": {"required": ["head_ip"]}}, {"not": coordinated}]}
    if kind == "ssh":
        return {"anyOf": [typed, {"allOf": [local, {"required": ["head_ip"]}, {"not": coordinated}]}]}
    if kind == "coordinator":
        return {"anyOf": [typed, {"allOf": [local, coordinated]}]}
    return typed


# nodes that are processes of this machine or Slurm allocations hold no container of their own
_NO_IMAGE = {"anyOf": [{"type": "null"}, {"properties": {k: {"maxLength": 0} for k in
                                                          ("image", "head_image", "worker_image")}}]}


def json_schema() -> dict[str, Any]:
    """What `launch validate` accepts, as a JSON Schema for editors: the core model with its limits, and
    the provider section typed by its provider (one schema per `type`, chosen by it), with the rules that
    tie a provider to the rest (an on-prem cluster names its head and SSH user; local and Slurm nodes run
    no container). What it cannot say spans fields of the file or the disk: head_node_type naming a node
    type, min_workers against max_workers, a file mount's local path existing. Validate says those."""
    schema = _config.json_schema()
    branches = []
    for kind in KINDS:
        section = section_model(kind).model_json_schema()
        section.pop("title", None)
        if kind == "ssh":
            section["required"] = ["type", "head_ip"]
        branches.append({"if": _is_kind(kind), "then": section})
    schema["$defs"]["ProviderConfig"] = {
        "allOf": [schema["$defs"]["ProviderConfig"], {"properties": {"type": {"enum": list(KINDS)}}}, *branches],
        "description": "The provider: `type` chooses which keys it takes.",
    }
    schema.setdefault("allOf", []).extend([
        {"if": {"properties": {"provider": {"anyOf": [_is_kind("ssh"), _is_kind("coordinator")]}}, "required": ["provider"]},
         "then": {"required": ["auth"], "properties": {"auth": {"required": ["ssh_user"]}}}},
        # Ray's rule: with a coordinator, the file says how many hosts to take (unless its node types do)
        {"if": {"properties": {"provider": _is_kind("coordinator")}, "required": ["provider"],
                "not": {"properties": {"available_node_types": {"minProperties": 1}},
                        "required": ["available_node_types"]}},
         "then": {"required": ["max_workers"]}},
        {"if": {"properties": {"provider": {"anyOf": [_is_kind("local"), _is_kind("slurm")]}}, "required": ["provider"]},
         "then": {"properties": {"docker": _NO_IMAGE,
                                 "available_node_types": {"additionalProperties": {"properties": {"docker": _NO_IMAGE}}}}}},
        {"if": {"properties": {"provider": {"not": {"anyOf": [_is_kind("ssh"), _is_kind("coordinator")]}}},
                "required": ["provider"]},
         "then": {"properties": {"provider": {"properties": {"worker_ips": {"anyOf": [{"type": "null"}, {"maxItems": 0}]}}}}}},
    ])
    return schema
