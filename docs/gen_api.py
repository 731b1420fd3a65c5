"""Write ``docs/api.md``, the API reference, from unigen's docstrings (stdlib ``inspect`` only).

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 (and say so) when docs/api.md is stale

What is documented: ``unigen.__all__`` (an index table) and every public module of the package
that declares ``__all__`` (module docstring, then each exported name with its signature and
docstring; classes also list their own public methods and properties). A name exported by
several modules is documented once, in its home: the module that defines it when that module
exports it, otherwise the most specific module that exports it. ``tests/test_docs.py`` checks
that the committed file equals a fresh generation and that every public class, function and
module has its own docstring.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "api.md"
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# optional dependencies a module may import at its top (unigen.interop.diffusers_scheduler:
# diffusers); where one is not installed, that module's committed section is kept as it is
OPTIONAL_IMPORTS = {"diffusers", "transformers"}


def _import(name: str):
    """The module, or its name if it needs an optional dependency that is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in OPTIONAL_IMPORTS:
            return name
        raise


def public_modules(package: str = "unigen") -> list:
    """``package`` and its submodules with no ``_private`` path component that declare ``__all__``
    (sorted by name, the package first); a module whose optional dependency is missing appears
    as its name."""
    pkg = importlib.import_module(package)
    names = [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".", onerror=lambda name: None)]
    names = sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))
    mods = [pkg] + [_import(n) for n in names]
    return [m for m in mods if isinstance(m, str) or isinstance(getattr(m, "__all__", None), (list, tuple))]


def committed_section(name: str) -> list:
    """The lines of module ``name``'s section in the committed docs/api.md (kept where the module
    cannot be imported here)."""
    text = OUT.read_text() if OUT.exists() else ""
    start = text.find(f'<a id="{name}"></a>')
    if start < 0:
        raise SystemExit(f"{name} needs an optional dependency that is not installed and has no committed section")
    nxt = re.compile(r'^<a id="[^"]+"></a>\n\n## ', flags=re.MULTILINE).search(text, start + 1)
    end = nxt.start() if nxt else -1
    return text[start: end if end >= 0 else len(text)].rstrip("\n").split("\n") + [""]


def _kind(obj) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "data"


