"""`harness new NAME --like ID`: a recipe of the user's own to start from. NAME.toml is the
documented recipe's text (its protocol and comments) with its id and title replaced, its source,
published numbers and `assumed` list left out, and its network pointed at NAME.py: the write-up's
network module as plain PyTorch (the harness registry lines removed)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from ..errors import HarnessError, UsageError
from ..models import user_code
from ..models.registry import _REGISTRY
from .catalogue import experiments_dir, load_spec
from .spec import Experiment

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_DROPPED = ("source", "published")


def module_name(name: str) -> str:
    stem = re.sub(r"\W", "_", name)
    return stem if stem[0].isalpha() or stem[0] == "_" else f"net_{stem}"


def network_source(exp: Experiment) -> tuple[str, str]:
    """(the factory's name, its module's source without the registry) of a documented recipe."""
    factory = _REGISTRY[exp.model.name]
    src = inspect.getsource(inspect.getmodule(factory))
    kept = [ln for ln in src.splitlines() if not ln.startswith(("from .registry import", "@register_model("))]
    head = (f"# {exp.model.name} as plain PyTorch, copied from harness for `{exp.id}`: edit freely.\n"
            f"# The spec names the factory `{factory.__name__}` (a function or an nn.Module class) and its args.\n")
    return factory.__name__, head + re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip() + "\n"


def spec_text(name: str, exp: Experiment, code_file: str, factory: str, original: str) -> str:
    out = [f'id = "{name}"', f'title = "{name}: my network, trained as {exp.id}"', ""]
    section, skipping_list = None, False
    for ln in original.splitlines():
        m = _HEADER.match(ln)
        if m:
            section = m.group(1)
        if section is None:  # the top level: id, title and `assumed` are replaced or left out
            if skipping_list:
                skipping_list = "]" not in ln
                continue
            if re.match(r"^\s*(id|title|assumed)\s*=", ln):
                skipping_list = ln.count("[") > ln.count("]")  # a list over several lines
                continue
            if not ln.strip():
                continue
            out.append(ln)
            continue
        if section.split(".")[0] in _DROPPED:
            continue
        if section == "model" and re.match(r"^\s*name\s*=", ln):
            out += [f'file = "{code_file}"   # relative to this spec', f'name = "{factory}"   # the factory in that file (function or class)']
            continue
        out.append(ln)
    return "\n".join(out).rstrip() + "\n"


def write_new(name: str, exp: Experiment, folder: str | Path, force: bool) -> tuple[Path, Path]:
    if not _NAME.match(name) or name.lower().endswith(".toml"):
        raise UsageError(f"{name!r}: a recipe's name is letters, digits, '-', '_' and '.' (no .toml), e.g. my-net")
    d = Path(folder)
    spec, code = d / f"{name}.toml", d / f"{module_name(name)}.py"
    for p in (spec, code):
        if p.exists() and not force:
            raise UsageError(f"{p} exists; --force overwrites it")
    other = user_code.shadowed(code.stem, code)
    if other:
        raise UsageError(f"{name!r}: its network file {code.name} would stand in for the module {code.stem!r} ({other}); rename it, e.g. my-{name}")
    original = next((p for p in experiments_dir().iterdir() if p.suffix.lower() == ".toml" and p.stem == exp.id), None)
    if original is None or exp.code is not None or exp.model.name not in _REGISTRY:
        raise UsageError(f"{exp.id}: not a documented recipe with a registered network")
    factory, source = network_source(exp)
    try:
        d.mkdir(parents=True, exist_ok=True)
        code.write_text(source, encoding="utf-8")
        spec.write_text(spec_text(name, exp, code.name, factory, original.read_text(encoding="utf-8")), encoding="utf-8")
    except OSError as e:
        raise HarnessError(f"{d}: cannot write ({e.strerror or type(e).__name__})") from None
    load_spec(spec, user=True)  # what was written trains as it is
    return spec, code
