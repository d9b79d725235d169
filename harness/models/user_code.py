"""A network from the user's own code: `module:Factory` (importable) or a file and a name.

The code is found once where the spec is read (UserCode: what to import, what to ship, the hash
of its file) and imported again by name or path in every process that trains it (a `--jobs`
worker, a Ray task with the code in its runtime_env), where its file must still hash the same.
Every failure is one HarnessError line; the code's own exception is quoted by its first line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import sysconfig
import traceback
import typing
from dataclasses import dataclass
from pathlib import Path

from ..errors import HarnessError


@dataclass(frozen=True)
class UserCode:
    module: str  # import name: the file's stem, or `package.module`
    attr: str  # the factory (a class or a function returning an nn.Module)
    file: str  # absolute path of the module's file, hashed
    sha256: str
    ship: str  # what a worker or a logged model needs: the .py file, or the top-level package's folder ("" if installed)
    search_path: str  # the folder to put on sys.path to import `module` ("" if importable as installed)

    @property
    def label(self) -> str:
        return f"{Path(self.file).name}:{self.attr}" if "." not in self.module else f"{self.module}:{self.attr}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_sha256(path: str | Path, package: str | Path | None) -> str:
    """The hash of what the network's code is: the file, or with `package` (the top-level
    package's folder) every .py file in it, by its path there, so that an edit to a module the
    factory imports (`from .blocks import block`) is a new configuration too."""
    root = Path(package) if package else None
    if root is None or not root.is_dir():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        if "__pycache__" not in p.relative_to(root).parts and p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _top_folder(module: str) -> Path:
    """The file of a top-level module, or its package's folder (a namespace package's one folder)."""
    top = sys.modules[module.split(".")[0]]
    if getattr(top, "__file__", None):
        path = Path(top.__file__).resolve()
        return path.parent if path.name == "__init__.py" else path
    folders = list(getattr(top, "__path__", None) or [])
    if len(folders) != 1:
        raise HarnessError(f"model.name: package {top.__name__!r} lies in {len(folders)} folders ({', '.join(map(str, folders))}); "
                           "give it an __init__.py")
    return Path(folders[0]).resolve()


def _first_error(e: BaseException, file: str | None) -> str:
    """`SyntaxError: invalid syntax (nets.py, line 3)`: the code's own first error line, and its
    line in the user's file where the traceback passes through it."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
    if file and not isinstance(e, SyntaxError):
        frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == Path(file).resolve()]
        if frames:
            text += f" (line {frames[-1].lineno})"
    return text


def _installed(path: Path) -> bool:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    return any(Path(r) in path.resolve().parents for r in roots)


def shadowed(module: str, path: Path) -> str | None:
    """Where a module of that name is, other than `path`: one imported already, or an installed or
    standard one the user's file would stand in for in every process importing it by name (a
    user's file of that name in another folder, found by the path, is not one), else None."""
    have = sys.modules.get(module)
    if have is not None:
        origin = getattr(have, "__file__", None) or "built in"
        return None if origin != "built in" and Path(origin).resolve() == path.resolve() else origin
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    if not found.origin or not Path(found.origin).is_file():
        return found.origin or "built in"
    return found.origin if _installed(Path(found.origin)) else None


def _import_file(module: str, path: Path):
    """Import `path` as the module `module` (its classes pickle by that name, which is what a
    logged model's code_paths and a Ray worker's py_modules provide)."""
    other = shadowed(module, path)
    if other:
        raise HarnessError(f"{path.name}: a module named {module!r} exists already ({other}); rename the file")
    if module in sys.modules:
        return sys.modules[module]
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException as e:
        del sys.modules[module]
        if isinstance(e, KeyboardInterrupt):
            raise
        top = e.name.split(".")[0] if isinstance(e, ModuleNotFoundError) and e.name else ""
        beside = bool(top) and ((path.parent / f"{top}.py").is_file() or (path.parent / top).is_dir())
        raise HarnessError(f"{path.name} does not import: {_first_error(e, str(path))}" + (_NEIGHBOURS if beside else "")) from None
    # a module of its own folder that it imported would be neither hashed nor shipped with the file
    neighbours = sorted(m for m in set(sys.modules) - before - {module}
                        if getattr(sys.modules[m], "__file__", None) and path.parent in Path(sys.modules[m].__file__).resolve().parents)
    if neighbours:
        del sys.modules[module]
        raise HarnessError(f"{path.name} imports {', '.join(neighbours)} from its own folder" + _NEIGHBOURS)
    return mod


_NEIGHBOURS = ("; model.file is one file, hashed and shipped alone: for code in several files make its folder a package "
               "(add __init__.py) and name the factory as name = \"package.module:Factory\"")


def _import_name(module: str, search: list[str]):
    for d in search:
        if d and d not in sys.path:
            sys.path.append(d)  # after everything else: the user's folder never shadows an installed module
    try:
        return importlib.import_module(module)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        file = getattr(sys.modules.get(module), "__file__", None)
        sys.modules.pop(module, None)
        raise HarnessError(f"module {module!r} does not import: {_first_error(e, file)}") from None