def own_doc(obj) -> str:
    """The object's own docstring ('' when it has none, when it is inherited, or when it is the
    signature dataclasses write in place of a missing one)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return ""
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""
    return inspect.cleandoc(doc)


def _signature(obj, name: str) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):  # e.g. an exception class: show its bases
        sig = "(" + ", ".join(b.__name__ for b in obj.__bases__) + ")" if inspect.isclass(obj) else "(...)"
    return _ADDRESS.sub("", f"{name}{sig}")


def _summary(obj) -> str:
    if _kind(obj) == "data":
        text = _data_repr(obj)
        return (text if len(text) <= 100 else text[:97] + "...").replace("|", "\\|")
    doc = own_doc(obj)
    first = doc.split("\n\n")[0].replace("\n", " ").strip() if doc else ""
    return first.replace("|", "\\|")


def _data_repr(obj) -> str:
    """Stable text for a data name: sorted dict keys, literal sequences, or the element types
    (never a count or an address, which other code or a test may change at run time)."""
    if isinstance(obj, dict):
        return f"dict with keys: {', '.join(sorted(map(str, obj)))}"
    if isinstance(obj, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in obj):
        return repr(obj)
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__} of {'/'.join(sorted({type(v).__name__ for v in obj}))}"
    return _ADDRESS.sub("", repr(obj))[:200]


def homes(modules) -> dict:
    """(id(object), exported name) -> (module name, name) where the object is documented; a module
    with its own section maps to (its name, None). Keyed by name too, so two constants that happen
    to be the same interned object stay apart."""
    sections = {m.__name__ for m in modules}
    candidates: dict = {}
    for m in modules:
        for name in m.__all__:
            obj = getattr(m, name)
            candidates.setdefault((id(obj), name), (obj, []))[1].append((m.__name__, name))
    out = {}
    for key, (obj, cands) in candidates.items():
        if inspect.ismodule(obj) and obj.__name__ in sections:
            out[key] = (obj.__name__, None)
            continue
        defining = [c for c in cands if c[0] == getattr(obj, "__module__", None)]
        out[key] = defining[0] if defining else max(cands, key=lambda c: c[0].count("."))  # first of the deepest
    return out


def _anchor(module: str, name: str | None) -> str:
    return module if name is None else f"{module}.{name}"


def _text_block(lines: list, text: str) -> None:
    lines += ["```text", text.rstrip(), "```", ""]


def _members(cls) -> list:
    """Public methods and properties defined on the class itself (not inherited)."""
    out = []
    for name, raw in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(raw, property):
            out.append((name, raw, "property"))
        elif isinstance(raw, (staticmethod, classmethod)):
            out.append((name, raw.__func__, "method"))
        elif inspect.isfunction(raw):
            out.append((name, raw, "method"))
    return out


def _document(lines: list, module: str, name: str, obj) -> None:
    kind = _kind(obj)
    lines += [f'<a id="{_anchor(module, name)}"></a>', "", f"### `{module}.{name}` ({kind})", ""]
    if kind == "data":
        _text_block(lines, f"{name}: {type(obj).__name__} = {_data_repr(obj)}")
        return
    if kind == "module":
        _text_block(lines, own_doc(obj) or "(no docstring)")
        return
    head = ("class " if kind == "class" else "") + _signature(obj, name)
    _text_block(lines, head + "\n\n" + (own_doc(obj) or "(no docstring)"))
    if kind == "class":
        for mname, member, mkind in _members(obj):
            sig = f"{mname} (property)" if mkind == "property" else _signature(member, mname)
            doc = inspect.cleandoc(member.__doc__) if member.__doc__ and member.__doc__.strip() else ""
            lines += [f"- `{sig}`" + (f": {doc.splitlines()[0]}" if doc else "")]
            rest = doc.split("\n", 1)[1].strip() if "\n" in doc else ""
            if rest:
                lines += ["", "  ```text", *("  " + ln if ln else "" for ln in rest.splitlines()), "  ```"]
        if _members(obj):
            lines.append("")


def generate() -> str:
    """The text of docs/api.md."""
    listed = public_modules()
    modules = [m for m in listed if not isinstance(m, str)]
    home = homes(modules)
    top = modules[0]
    lines = [
        "# API reference",
        "",
        ("Generated by `python docs/gen_api.py` from the docstrings; do not edit by hand "
         "(`tests/test_docs.py` fails when this file is stale)."),
        "",
        "## `unigen` (top level)",
        "",
        "| name | kind | summary |",
        "|---|---|---|",
    ]
    for name in top.__all__:
        obj = getattr(top, name)
        mod, hname = home[id(obj), name]
        lines.append(f"| [`{name}`](#{_anchor(mod, hname)}) | {_kind(obj)} | {_summary(obj)} |")
    lines += ["", "Modules:", ""]
    names = [m if isinstance(m, str) else m.__name__ for m in listed[1:]]
    lines += [f"- [`{n}`](#{n})" for n in names]
    lines.append("")
    for m in listed[1:]:
        if isinstance(m, str):
            lines += committed_section(m)
            continue
        lines += [f'<a id="{m.__name__}"></a>', "", f"## `{m.__name__}`", ""]
        _text_block(lines, own_doc(m) or "(no module docstring)")
        elsewhere = []
        for name in m.__all__:
            obj = getattr(m, name)
            mod, hname = home[id(obj), name]
            if mod == m.__name__ and hname == name:
                _document(lines, m.__name__, name, obj)
            else:
                elsewhere.append(f"[`{name}`](#{_anchor(mod, hname)})")
        if elsewhere:
            lines += ["Also exports: " + ", ".join(elsewhere) + ".", ""]
    # names the top level exports whose home is the top level itself
    own = [n for n in top.__all__ if home[id(getattr(top, n)), n][0] == top.__name__]
    if own:
        lines += ['<a id="unigen-own"></a>', "", "## `unigen` names defined at the top level", ""]
        for name in own:
            _document(lines, top.__name__, name, getattr(top, name))
    return "\n".join(lines).rstrip() + "\n"


def undocumented() -> list:
    """'module.name' of every exported class, function or module without its own docstring."""
    missing = []
    modules = [m for m in public_modules() if not isinstance(m, str)]
    for m in modules:
        if not own_doc(m):
            missing.append(m.__name__)
    for mod, name in sorted(v for v in homes(modules).values() if v[1] is not None):
        obj = getattr(sys.modules[mod], name)
        if _kind(obj) != "data" and not own_doc(obj):
            missing.append(f"{mod}.{name}")
    return missing


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = generate()
    if "--check" in argv:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
