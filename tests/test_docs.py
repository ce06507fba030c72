"""The README and docs/ stay true to the code: every command they show names a real command with real flags and
valid choices, every config block is a valid RunConfig, every Python block compiles and imports what exists,
every relative link resolves, and the README stays a front page.

Commands are checked against the click command tree (names, options, choices), not run: running every example
(pretrained exports, PD-Quant at ImageNet size) would take hours. The default run, the config the pipeline page
shows and the Python API are run by tests/pipeline and tests/cli.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from toolchain.cli.commands import cli
from toolchain.pipeline.config_io import config_from_mapping

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SETUP_COMMANDS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && toolchain run",
    'pip install -e ".[test,openvino,qnn]" && python -m pytest -q',
)


def _blocks(kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for kind, body in FENCE.findall(page.read_text()):
            if kind in kinds:
                found.append((f"{page.relative_to(ROOT)}", body))
    return found


def _command_lines() -> list[tuple[str, str]]:
    """(page, command) for every `toolchain ...` invocation in a bash/console/plain block."""
    lines = []
    for page, body in _blocks(("bash", "console", "")):
        joined = body.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            line = re.sub(r"\s+#.*$", "", line)
            for part in re.split(r"\s*(?:&&|\|)\s*", line):
                match = re.search(r"(?:^|\s)(?:toolchain|-m toolchain\.cli)\s+(.*)$", part)
                if match and not part.startswith(("pip ", "python3 -m venv")):
                    lines.append((page, match.group(1)))
    for page in PAGES:  # inline code in the prose: `toolchain quantize ... --reconstruct pdquant`
        prose = FENCE.sub("", page.read_text())
        for span in re.findall(r"`(?:torchrun [^`]*?-m toolchain\.cli|toolchain) ([^`]+)`", prose):
            lines.append((str(page.relative_to(ROOT)), span.replace("[", " ").replace("]", " ")))
    return lines


def _options(command: click.Command) -> dict[str, click.Parameter]:
    names = {name: param for param in command.params for name in (*param.opts, *param.secondary_opts)}
    help_option = command.get_help_option(click.Context(command))
    return {**names, **{name: help_option for name in (help_option.opts if help_option else ())}}


def check_command(args: str) -> list[str]:
    """What in `toolchain ARGS` the CLI does not know (empty when every name, flag and choice exists)."""
    tokens = shlex.split(args)
    group_options = _options(cli)
    while tokens and tokens[0].startswith("-"):  # group options before the command (--debug, --version)
        if tokens[0].split("=")[0] not in group_options:
            return [f"unknown top-level option {tokens[0]}"]
        tokens = tokens[1:]
    if not tokens or tokens[0] == "..." or tokens[0].isupper():  # `toolchain ...`, `toolchain COMMAND --help`
        return []
    if tokens[0] not in cli.commands:
        return [f"unknown command {tokens[0]!r}"]
    command = cli.commands[tokens[0]]
    options, problems = _options(command), []
    for index, token in enumerate(tokens[1:], 1):
        if not token.startswith("-") or token in ("-", "--") or re.fullmatch(r"-\d.*", token):
            continue
        name = token.split("=")[0]
        if name not in options:
            problems.append(f"{tokens[0]}: unknown option {name}")
            continue
        param = options[name]
        if isinstance(param.type, click.Choice) and not param.is_flag:
            value = token.split("=", 1)[1] if "=" in token else (tokens[index + 1] if index + 1 < len(tokens) else "")
            if value not in param.type.choices and not re.search(r"[|A-Z]", value):  # `a|b` and PLACEHOLDERS
                problems.append(f"{tokens[0]} {name}: {value!r} is not one of {list(param.type.choices)}")
    return problems


def test_readme_is_a_front_page_that_starts_with_the_two_setup_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first_block = FENCE.search(text)
    assert first_block is not None and first_block.group(2).strip().splitlines() == list(SETUP_COMMANDS)


def test_every_command_shown_names_real_commands_flags_and_choices():
    commands = _command_lines()
    assert len(commands) > 80, "the docs lost their command examples (or the extraction broke)"
    problems = [f"{page}: toolchain {args}: {problem}" for page, args in commands for problem in check_command(args)]
    assert problems == []


def test_the_command_check_catches_an_unknown_flag_and_choice():
    """The check above fails on what it exists for: a renamed flag, a choice that is not one, a lost command."""
    assert check_command("quantize m.onnx --calib c.npz --w-bitz 4") == ["quantize: unknown option --w-bitz"]
    assert check_command("quantize m.onnx --reconstruct adaquant") != []
    assert check_command("quantise m.onnx") == ["unknown command 'quantise'"]
    assert check_command("quantize m.onnx --reconstruct pdquant --preset fast -o q.onnx") == []


@pytest.mark.parametrize("page,body", [b for b in _blocks(("yaml",))], ids=lambda v: v if isinstance(v, str) and
                         v.endswith(".md") else "")
def test_every_config_block_is_a_valid_run_config(page, body):
    config = config_from_mapping(yaml.safe_load(body), f"{page} yaml block")
    config.validate()


@pytest.mark.parametrize("page,body", [b for b in _blocks(("python",))], ids=lambda v: v if isinstance(v, str) and
                         v.endswith(".md") else "")
def test_every_python_block_compiles_and_imports_what_exists(page, body):
    tree = ast.parse(body, page)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("toolchain"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"{page}: from {node.module} import {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("toolchain"):
                    importlib.import_module(alias.name)


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
