"""The documentation cannot drift: every command it shows parses, every relative link resolves.

Commands are taken from README.md and docs/*.md:
  - fenced code blocks marked ```bash / ```sh / ```shell or unmarked: every line (backslash
    continuations joined) whose command, after `&&` / `;` splitting and leading `VAR=value`
    assignments, starts with `python`; `pip` and other programs are skipped, `# comments`
    dropped (shlex). Blocks in other languages (```python, ```text) are not commands;
  - inline code spans that start with `python `.
Square-bracketed optional parts (`[--peer]`, `[:variant]`, `[--config.field=value ...]`) are
removed before parsing, so a command is checked without its optional parts. A synopsis with
placeholders (`configs/<file>.py`) belongs in a ```text block, which is not a command, so no
allow-list of skipped commands is needed.

How each command is checked, without running it:
  - `python train.py ...`: parsed by absl + ml_collections as train.py parses it (the config
    file and variant are loaded, `--config.a.b=value` overrides applied to the locked config,
    so an unknown field fails);
  - `python sample.py ...`, `python -m module ...`, `python benchmarks/x.py ...`,
    `python tools/x.py ...`, `python docs/x.py ...`: the entry point is imported and its
    `parse_args(argv)` called; a SystemExit (argparse's error exit) fails the test;
  - `python -c CODE`: CODE compiles and the names it imports exist.
An entry point without `parse_args(argv)` fails with a message naming it. Links: every
relative link or image in the pages points to an existing file, and a `#fragment` into a
markdown page names one of its headings.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```+)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
INLINE_CODE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
OPTIONAL_PART = re.compile(r"\[[^\[\]]*\]")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|"}
RUNS_PYTHON = re.compile(r"(^|\s|&&|;|\|)python3?\s")


@dataclass(frozen=True)
class Command:
    page: str  # path relative to the repository root
    line: int
    text: str  # as shown (continuations joined, whitespace collapsed)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


# -- extraction ----------------------------------------------------------------------------------


def _blank(match: re.Match) -> str:
    """The matched text with everything but newlines blanked, so line numbers survive."""
    return re.sub(r"[^\n]", " ", match.group(0))


def _logical_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """(line number, text) of each line of a code block with `\\` continuations joined."""
    out, pending, start = [], "", first_line
    for offset, raw in enumerate(body.split("\n")):
        if not pending:
            start = first_line + offset
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    if pending.strip():
        out.append((start, pending))
    return out


def python_segments(text: str) -> list[list[str]]:
    """The argv of every `python ...` command in a shell line: optional parts removed, split at
    `&&` / `;` / `|`, leading VAR=value assignments and `taskset -c CPUS` dropped; other
    programs ignored."""
    text = text.strip()
    if text.startswith("$ "):
        text = text[2:]
    if not re.match(r"python3?\s+-c\s", text):  # code after -c keeps its brackets
        previous = None
        while previous != text:
            previous, text = text, OPTIONAL_PART.sub("", text)
    tokens = shlex.split(text, comments=True)
    segments, current = [], []
    for token in [*tokens, "&&"]:
        if token in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    commands = []
    for seg in segments:
        while seg and ENV_ASSIGNMENT.match(seg[0]):
            seg = seg[1:]
        if seg[:2] == ["taskset", "-c"]:  # pinned to cores: the command follows the CPU list
            seg = seg[3:]
        if seg and seg[0] in ("python", "python3"):
            commands.append(seg)
    return commands


def extract_commands(markdown: str, page: str) -> list[Command]:
    """Every `python` command shown on a page: shell code blocks, then inline code spans."""
    commands = []
    for m in FENCE.finditer(markdown):
        language, body = m.group(2).lower(), m.group(3)
        if language not in SHELL_LANGUAGES:
            continue
        first = markdown.count("\n", 0, m.start(3)) + 1
        for line_no, line in _logical_lines(body, first):
            if RUNS_PYTHON.search(line):  # `pip ...` alone, `tensorboard ...`: not checked
                commands.append(Command(page, line_no, " ".join(line.split())))
    prose = FENCE.sub(_blank, markdown)
    for m in INLINE_CODE.finditer(prose):
        code = " ".join(m.group(2).split())
        if code.startswith("python "):
            line_no = prose.count("\n", 0, m.start()) + 1
            commands.append(Command(page, line_no, code))
    return commands


def extract_links(markdown: str) -> list[tuple[int, str]]:
    """(line, target) of every markdown link or image outside code."""
    prose = FENCE.sub(_blank, markdown)
    prose = INLINE_CODE.sub(_blank, prose)
    return [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK.finditer(prose)]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


COMMANDS = [c for page in PAGES for c in extract_commands(page.read_text(), _rel(page))]
LINKS = [
    (_rel(page), line, target)
    for page in PAGES
    for line, target in extract_links(page.read_text())
    if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: are not checked
]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> '-'."""
    prose = FENCE.sub(_blank, markdown)
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


# -- checking one command ------------------------------------------------------------------------


