"""The command-line scripts of benchmarks/ and tools/: each parses its arguments with
`parse_args(argv)` (the docs test checks the pages' commands with it), and the peer script
starts as run.py starts it, outside this repository's environment (tools/ found by path)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Runs in the peer's environment and speaks JSON lines, not flags (see its docstring).
NOT_ARGPARSE = {"benchmarks/peer_dalle2_pytorch.py"}
SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix()
    for folder in ("benchmarks", "tools")
    for p in (ROOT / folder).glob("*.py")
    if 'if __name__ == "__main__":' in p.read_text()
)
REQUIRED = {  # arguments a script cannot run without
    "tools/op_profile.py": ["--model", "prior", "--out", "prof"],
    "tools/roofline.py": ["--model", "prior"],
}


def test_the_scripts_are_found():
    assert {"benchmarks/run.py", "benchmarks/input_pipeline.py", "tools/roofline.py"} <= set(
        SCRIPTS
    )


@pytest.mark.parametrize("script", sorted(set(SCRIPTS) - NOT_ARGPARSE))
def test_script_parses_its_arguments(script):
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    args = module.parse_args(REQUIRED.get(script, []))
    assert vars(args)
    with pytest.raises(SystemExit):
        module.parse_args(["--no-such-flag"])


def test_peer_script_finds_torch_flops_in_tools(tmp_path):
    """run.py starts the peer with the peer's interpreter, no PYTHONPATH, so only the script's
    own directory is on sys.path; dalle2-pytorch is stubbed here (it is not a test dependency)."""
    stub = tmp_path / "stub"
    stub.mkdir()
    names = ("Decoder", "DiffusionPrior", "DiffusionPriorNetwork", "Unet")
    (stub / "dalle2_pytorch.py").write_text("".join(f"{n} = object\n" for n in names))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = (
        f"import runpy, sys; sys.path.insert(1, {str(stub)!r}); "
        f"sys.argv = [{str(ROOT / 'benchmarks' / 'peer_dalle2_pytorch.py')!r}]; "
        "g = runpy.run_path(sys.argv[0], run_name='peer'); "
        "print(g['flop_counter'].__module__, sys.modules['torch_flops'].__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, path = proc.stdout.split()
    assert module == "torch_flops" and Path(path) == ROOT / "tools" / "torch_flops.py"
