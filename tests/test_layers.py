"""The import contract: layers import only what lies below them.

    model < store < authority;  opflex < authority and agent;  agent < lab < cli;
    client (the REST SDK) < lab and cli;  sh (subprocesses) and heap (the collector) are floors.

Following a request through the code should only ever go down. Every import in
``src/policyfabric`` (function-level ones too) is read from the source, so a new
module that climbs a layer fails here with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "policyfabric"

# what each layer may import, besides itself
ALLOWED: dict[str, frozenset[str]] = {
    "sh": frozenset(),
    "heap": frozenset(),
    "model": frozenset(),
    "store": frozenset({"model"}),
    "opflex": frozenset({"model"}),
    "client": frozenset({"model"}),
    "authority": frozenset({"model", "store", "opflex", "heap"}),
    "agent": frozenset({"model", "opflex", "sh", "heap"}),
    "lab": frozenset({"model", "client", "sh"}),
    "cli": frozenset({"model", "store", "opflex", "client", "authority", "agent", "lab", "sh", "heap"}),
    "": frozenset({"cli"}),  # policyfabric/__init__.py and __main__.py
}


def layer_of(module: str) -> str:
    """``policyfabric.agent.view`` → ``agent``; ``policyfabric.sh`` → ``sh``; the package → ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("__init__", "__main__"):
        parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every ``policyfabric`` import in the file of ``module``, relative
    ones (``from ..lab import x``) resolved against where the file sits."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("policyfabric")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, *([node.module] if node.module else [])])
            if base == "policyfabric":  # from policyfabric import x: x is a layer (or __version__)
                out += [(node.lineno, f"policyfabric.{a.name}") for a in node.names]
            elif base.startswith("policyfabric."):
                out.append((node.lineno, base))
    return out


def violations(path: Path, module: str) -> list[str]:
    """Each import of ``path`` (module ``module``) that climbs out of its layer, as ``file:line: ...``."""
    own, found = layer_of(module), []
    for line, target in imports(path, module):
        layer = layer_of(target)
        if layer == "" and target.split(".")[-1] not in ALLOWED:
            continue  # a package attribute such as __version__
        if layer != own and layer not in ALLOWED[own]:
            found.append(f"{path.name}:{line}: {module} ({own or 'top'}) imports {target}")
    return found


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_subpackage_has_a_declared_layer() -> None:
    tops = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith("__")}
    tops.discard("py.typed")
    assert tops <= set(ALLOWED), f"declare the layer of {sorted(tops - set(ALLOWED))} in ALLOWED"


def test_imports_point_down() -> None:
    found = [v for path in source_files() for v in violations(path, module_name(path))]
    assert found == []


RENDERERS = "policyfabric.agent.renderers"
# the agent modules a renderer may use besides the renderers package: what it renders and its values
RENDERERS_MAY_USE = frozenset({"policyfabric.agent.view", "policyfabric.agent.values"})


def renderer_violations(path: Path, module: str) -> list[str]:
    """Imports of a renderer module that reach a sibling renderer package (``renderers/ovs`` and
    ``renderers/nftables`` share only what lies beside them, such as ``renderers/logcodes.py``)
    or an agent module above the renderers (``agent/rulelog.py``, the agent loop): the agent
    drives the renderers and hands them what they need, never the other way."""
    if not module.startswith(RENDERERS + "."):
        return []
    packages = {p.name for p in (PACKAGE / "agent" / "renderers").iterdir() if (p / "__init__.py").exists()}
    own = module[len(RENDERERS) + 1 :].split(".")[0]  # the renderer package (ovs, nftables), if in one
    found = []
    for line, target in imports(path, module):
        if target.startswith(RENDERERS + "."):
            sibling = target[len(RENDERERS) + 1 :].split(".")[0]
            if own in packages and sibling in packages and sibling != own:
                found.append(f"{path.name}:{line}: {module} imports the sibling renderer {target}")
        elif (
            target.startswith("policyfabric.agent")
            and target != RENDERERS
            and target not in RENDERERS_MAY_USE
        ):
            found.append(f"{path.name}:{line}: {module} imports {target}, above the renderers")
    return found


def test_renderers_import_neither_each_other_nor_the_agent_above_them() -> None:
    found = [v for path in source_files() for v in renderer_violations(path, module_name(path))]
    assert found == []


@pytest.mark.parametrize(
    ("module", "line", "ok"),
    [
        ("policyfabric.agent.renderers.nftables.probe", "from ..ovs.logflows import RULE", False),
        (
            "policyfabric.agent.renderers.ovs.probe",
            "from policyfabric.agent.renderers.nftables import x",
            False,
        ),
        (
            "policyfabric.agent.renderers.nftables.probe",
            "def f():\n    from policyfabric.agent.rulelog import A",
            False,
        ),
        ("policyfabric.agent.renderers.api", "from policyfabric.agent.ovs_agent import OvsAgent", False),
        ("policyfabric.agent.renderers.nftables.probe", "from ..logcodes import RULE", True),
        ("policyfabric.agent.renderers.nftables.probe", "from .ruleset import Ruleset", True),
        ("policyfabric.agent.renderers.ovs.probe", "from policyfabric.agent.view import Network", True),
    ],
)
def test_the_renderer_checker_sees_siblings_and_the_agent(
    tmp_path: Path, module: str, line: str, ok: bool
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(f"import os\n{line}\n")
    assert (renderer_violations(probe, module) == []) is ok


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("agent", "lab"), ("agent", "cli"), ("agent", "authority"), ("authority", "lab"), ("authority", "cli")],
)
def test_the_named_boundaries_hold(layer: str, forbidden: str) -> None:
    assert forbidden not in ALLOWED[layer]


@pytest.mark.parametrize(
    ("module", "line", "ok"),
    [
        ("policyfabric.agent.probe", "from policyfabric.lab.lab import Lab", False),
        ("policyfabric.authority.probe", "import policyfabric.cli.main", False),
        ("policyfabric.model.probe", "from policyfabric import agent", False),
        ("policyfabric.agent.probe", "def f():\n    from policyfabric.client import Client", False),
        ("policyfabric.agent.probe", "from ..lab.lab import Lab", False),
        ("policyfabric.agent.renderers.probe", "from ... import cli", False),
        ("policyfabric.agent.renderers.probe", "from ..view import Network", True),
        ("policyfabric.lab.probe", "from policyfabric.client import Client", True),
        ("policyfabric.cli.probe", "from policyfabric import __version__", True),
    ],
)
def test_the_checker_sees_each_kind_of_import(tmp_path: Path, module: str, line: str, ok: bool) -> None:
    """The check can fail: upward imports, also inside functions, are reported; downward ones are not."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"import os\n{line}\n")
    assert (violations(probe, module) == []) is ok
