"""MkDocs hook: the config reference and the CLI reference are generated at build time, the first from the
config's JSON Schema (`launch schema`), the second from the typer app itself, so neither can drift from
the code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _type(prop: dict, defs: dict) -> str:
    if "$ref" in prop:
        return f"[{prop['$ref'].rsplit('/', 1)[1]}](#{_anchor(prop['$ref'].rsplit('/', 1)[1])})"
    if "anyOf" in prop:
        return " or ".join(_type(p, defs) for p in prop["anyOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type(prop.get('items', {}), defs)}"
    if t == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map of name to {_type(prop['additionalProperties'], defs)}"
    return str(t)


def _limits(prop: dict) -> str:
    found = []
    for p in [prop, *prop.get("anyOf", [])]:
        for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
                          ("maxLength", "at most chars"), ("pattern", "matches")):
            if key in p:
                found.append(f"{word} `{p[key]}`" if key != "maxLength" else f"at most {p[key]} characters")
    return ", ".join(found)


def _anchor(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "-")


def _table(title: str, schema: dict, defs: dict, intro: str = "") -> list[str]:
    rows = [f"## {title}", "", intro, "", "| key | type | default | limits |", "|---|---|---|---|"]
    required = set(schema.get("required", []))
    for key, prop in schema.get("properties", {}).items():
        default = "required" if key in required else (f"`{json.dumps(prop['default'])}`" if "default" in prop else "-")
        rows.append(f"| `{key}` | {_type(prop, defs)} | {default} | {_limits(prop) or '-'} |")
    return rows + [""]


def config_reference() -> str:
    import providers
    from lifecycle.config import json_schema

    schema = json_schema()
    defs = schema["$defs"]
    out = ["# Config reference", "",
           "Generated from the config's JSON Schema (`launch schema` prints it; point an editor's YAML plugin at it). "
           "What each key does is in [The cluster config](../config.md); rules that span keys (`head_node_type` "
           "naming a type, `min_workers` <= `max_workers`, a file mount's path existing) are checked by "
           "`launch validate`.", ""]
    out += _table("Top level", schema, defs)
    for name, title in (("AuthConfig", "auth"), ("DockerConfig", "docker"), ("AutoscalerSettings", "autoscaler"),
                        ("RuntimeSettings", "runtime"), ("NodeTypeConfig", "available_node_types.NAME")):
        out += [f'<a id="{_anchor(name)}"></a>', ""] + _table(f"{title}", defs[name], defs)
    out += ['<a id="providerconfig"></a>', ""]
    for kind in providers.KINDS:
        section = providers.section_model(kind).model_json_schema()
        out += _table(f"provider (type: {kind})", section, section.get("$defs", {}))
    return "\n".join(out) + "\n"


def cli_reference() -> str:
    import typer

    from launcher.cli import app

    group = typer.main.get_command(app)
    out = ["# CLI reference", "", "Generated from the `launch` command line itself (`launch --help`, "
           "`launch COMMAND --help`).", ""]

    def command(prefix: str, cmd) -> None:
        if hasattr(cmd, "commands"):  # a group: its commands (typer ships its own click: no isinstance)
            for name in sorted(cmd.commands):
                command(f"{prefix} {name}", cmd.commands[name])
            return
        ctx = cmd.context_class(cmd, info_name=prefix)
        out.extend([f"## `{prefix}`", "", (cmd.help or "").strip(), "", "```", cmd.get_usage(ctx), "```", ""])
        rows = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                rows.append(f"| `{p.name.upper()}` | argument | {'required' if p.required else 'optional'} | |")
            elif p.param_type_name == "option":
                names = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
                default = "" if p.default in (None, False, (), []) or callable(p.default) else f"`{p.default}`"
                rows.append(f"| {names} | option | {default} | {(p.help or '').replace('|', '/')} |")
        if rows:
            out.extend(["| name | kind | default | what |", "|---|---|---|---|", *rows, ""])

    for name in sorted(group.commands):
        command(f"launch {name}", group.commands[name])
    return "\n".join(out) + "\n"


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "reference/config.md", content=config_reference()))
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    return files