def parse_train_flags(args: list[str]) -> None:
    """train.py's flags, defined as train.py defines them, on a fresh FlagValues."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["train.py", *args]
    fv = flags.FlagValues()
    # sys_argv: config_flags finds the `--config.x=...` overrides there (default: sys.argv).
    config_flags.DEFINE_config_file(
        "config", None, "Config file (path[:variant]).", flag_values=fv, lock_config=True,
        sys_argv=argv,
    )  # fmt: skip
    flags.DEFINE_string("workdir", None, "Directory.", flag_values=fv)
    flags.DEFINE_bool("verbose", False, "Library logs on the terminal.", flag_values=fv)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
    try:
        fv(argv)
    except (AttributeError, KeyError) as e:  # an override of a field the config lacks
        field = str(e.args[0] if e.args else e).strip("'\"")
        raise AssertionError(
            f"the config has no field {field!r} to override (train.py locks the config: a field "
            "must be declared in the config file before the command line can set it)"
        ) from None
    fv.config.keys()  # a config file that failed to load raises its error here


_loaded: dict[str, object] = {}


def load_entry_point(script: str):
    """The module of a script path (`tools/roofline.py`) or a dotted module name."""
    if script in _loaded:
        return _loaded[script]
    if script.endswith(".py"):
        path = ROOT / script
        if not path.is_file():
            raise FileNotFoundError(f"no script {script} in the repository")
        if (path.parent / "__init__.py").is_file():  # a package: import it as one (benchmarks.x)
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        else:
            name = "_docs_entry_" + re.sub(r"\W", "_", script)
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(script)
    _loaded[script] = module
    return module


def check_python_code(code: str) -> None:
    """`python -c CODE`: CODE compiles and every `from X import Y` / `import X` resolves."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)


def check_command(argv: list[str]) -> None:
    rest = argv[1:]
    if not rest:
        raise AssertionError("bare `python`")
    if rest[0] == "-c":
        check_python_code(rest[1])
        return
    if rest[0] == "-m":
        entry, args = rest[1], rest[2:]
    else:
        entry, args = rest[0], rest[1:]
    if entry == "train.py":
        parse_train_flags(args)
        return
    module = load_entry_point(entry)
    parse_args = getattr(module, "parse_args", None)
    if parse_args is None:
        pytest.fail(
            f"entry point {entry} has no parse_args(argv) function, so its command line "
            "cannot be checked without running it",
            pytrace=False,
        )
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):
            raise AssertionError(f"argparse rejected it: {err.getvalue().strip()}") from None


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths in commands are relative to the repository root
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config_flags
@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_parses(command: Command, at_root):
    argvs = python_segments(command.text)
    assert argvs, f"{command}: no python command found in it"
    for argv in argvs:
        try:
            check_command(argv)
        except pytest.fail.Exception as e:
            pytest.fail(f"{command.page}:{command.line}: `{command.text}`: {e.msg}", pytrace=False)
        except Exception as e:
            pytest.fail(
                f"{command.page}:{command.line}: `{command.text}` does not parse: "
                f"{type(e).__name__}: {e}",
                pytrace=False,
            )


@pytest.mark.parametrize("page,line,target", LINKS, ids=[f"{p}:{n}:{t}" for p, n, t in LINKS])
def test_relative_link_exists(page: str, line: int, target: str):
    path, _, fragment = target.partition("#")
    resolved = (ROOT / page).parent / path if path else ROOT / page
    assert resolved.exists(), f"{page}:{line}: link to {target} ({_rel_or_abs(resolved)}) missing"
    if fragment and resolved.suffix == ".md":
        assert fragment in anchors(resolved.read_text()), (
            f"{page}:{line}: {_rel_or_abs(resolved)} has no heading with anchor #{fragment}"
        )


def _rel_or_abs(path: Path) -> str:
    try:
        return _rel(path.resolve())
    except ValueError:
        return str(path)


# -- the pages' fixed points and the extractor itself ---------------------------------------------


def test_readme_keeps_ci_test_command():
    """.ci/run runs the README's test command, line for line."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# The README's test command:") + 1]
    assert command.endswith("&& pytest") and 'pip install -e ".[test]"' in command
    assert command in (ROOT / "README.md").read_text().splitlines()


def test_train_py_defines_flags_as_this_test_does():
    """parse_train_flags mirrors train.py's flag definitions; fail if train.py changes them."""
    source = (ROOT / "train.py").read_text()
    assert re.search(r'config_flags\.DEFINE_config_file\(\s*"config".*lock_config=True', source)
    assert re.search(r'flags\.DEFINE_string\(\s*"workdir"', source)
    assert re.search(r'flags\.DEFINE_bool\(\s*"verbose"', source)
    assert 'mark_flags_as_required(["config", "workdir"])' in source


def test_pages_show_commands():
    pages = {c.page for c in COMMANDS}
    assert "README.md" in pages
    assert any("python train.py --config configs/shapes.py" in c.text for c in COMMANDS)


def test_extractor():
    page = "\n".join(
        [
            "Run `python sample.py --workdir w\n--seed 1` or `pip install x`.",
            "```bash",
            "pip install -e . && python train.py --config c.py \\",
            "    --workdir w   # a comment",
            "XLA_FLAGS=--x= python tools/op_profile.py --model prior [--peer] --out o",
            "tensorboard --logdir w",
            "```",
            "```python",
            "python_thing = 1",
            "```",
            "```text",
            "python train.py --config configs/<file>.py",
            "```",
            "[a link](docs/x.md) and ![img](docs/y.png) and [web](https://e.org) `[no](z.md)`",
        ]
    )
    commands = extract_commands(page, "p.md")
    assert [(c.line, c.text) for c in commands] == [
        (4, "pip install -e . && python train.py --config c.py --workdir w # a comment"),
        (6, "XLA_FLAGS=--x= python tools/op_profile.py --model prior [--peer] --out o"),
        (1, "python sample.py --workdir w --seed 1"),
    ]
    assert python_segments(commands[0].text) == [
        ["python", "train.py", "--config", "c.py", "--workdir", "w"]
    ]
    assert python_segments(commands[1].text) == [
        ["python", "tools/op_profile.py", "--model", "prior", "--out", "o"]
    ]
    assert extract_links(page) == [(15, "docs/x.md"), (15, "docs/y.png"), (15, "https://e.org")]
