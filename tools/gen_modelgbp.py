#!/usr/bin/env python3
"""Write src/policyfabric/opflex/modelgbp.json: the reference OpFlex model (libmodelgbp) as data.

Why: the reference agent drops, without a log line, every class, property and
value its model does not know (libopflex ``MOSerializer::deserialize``). To
hold what the authority serves against that model in a unit test (the
``modelcheck`` module), the model must be available without the C++ stack, so
it is extracted once and committed.

Source, and why this one: genie's model language (``genie/MODEL/**/*.mdl``) is
the origin, but its meaning (inheritance, dependencies turned into ``*RSrc``
classes, naming rules, property ids) only exists after genie has processed it.
What libopflex actually loads is genie's *output*, libmodelgbp, so that is the
authoritative and simplest source:

* ``src/metadata.cpp``: every concrete class (id, type, owner), its properties
  (id, name, wire type, cardinality, enum constants) and the classes it may
  contain (``COMPOSITE`` properties);
* ``include/modelgbp/**/*.hpp``: the naming of each child under each parent
  (the ``URIBuilder(getURI()).addElement(...)`` chains of the ``add<Child>``
  methods) and the classes a relation source may point at (``setReference``).

This script runs genie itself (``javac`` + ``java``, about 10 s) on the source
snapshot, or reads an already generated libmodelgbp (``--libmodelgbp``, e.g.
``.cache/opflex-ref/src/genie/target/libmodelgbp`` after
``scripts/build-opflex-ref.sh``). Run it once when the reference snapshot
changes; tests only read the JSON::

    python tools/gen_modelgbp.py                         # ../shared/thirdparty/opflex-*.tar.xz
    python tools/gen_modelgbp.py --tarball PATH.tar.xz
    python tools/gen_modelgbp.py --libmodelgbp DIR
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "policyfabric" / "opflex" / "modelgbp.json"
CACHED = ROOT / ".cache" / "opflex-ref" / "src" / "genie" / "target" / "libmodelgbp"

# --- metadata.cpp
_CLASS = re.compile(r'ClassInfo\((\d+), ClassInfo::(\w+), "(\w+)", "(\w+)",')
_PROP = re.compile(r'\(PropertyInfo\((\d+)ul, "(\w+)", PropertyInfo::(\w+), (?:(\d+), )?PropertyInfo::(\w+)')
_ENUM = re.compile(r'EnumInfo\("(\w+)",')
_CONST = re.compile(r'\(ConstInfo\("([^"]+)", (0x[0-9A-Fa-f]+|\d+)\)\)')

# --- headers
_CLASS_ID = re.compile(r"static const opflex::modb::class_id_t CLASS_ID = (\d+);")
_ADD = re.compile(r"std::shared_ptr<[\w:]+> (add\w+)\(\s*(?P<params>[^)]*)\)\s*\{(?P<body>.*?)\n    \}", re.S)
_PARAM = re.compile(r"(?:const\s+)?([\w:]+)&?\s+(\w+)$")
_STATIC = re.compile(r'static const std::string (\w+) = "([^"]*)";')
_ADD_CHILD = re.compile(
    r"addChild<[\w:]+>\(\s*CLASS_ID, getURI\(\), (\d+)ul, (\d+),\s*"
    r"opflex::modb::URIBuilder\(getURI\(\)\)((?:\.addElement\([^)]*\))+)\.build\(\)"
)
_ELEMENT = re.compile(r"\.addElement\(([^)]*)\)")
_SET_REFERENCE = re.compile(r"setReference\(\d+ul, (\d+),")


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def parse_metadata(text: str) -> dict[str, dict[str, Any]]:
    """Classes by name from genie's metadata.cpp (the ModelMetadata libopflex loads)."""
    classes: dict[str, dict[str, Any]] = {}
    starts = [m for m in _CLASS.finditer(text)]
    for i, m in enumerate(starts):
        block = text[m.end() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        cid, ctype, name, owner = int(m[1]), m[2], m[3], m[4]
        props: dict[str, Any] = {}
        children: dict[str, Any] = {}
        lines = block.split("\n")
        j = 0
        while j < len(lines):
            pm = _PROP.search(lines[j])
            if pm is None:
                j += 1
                continue
            pid, pname, ptype, child_id, card = int(pm[1]), pm[2], pm[3], pm[4], pm[5]
            if ptype == "COMPOSITE":
                children[pname] = {"class_id": int(child_id or 0), "prop_id": pid}
                j += 1
                continue
            prop: dict[str, Any] = {"id": pid, "type": ptype, "cardinality": card.lower()}
            if (
                ptype.startswith("ENUM")
                or "EnumInfo(" in lines[j]
                or (j + 1 < len(lines) and "EnumInfo(" in lines[j + 1])
            ):
                # the enum's constants run until the closing ")))" of this PropertyInfo
                k = j
                chunk = []
                while k < len(lines):
                    chunk.append(lines[k])
                    if re.search(r"\)\)\) // item:mprop", lines[k]):
                        break
                    k += 1
                joined = "\n".join(chunk)
                em = _ENUM.search(joined)
                if em:
                    prop["enum"] = em[1]
                    prop["constants"] = {c: int(v, 0) for c, v in _CONST.findall(joined)}
                j = k + 1
            else:
                j += 1
            props[pname] = prop
        classes[name] = {
            "id": cid,
            "type": ctype,
            "owner": owner,
            "properties": dict(sorted(props.items())),
            "children": children,
        }
    return classes


def parse_headers(include_dir: Path, classes: dict[str, dict[str, Any]]) -> None:
    """Add each child's naming (per parent) and each relation's possible target classes."""
    by_id = {c["id"]: name for name, c in classes.items()}
    for header in sorted(include_dir.rglob("*.hpp")):
        text = header.read_text()
        cm = _CLASS_ID.search(text)
        if cm is None or int(cm[1]) not in by_id:
            continue
        parent = by_id[int(cm[1])]
        pinfo = classes[parent]
        if pinfo["type"] == "RELATIONSHIP" and parent.endswith("RSrc"):
            targets = sorted({by_id[int(t)] for t in _SET_REFERENCE.findall(text) if int(t) in by_id})
            pinfo["relation_targets"] = targets
        for m in _ADD.finditer(text):
            body = m["body"]
            am = _ADD_CHILD.search(body)
            if am is None:
                continue
            params = [p.strip() for p in m["params"].split(",") if p.strip()]
            param_types: dict[str, str] = {}
            for p in params:
                pm = _PARAM.match(p)
                if pm is None:
                    raise SystemExit(f"gen_modelgbp: cannot parse parameter {p!r} in {header}")
                param_types[pm[2]] = pm[1]
            statics = dict(_STATIC.findall(body))
            elements = _ELEMENT.findall(am[3])
            child = elements[0].strip('"')
            if child not in classes or classes[child]["id"] != int(am[2]):
                raise SystemExit(f"gen_modelgbp: {header}: {m[1]} adds {child} (id {am[2]}), not in metadata")
            prefix = _lower_first(child)
            naming: list[dict[str, Any]] = []
            for el in elements[1:]:
                if not el.startswith(prefix):
                    raise SystemExit(f"gen_modelgbp: {header}: naming element {el} of {child}")
                prop = _lower_first(el[len(prefix) :])
                entry: dict[str, Any] = {"prop": prop}
                if el in statics:
                    entry["value"] = statics[el]
                elif el in param_types:
                    entry["kind"] = (
                        "mac"
                        if "MAC" in param_types[el]
                        else ("string" if "string" in param_types[el] else "integer")
                    )
                else:
                    raise SystemExit(
                        f"gen_modelgbp: {header}: naming element {el} is neither param nor const"
                    )
                naming.append(entry)
            slot = pinfo["children"].setdefault(child, {"class_id": int(am[2]), "prop_id": int(am[1])})
            variants = slot.setdefault("naming", [])
            if naming not in variants:
                variants.append(naming)


def finish(classes: dict[str, dict[str, Any]]) -> None:
    """Containers (the reverse of children), sorted for a stable, reviewable file."""
    for name in classes:
        classes[name]["containers"] = []
    for parent, info in classes.items():
        for child in info["children"]:
            if child in classes:
                classes[child]["containers"].append(parent)
    for info in classes.values():
        info["containers"].sort()
        info["children"] = dict(sorted(info["children"].items()))
        for slot in info["children"].values():
            slot.setdefault("naming", [])


def generate_with_genie(tarball: Path, work: Path) -> Path:
    """Extract genie from the snapshot, compile it with javac (no Maven) and run it."""
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.lstrip("./").startswith("genie/")]
        tar.extractall(work, members=members, filter="data")
    genie = work / "genie"
    sources = [str(p.relative_to(genie)) for p in (genie / "src" / "main" / "java").rglob("*.java")]
    (genie / "sources.txt").write_text("\n".join(sources))
    subprocess.run(
        ["javac", "-nowarn", "-encoding", "UTF-8", "-d", "classes", "@sources.txt"],
        cwd=genie,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["java", "-cp", "classes", "org.opendaylight.opflex.genie.Genie"],
        cwd=genie,
        check=True,
        capture_output=True,
    )
    return genie / "target" / "libmodelgbp"


