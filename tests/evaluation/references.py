"""The FID / KID reference implementations, loaded without torchvision.

pytorch-fid, clean-fid and torch-fidelity all import torchvision somewhere on their package
import path, and with the CPU build of torch the registry's torchvision wheels fail at import
(`operator torchvision::nms does not exist`); installing them even breaks transformers, which
then tries to use that torchvision. So they are installed without their dependencies
(`pip install --no-deps -r tests/references.txt`, the README's test command) and
their code is reached without the imports that need torchvision:

- `reference_functions` compiles named top-level functions (and constants) of a module file,
  unchanged, with only the names they use (e.g. pytorch-fid's `calculate_frechet_distance`,
  whose module imports torchvision.transforms for its image loader);
- `torch_fidelity_module` imports a torch-fidelity submodule under a bare `torch_fidelity`
  package (its `__init__`, which imports torchvision, is not run); the Inception module needs
  only torch.

A missing package skips the test with the install line (fails it under CI, which installs them).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

INSTALL = "pip install --no-deps -r tests/references.txt"


def package_dir(package: str) -> Path:
    """The installed package's folder, found without importing it (skip if not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        missing = f"The reference package {package!r} is not installed ({INSTALL})."
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return Path(next(iter(spec.submodule_search_locations)))


def reference_functions(
    package: str, module_file: str, names: tuple[str, ...], namespace: dict[str, Any]
) -> dict[str, Any]:
    """Top-level functions and assignments `names` of `package/module_file`, compiled from the
    installed source as they are, with `namespace` as their globals."""
    file = package_dir(package) / module_file
    tree = ast.parse(file.read_text(), filename=str(file))
    wanted = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            wanted.append(node)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in names for t in node.targets
        ):
            wanted.append(node)
    module = ast.Module(body=wanted, type_ignores=[])
    scope = dict(namespace)
    exec(compile(module, str(file), "exec"), scope)  # noqa: S102 - the reference's own code
    missing = [n for n in names if n not in scope]
    if missing:
        raise AssertionError(f"{file} no longer defines {missing}; update the reference pin.")
    return {n: scope[n] for n in names}


def torch_fidelity_module(name: str) -> types.ModuleType:
    """`torch_fidelity.<name>` imported without running torch_fidelity/__init__.py."""
    if "torch_fidelity" not in sys.modules:
        package_dir("torch_fidelity")  # skips when not installed
        # The package module with its spec and path, its __init__ not executed.
        package = importlib.util.module_from_spec(importlib.util.find_spec("torch_fidelity"))
        sys.modules["torch_fidelity"] = package
    return importlib.import_module(f"torch_fidelity.{name}")
