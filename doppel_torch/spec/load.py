"""Load a user patch named on a command line: a Python file or an importable module, optionally `:name`.

    load_patch("examples/subtractive.py")            # the file's `patch` (a Patch, or a function returning one)
    load_patch("my_synths.pads:warm_pad")            # module path and attribute
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from doppel_torch.spec.patch import Patch


def load_patch(spec: str) -> Patch:
    """The Patch named by `spec` ("FILE.py[:name]" or "package.module[:name]"; name defaults to `patch`).

    Raises ValueError with what to do when the file or module is missing, the name is absent, or it is not a
    Patch; the patch's own wiring is validated when a Synth is built from it."""
    if "/" in spec and Path(spec).is_dir():
        raise ValueError(f"patch {spec!r} is a folder: give the Python file in it that defines the patch")
    if Path(spec).is_file() or spec.endswith(".py"):  # a file, whose path may hold a ':'
        source, name = spec, ""
    elif spec.rpartition(":")[0].endswith(".py"):  # FILE.py:NAME
        source, _, name = spec.rpartition(":")
    else:  # package.module[:NAME]
        source, _, name = spec.partition(":")
    name = name or "patch"
    if not source.strip():
        raise ValueError("give a patch: a .py file or an importable module, e.g. examples/subtractive.py or "
                         "my_package.patches:pad")
    if source.endswith(".py") or Path(source).is_file():
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"patch file {source!r} is a folder: give the Python file that defines the patch")
        if not path.is_file():
            raise ValueError(f"patch file {source!r} does not exist")
        if path.suffix != ".py":  # importlib has no loader for another suffix
            raise ValueError(f"patch file {source!r} is not a .py file: give the Python file that defines the patch")
        loader = importlib.util.spec_from_file_location(f"doppel_torch_user_patch_{path.stem}", path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except (Exception, SystemExit) as err:  # the user's code (a sys.exit too): report it in one line
            raise ValueError(f"patch file {source!r} failed to run: {type(err).__name__}: {err}") from err
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as err:
            raise ValueError(f"cannot import patch module {source!r} ({err}); give a .py file or an importable "
                             "module, e.g. examples/subtractive.py or my_package.patches:pad") from err
    if not hasattr(module, name):
        raise ValueError(f"{source!r} has no {name!r}: define `patch` (a Patch or a function returning one) or name "
                         f"it as {source}:NAME")
    found = getattr(module, name)
    if callable(found) and not isinstance(found, Patch):
        try:
            found = found()
        except (Exception, SystemExit) as err:  # the user's code: report it in one line
            raise ValueError(f"{source}:{name}() failed: {type(err).__name__}: {err} (it is called without "
                             "arguments and must return a Patch)") from err
    if not isinstance(found, Patch):
        raise ValueError(f"{source}:{name} is {type(found).__name__!r}, not a doppel_torch.spec.Patch")
    return found