def default_tarball() -> Path | None:
    env = os.environ.get("OPFLEX_REF_TARBALL")
    if env:
        return Path(env)
    found = sorted(glob.glob(str(ROOT.parent / "shared" / "thirdparty" / "opflex-*.tar.xz")))
    return Path(found[-1]) if found else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--tarball", type=Path, default=None, help="the opflex source snapshot")
    ap.add_argument("--libmodelgbp", type=Path, default=None, help="an already generated libmodelgbp")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    tarball = args.tarball or default_tarball()
    with tempfile.TemporaryDirectory(prefix="gen-modelgbp-") as tmp:
        if args.libmodelgbp is not None:
            lib = args.libmodelgbp
        elif args.tarball is None and CACHED.is_dir():
            lib = CACHED
        elif tarball is not None and tarball.is_file():
            if shutil.which("javac") is None:
                print("gen_modelgbp: javac not found (openjdk-17-jdk-headless)", file=sys.stderr)
                return 1
            lib = generate_with_genie(tarball, Path(tmp))
        else:
            print(
                "gen_modelgbp: no snapshot (../shared/thirdparty/opflex-*.tar.xz) and no --libmodelgbp",
                file=sys.stderr,
            )
            return 1
        classes = parse_metadata((lib / "src" / "metadata.cpp").read_text())
        parse_headers(lib / "include" / "modelgbp", classes)
    finish(classes)
    snapshot = tarball.name if tarball is not None else str(args.libmodelgbp)
    commit = m[1] if tarball is not None and (m := re.search(r"opflex-([0-9a-f]+)", tarball.name)) else ""
    doc = {
        "_comment": (
            "Generated by tools/gen_modelgbp.py from genie's output (libmodelgbp: src/metadata.cpp and the "
            "class headers) for the reference OpFlex snapshot named in 'source'. Do not edit; rerun the "
            "tool when the snapshot changes. Read by policyfabric.opflex.modelcheck."
        ),
        "source": {"snapshot": snapshot, "commit": commit, "library": "modelgbp"},
        "classes": dict(sorted(classes.items())),
    }
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    shown = args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out
    print(f"gen_modelgbp: {len(classes)} classes -> {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
