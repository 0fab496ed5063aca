"""Hold managed objects against the reference OpFlex model (libmodelgbp), statically.

Why: a reference peer (libopflex ``MOSerializer::deserialize``) keeps only
what its model knows and drops the rest without a log line: an unknown class,
an unknown property, a value of the wrong JSON type (an enum sent as an
integer, a number where a string is expected, a list for a scalar), a
reference to a class it does not know. The MO then reaches the agent's store
partially, so e.g. a classifier loses its ethertype. Its URIs are also built
by rule (``URIBuilder``: the parent's URI, the class name, then each naming
property, escaped), and the agent resolves children by those URIs, so a child
named differently is never found. None of this shows in a test against our
own agent; this module shows it in a unit test, in milliseconds.

The model is ``modelgbp.json`` beside this module, extracted once from the
reference's generated metadata by ``tools/gen_modelgbp.py`` (its header says
from what). What the reference reads on the wire, per property type
(libopflex ``engine/MOSerializer.cpp``):

* ``STRING``: a JSON string; ``U64``: a non-negative integer (``true`` is not);
  ``S64``: an integer;
* ``ENUM8..64``: the *name* of one of the enum's constants (``"ipv4"``); an
  integer is dropped silently, an unknown name with a warning. The reference
  also serialises enums by name;
* ``MAC``: ``"xx:xx:xx:xx:xx:xx"``;
* ``REFERENCE``: ``{"subject": <known class>, "reference_uri": <uri>}``;
* every property of the model is scalar: a list is dropped.

``check`` is pure: it reads MOs (``policyfabric.opflex.mo.MO``) and returns
human-readable violations naming the class, URI and property.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from policyfabric.opflex.mo import MO, REFERENCE_URI
from policyfabric.opflex.uri import escape

MODEL_RESOURCE = "modelgbp.json"
ROOT_URI = "/"  # DmtreeRoot: the containment root of the model (PolicyUniverse, EprL2Universe ...)
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_U64_MAX = (1 << 64) - 1
_S64 = (-(1 << 63), (1 << 63) - 1)

# violation kinds (the first words of each message), so reports can group them
UNKNOWN_CLASS = "unknown class"
UNKNOWN_PROPERTY = "unknown property"
WRONG_TYPE = "wrong type"
ENUM_NOT_NAME = "enum not by name"
WRONG_CARDINALITY = "wrong cardinality"
BAD_REFERENCE = "bad reference"
CONTAINMENT = "containment"
URI_FORM = "uri form"
KINDS = (
    UNKNOWN_CLASS,
    UNKNOWN_PROPERTY,
    WRONG_TYPE,
    ENUM_NOT_NAME,
    WRONG_CARDINALITY,
    BAD_REFERENCE,
    CONTAINMENT,
    URI_FORM,
)


@dataclass(frozen=True)
class Violation:
    """One way an MO departs from the model; ``str()`` is the report line."""

    kind: str
    subject: str
    uri: str
    detail: str
    prop: str | None = None

    def __str__(self) -> str:
        where = f"{self.subject} {self.uri}"
        if self.prop is not None:
            where += f" .{self.prop}"
        return f"{self.kind}: {where}: {self.detail}"


@dataclass(frozen=True)
class Model:
    """The reference model: class name -> its entry in modelgbp.json."""

    classes: Mapping[str, Mapping[str, Any]]
    source: Mapping[str, Any]

    def naming_variants(self, parent: str, child: str) -> list[list[Mapping[str, Any]]]:
        slot = self.classes.get(parent, {}).get("children", {}).get(child)
        return list(slot["naming"]) if slot else []


@cache
def load_model() -> Model:
    """The committed model, parsed once per process (about 170 kB of JSON)."""
    text = resources.files("policyfabric.opflex").joinpath(MODEL_RESOURCE).read_text()
    data = json.loads(text)
    return Model(data["classes"], data.get("source", {}))


def _naming_value(entry: Mapping[str, Any], mo: MO, model: Model) -> tuple[str | None, str | None]:
    """(the URI segment for one naming element, or None; why not)."""
    if "value" in entry:  # a fixed element: the target class of a one-class relation
        return escape(str(entry["value"])), None
    prop = str(entry["prop"])
    rel = model.classes.get(mo.subject, {}).get("type") == "RELATIONSHIP"
    if rel and prop in ("targetClass", "targetName"):
        target = mo.properties.get("target")
        if not isinstance(target, dict) or not isinstance(target.get(REFERENCE_URI), str):
            return None, "its naming needs the reference property 'target'"
        part = target.get("subject") if prop == "targetClass" else target[REFERENCE_URI]
        return escape(str(part)), None
    if prop not in mo.properties:
        return None, f"naming property '{prop}' is not set"
    value = mo.properties[prop]
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None, f"naming property '{prop}' is not a string or integer"
    return (str(value) if isinstance(value, int) else escape(value)), None


def _expected_suffixes(mo: MO, model: Model, containers: Iterable[str]) -> tuple[list[str], list[str]]:
    """The URI tails (``Class/name.../``) the model allows for ``mo`` under any of
    ``containers``, and the reasons some could not be built."""
    tails: list[str] = []
    problems: list[str] = []
    for parent in containers:
        for variant in model.naming_variants(parent, mo.subject):
            parts = [escape(mo.subject)]
            for entry in variant:
                seg, why = _naming_value(entry, mo, model)
                if seg is None:
                    problems.append(why or "unknown")
                    break
                parts.append(seg)
            else:
                tail = "".join(p + "/" for p in parts)
                if tail not in tails:
                    tails.append(tail)
    return tails, problems


def _check_value(
    mo: MO, name: str, pinfo: Mapping[str, Any], value: Any, model: Model, out: list[Violation]
) -> None:
    ptype = str(pinfo["type"])
    if isinstance(value, list):
        if pinfo.get("cardinality") != "vector":
            out.append(
                Violation(
                    WRONG_CARDINALITY,
                    mo.subject,
                    mo.uri,
                    f"the model's {ptype} property is scalar; sent a list of {len(value)} "
                    "(a reference peer drops it)",
                    name,
                )
            )
            return
        items = value
    else:
        if pinfo.get("cardinality") == "vector":
            out.append(
                Violation(WRONG_CARDINALITY, mo.subject, mo.uri, "the model's property is a vector", name)
            )
            return
        items = [value]
    for item in items:
        problem = _type_problem(mo, ptype, pinfo, item, model)
        if problem is not None:
            kind, detail = problem
            out.append(Violation(kind, mo.subject, mo.uri, detail, name))


def _type_problem(
    mo: MO, ptype: str, pinfo: Mapping[str, Any], item: Any, model: Model
) -> tuple[str, str] | None:
    shown = json.dumps(item)
    if ptype == "STRING":
        return None if isinstance(item, str) else (WRONG_TYPE, f"STRING expected, sent {shown}")
    if ptype == "U64":
        ok = isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= _U64_MAX
        return None if ok else (WRONG_TYPE, f"U64 (non-negative integer) expected, sent {shown}")
    if ptype == "S64":
        ok = isinstance(item, int) and not isinstance(item, bool) and _S64[0] <= item <= _S64[1]
        return None if ok else (WRONG_TYPE, f"S64 (integer) expected, sent {shown}")
    if ptype == "MAC":
        ok = isinstance(item, str) and _MAC.fullmatch(item) is not None
        return None if ok else (WRONG_TYPE, f"MAC (xx:xx:xx:xx:xx:xx) expected, sent {shown}")
    if ptype.startswith("ENUM"):
        constants: Mapping[str, int] = pinfo.get("constants", {})
        enum = pinfo.get("enum", ptype)
        if isinstance(item, str):
            if item in constants:
                return None
            return (WRONG_TYPE, f"'{item}' is not a constant of enum {enum} ({', '.join(sorted(constants))})")
        if isinstance(item, int) and not isinstance(item, bool):
            names = [n for n, v in constants.items() if v == item]
            hint = f"send the name {names[0]!r}" if names else "no constant has that value"
            return (
                ENUM_NOT_NAME,
                f"enum {enum} sent as the integer {item}; the reference reads names only ({hint})",
            )
        return (WRONG_TYPE, f"enum {enum} expects a constant name, sent {shown}")
    if ptype == "REFERENCE":
        if not isinstance(item, dict) or not isinstance(item.get(REFERENCE_URI), str):
            return (WRONG_TYPE, f"a reference {{subject, reference_uri}} expected, sent {shown}")
        subject = item.get("subject")
        if subject not in model.classes:
            return (BAD_REFERENCE, f"reference to the class {subject!r}, unknown to the model (dropped)")
        targets = model.classes[mo.subject].get("relation_targets")
        if targets and subject not in targets:
            return (BAD_REFERENCE, f"a {mo.subject} may point at {', '.join(targets)}, not {subject}")
        return None
    return (WRONG_TYPE, f"unhandled model type {ptype}")


def check_details(
    mos: Iterable[MO], model: Model | None = None, extensions: Collection[str] = ()
) -> list[Violation]:
    """Every violation of ``mos`` against the model, in input order. Objects of the
    ``extensions`` classes (classes added beyond the model on purpose, which a reference peer
    drops) are not checked; any other class the model lacks is a violation."""
    model = model or load_model()
    classes = model.classes
    mos = list(mos)
    # a parent named only by another MO's children list still fixes the expected URI
    parent_of: dict[str, MO] = {}
    for mo in mos:
        for c in mo.children:
            parent_of.setdefault(c, mo)
    out: list[Violation] = []
    for mo in mos:
        if mo.subject in extensions:
            continue
        cinfo = classes.get(mo.subject)
        if cinfo is None:
            out.append(
                Violation(
                    UNKNOWN_CLASS,
                    mo.subject,
                    mo.uri,
                    "the model has no such class (a reference peer drops the object)",
                )
            )
            continue
        props: Mapping[str, Any] = cinfo["properties"]
        for name, value in mo.properties.items():
            pinfo = props.get(name)
            if pinfo is None:
                out.append(
                    Violation(
                        UNKNOWN_PROPERTY, mo.subject, mo.uri, "not a property of the class (dropped)", name
                    )
                )
                continue
            _check_value(mo, name, pinfo, value, model, out)
        out.extend(_check_place(mo, cinfo, parent_of.get(mo.uri), model))
    return out


def _check_place(mo: MO, cinfo: Mapping[str, Any], listed_by: MO | None, model: Model) -> list[Violation]:
    """Containment (may this class sit under that parent?) and the URI the model's naming gives."""
    out: list[Violation] = []
    containers: list[str] = list(cinfo.get("containers", []))
    parent_subject, parent_uri = mo.parent_subject, mo.parent_uri
    if parent_uri is None and listed_by is not None:
        parent_subject, parent_uri = listed_by.subject, listed_by.uri
    if parent_subject is not None:
        if parent_subject not in containers:
            allowed = ", ".join(containers) or "nothing (a root)"
            out.append(
                Violation(
                    CONTAINMENT,
                    mo.subject,
                    mo.uri,
                    f"parent {parent_subject} may not contain it (its containers: {allowed})",
                )
            )
            return out
        if mo.parent_relation is not None and mo.parent_relation != mo.subject:
            out.append(
                Violation(
                    CONTAINMENT,
                    mo.subject,
                    mo.uri,
                    f"parent_relation {mo.parent_relation!r}: the reference looks up the parent's "
                    f"child property by it, which is named {mo.subject!r}",
                )
            )
        tails, problems = _expected_suffixes(mo, model, [parent_subject])
        base = ROOT_URI if parent_subject == "DmtreeRoot" else parent_uri
        expected = [f"{base}{t}" for t in tails] if base is not None else []
        if expected and mo.uri not in expected:
            out.append(
                Violation(URI_FORM, mo.subject, mo.uri, f"the reference names it {' or '.join(expected)}")
            )
        elif not expected and problems:
            out.append(Violation(URI_FORM, mo.subject, mo.uri, f"cannot name it: {problems[0]}"))
        return out
    # no parent known: the URI must still end the way some container's naming says
    tails, problems = _expected_suffixes(mo, model, containers)
    if not any(mo.uri.endswith("/" + t) for t in tails):
        if tails:
            out.append(
                Violation(
                    URI_FORM, mo.subject, mo.uri, f"the reference names it .../{' or .../'.join(tails)}"
                )
            )
        elif problems:
            out.append(Violation(URI_FORM, mo.subject, mo.uri, f"cannot name it: {problems[0]}"))
    return out


def check(mos: Iterable[MO], model: Model | None = None, extensions: Collection[str] = ()) -> list[str]:
    """Human-readable violations of ``mos`` against the reference model (empty: all good)."""
    return [str(v) for v in check_details(mos, model, extensions)]


__all__ = ["KINDS", "Model", "Violation", "check", "check_details", "load_model"]