def resolve(name: str, file: str, base: Path) -> UserCode:
    """The user's code named by a spec: `file` (relative to the spec's folder `base`) with the
    factory `name`, or `name` = "package.module:Factory" importable from the usual path, the
    spec's folder or the working folder."""
    if file:
        if ":" in name:
            raise HarnessError(f"model.name: {name!r} names a module; with model.file give only the factory's name")
        path = (base / file).resolve()
        if path.suffix != ".py":
            raise HarnessError(f"model.file: {file!r} is not a .py file")
        if not path.is_file():
            raise HarnessError(f"model.file: {path} not found")
        module, attr = path.stem, name
        if not module.isidentifier():
            raise HarnessError(f"model.file: {path.name} cannot be imported by name (a Python identifier is needed, e.g. {module.replace('-', '_')}.py)")
        mod = _import_file(module, path)
        ship, search = str(path), str(path.parent)
    else:
        module, _, attr = name.partition(":")
        if not all(p.isidentifier() for p in module.split(".")) or not attr:
            raise HarnessError(f"model.name: {name!r} is not of the form package.module:Factory")
        mod = _import_name(module, [str(base.resolve()), str(Path.cwd())])
        if not getattr(mod, "__file__", None):
            raise HarnessError(f"model.name: module {module!r} has no source file to record")
        path = Path(mod.__file__).resolve()
        shipped = _top_folder(module)
        ship, search = ("", "") if _installed(path) else (str(shipped), str(shipped.parent))
    if not callable(getattr(mod, attr, None)):
        known = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == mod.__name__)
        raise HarnessError(f"model.name: {path.name} has no {attr!r} (found: {', '.join(known) or 'nothing callable'})")
    return UserCode(module, attr, str(path), code_sha256(path, ship if "." in module else None), ship, search)


def _shipped(code: UserCode) -> bool:
    """Whether `code.module` is importable by name here as the very code the spec was read with
    (a Ray worker's py_modules copy, or the module form)."""
    try:
        found = importlib.util.find_spec(code.module)
    except (ImportError, ValueError):
        return False
    return bool(found and found.origin and Path(found.origin).is_file() and _sha256_here(code, found.origin) == code.sha256)


def _sha256_here(code: UserCode, file: str) -> str:
    """The code's hash as found in this process (a package: the top-level folder `file` lies in)."""
    if "." not in code.module or not code.ship:  # a file, or a package installed (hashed by its module's file)
        return file_sha256(file)
    path = Path(file).resolve()
    return code_sha256(path, path.parents[code.module.count(".") - 1 + (path.name == "__init__.py")])


def load_factory(code: UserCode):
    """The factory in this process: the module already imported, or importable by name with the
    same code (a Ray worker's py_modules), else imported from its file or folder; refused if the
    code differs from what the spec was read with."""
    if code.module in sys.modules or _shipped(code):
        mod = _import_name(code.module, [])
    elif "." not in code.module and Path(code.file).is_file():
        mod = _import_file(code.module, Path(code.file))
    else:
        mod = _import_name(code.module, [code.search_path] if code.search_path and Path(code.search_path).is_dir() else [])
    here = getattr(mod, "__file__", None)
    if not here or _sha256_here(code, here) != code.sha256:
        raise HarnessError(f"{code.label}: the network's code here ({here}) differs from the code the spec was read with; "
                           "an edited network is a new configuration: run the command again")
    return getattr(mod, code.attr)


def check_args(label: str, factory, args: dict) -> None:
    """The spec's arguments against the factory's signature: names, required ones, and the
    annotated types int, float, bool, str and list."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(**args)
    except TypeError as e:
        raise HarnessError(f"model.args: {e} (signature {label}{sig})") from None
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:
        hints = {}
    for key, value in args.items():
        want = hints.get(key)
        want = typing.get_origin(want) or want
        if want in (int, float, bool, str, list) and not (isinstance(value, want) or (want is float and isinstance(value, int))) \
                or (want in (int, float) and isinstance(value, bool)):
            raise HarnessError(f"model.args.{key}: {label} expects {want.__name__}, found {value!r}")


def build(code: UserCode, args: dict, max_weights: int):
    """The user's network, checked: arguments, size (counted on the meta device first where the
    code allows, so a too-large network is refused before its memory is allocated), nn.Module."""
    import torch
    import torch.nn as nn

    factory = load_factory(code)
    check_args(code.label, factory, args)

    def make():
        try:
            return factory(**args)
        except (Exception, SystemExit) as e:  # SystemExit: e.g. argparse in the user's constructor
            raise HarnessError(f"{code.label}({', '.join(f'{k}={v!r}' for k, v in args.items())}) fails: {_first_error(e, code.file)}") from None

    def too_large(m):
        n = sum(p.numel() for p in m.parameters())
        if n > max_weights:
            raise HarnessError(f"{code.label}: {n:,} weights, more than the {max_weights:,} a run may have")

    try:
        with torch.device("meta"):
            probe = factory(**args)
    except (Exception, SystemExit):
        probe = None
    if isinstance(probe, nn.Module):
        too_large(probe)
    model = make()
    if not isinstance(model, nn.Module):
        raise HarnessError(f"{code.label} returns {type(model).__name__}, not a torch.nn.Module")
    too_large(model)
    return model


def check_learns(label: str, model, train_out) -> None:
    """Trainable weights, and a gradient through the output of a forward pass in training mode
    (registry.check_forward(training=True)): a network that detaches it would otherwise train
    nothing, silently, after its run was created."""
    if not any(p.requires_grad for p in model.parameters()):
        raise HarnessError(f"{label}: no trainable weights (nothing in it would learn)")
    if not train_out.requires_grad:
        raise HarnessError(f"{label}: its output in training mode carries no gradient (detached?); nothing in it would learn")
