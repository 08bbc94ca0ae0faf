"""The manual runs: every command line in the bash blocks of README.md and docs/*.md
parses with that command's own argparse parser (nothing is executed), and every
flag of every command is in its page's flag table with the parser's default and
the values it accepts; every relative link between the pages resolves.

A renamed, removed or misspelled flag in an example, a flag missing from its
table, a documented default that differs from the parser's, or a link to a moved
page or heading fails here.
"""
from __future__ import annotations

import argparse
import math
import re
import runpy
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from dgf import cli
from dgf.config import TrainConfig, settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: The page whose flag table documents each command (every console script of
#: pyproject.toml, as dgf.cli.parsers() names them).
PAGE_OF = {
    "build-hdf5": "docs/data.md",
    "dgf-make-pairs": "docs/data.md",
    "dgf-train": "docs/training.md",
    "dgf-eval": "docs/evaluation.md",
    "dgf-deblur": "docs/inference.md",
    "dgf-export": "docs/export.md",
    "dgf-info": "docs/export.md",
}
COMMANDS = cli.parsers()
#: Scripts run as ``python SCRIPT ...``; their parsers are checked like the commands'.
SCRIPT_DIRS = ("tools", "benchmarks")
#: Programs the examples may use that are not dgf's: only their presence is allowed.
OTHER_PROGRAMS = {"cd", "export", "pip", "tensorboard", "ls", "cat", "git"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# --- getting a command's parser without running the command -----------------
class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__(parser.prog)
        self.parser = parser


@contextmanager
def _capturing_parsers() -> Iterator[None]:
    """Inside this, the first ``parse_args`` call hands its parser back instead of
    parsing (a script builds its parser and parses at once, then works)."""
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _Captured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _script_parser(path: Path) -> argparse.ArgumentParser:
    """The parser of a tools/ or benchmarks/ script, run as ``__main__`` until it
    parses its arguments (imports only; no work is done)."""
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(path), "--help"]
    sys.path.insert(0, str(path.parent))
    try:
        with _capturing_parsers(), pytest.raises(_Captured, match=".") as caught:
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return caught.value.parser


_PARSERS: dict[str, argparse.ArgumentParser] = {}


def parser_for(program: str) -> argparse.ArgumentParser:
    if program not in _PARSERS:
        _PARSERS[program] = COMMANDS.get(program) or _script_parser(ROOT / program)
    return _PARSERS[program]


class DocLineError(Exception):
    """A documented command line that does not parse."""


def check_args(parser: argparse.ArgumentParser, args: list[str]) -> None:
    """Parse ``args`` with ``parser``, raising DocLineError instead of exiting. The
    manual spells flags in full: an abbreviation the command would accept
    (``--epoch`` for ``--epochs``) is refused here, so a renamed flag cannot hide
    behind the prefix of another."""

    def error(message: str):
        raise DocLineError(f"{parser.prog}: {message}")

    parser.error = error  # type: ignore[method-assign]
    abbrev, parser.allow_abbrev = parser.allow_abbrev, False
    try:
        argparse.ArgumentParser.parse_args(parser, args)
    except SystemExit as exc:  # --help in an example
        if exc.code not in (0, None):
            raise DocLineError(f"{parser.prog}: exit {exc.code}") from None
    finally:
        del parser.error
        parser.allow_abbrev = abbrev


# --- reading command lines out of markdown ----------------------------------
def bash_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, body) of every ```bash / ```sh fenced block."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if re.match(r"^\s*```(bash|sh|shell)\s*$", lines[i]):
            start, body = i + 2, []
            i += 1
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append((start, "\n".join(body)))
        i += 1
    return blocks


def split_commands(block: str) -> list[str]:
    """The simple commands of a shell snippet: joins ``\\`` continuations, drops
    ``#`` comments, and splits at unquoted newlines, ``|``, ``;``, ``&&`` and ``||``.
    Quoted text (a JSON TF_CONFIG over two lines) stays one word."""
    commands, current, quote, i = [], [], None, 0
    at_word_start = True
    while i < len(block):
        ch = block[i]
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"' and i + 1 < len(block):
                current.append(block[i + 1])
                i += 1
        elif ch == "\\" and block[i + 1:i + 2] == "\n":
            current.append(" ")
            i += 1
        elif ch == "\\" and i + 1 < len(block):
            current.append(block[i:i + 2])
            i += 1
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == "#" and at_word_start:
            while i < len(block) and block[i] != "\n":
                i += 1
            continue
        elif ch in "\n;|&":
            commands.append("".join(current))
            current = []
        else:
            current.append(ch)
        at_word_start = ch in " \t\n;|&(" if not quote else False
        i += 1
    if quote:
        raise DocLineError(f"unclosed {quote} in {block!r}")
    commands.append("".join(current))
    return [c.strip() for c in commands if c.strip()]


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def check_command(command: str) -> str:
    """Check one simple command; returns what it was checked as. DocLineError when
    it does not parse or names a program the project does not have."""
    words = shlex.split(command)
    # Redirections (> FILE, 2> FILE, < FILE) are the shell's, not the program's.
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif re.fullmatch(r"\d?(>>?|<)", word):
            skip = True
        elif not re.match(r"\d?(>>?|<)\S", word):
            kept.append(word)
    words = kept
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)  # VAR=value prefixes
    if not words:
        return "assignment"
    program = Path(words[0]).name if words[0].startswith((".venv/", "./.venv/")) else words[0]
    args = words[1:]
    if program == "make":
        unknown = [t for t in args if not t.startswith("-") and t not in make_targets()]
        if unknown or not args:
            raise DocLineError(f"make: no target {' '.join(unknown) or '(none given)'} "
                               f"in the Makefile")
        return "make " + " ".join(args)
    if program in ("python", "python3") and args and args[0] == "-m":
        if args[1:2] == ["pytest"]:
            return "pytest"
        if args[1:2] == ["venv"]:
            return "venv"
        raise DocLineError(f"python -m {' '.join(args[1:2])}: not a module the docs run")
    if program in ("python", "python3") and args:
        script = args[0]
        if not any(script.startswith(d + "/") for d in SCRIPT_DIRS) or not (ROOT / script).is_file():
            raise DocLineError(f"python {script}: no such script under "
                               f"{' or '.join(SCRIPT_DIRS)}/")
        check_args(parser_for(script), args[1:])
        return script
    if program.endswith(".sh"):
        if not any(program.startswith(d + "/") for d in SCRIPT_DIRS) \
                or not (ROOT / program).is_file():
            raise DocLineError(f"{program}: no such script under {' or '.join(SCRIPT_DIRS)}/")
        return program
    if program in COMMANDS:
        check_args(parser_for(program), args)
        return program
    if program == "pytest":
        return "pytest"
    if program in OTHER_PROGRAMS:
        return program
    raise DocLineError(f"{program}: not a dgf command, script or make target")


def documented_commands() -> list[tuple[str, int, str]]:
    """(page, line, command) for every simple command in every bash block."""
    found = []
    for page in PAGES:
        for line, block in bash_blocks(page.read_text(encoding="utf-8")):
            for command in split_commands(block):
                found.append((str(page.relative_to(ROOT)), line, command))
    return found


# --- the tests: command lines -----------------------------------------------
def test_the_reader_splits_continuations_comments_env_and_pipes():
    block = (
        "# a comment line\n"
        "TF_CPP_MIN_LOG_LEVEL=0 dgf-train --h5 data/x.h5 \\\n"
        "    --epochs 3   # trailing comment\n"
        "export TF_CONFIG='{\"cluster\": {\"worker\": [\"a:1\"]},\n"
        "                   \"task\": {\"index\": 0}}'\n"
        "dgf-info m.keras --json | head -n 3 && make test\n"
    )
    assert split_commands(block) == [
        "TF_CPP_MIN_LOG_LEVEL=0 dgf-train --h5 data/x.h5      --epochs 3",
        "export TF_CONFIG='{\"cluster\": {\"worker\": [\"a:1\"]},\n"
        "                   \"task\": {\"index\": 0}}'",
        "dgf-info m.keras --json",
        "head -n 3",
        "make test",
    ]
    md = "text\n```bash\nmake demo\n```\n```python\nx = 1\n```\n"
    assert bash_blocks(md) == [(3, "make demo")]


@pytest.mark.parametrize("line, expected", [
    ("dgf-train --h5 data/x.h5 --epochs 3", "dgf-train"),
    ("TF_CPP_MIN_LOG_LEVEL=0 dgf-eval --run runs/a --crop-border 8", "dgf-eval"),
    (".venv/bin/dgf-info m.keras --size 720 1280", "dgf-info"),
    ("dgf-info m.keras --json > info.json", "dgf-info"),
    ("make test-fast", "make test-fast"),
    ("python tools/build_hdf5.py pairs/ -o data/p.h5", "tools/build_hdf5.py"),
])
def test_good_lines_parse(line, expected):
    assert check_command(line) == expected


@pytest.mark.parametrize("line, message", [
    ("dgf-train --h5 data/x.h5 --epoch 3", "unrecognized arguments: --epoch 3"),
    ("dgf-eval --run runs/a --protocol matlab", "invalid choice: 'matlab'"),
    ("dgf-deblur photo.jpg", "the following arguments are required: -o/--out"),
    ("dgf-info m.keras --size 720", "expected 2 arguments"),
    ("dgf-trian --h5 x.h5", "dgf-trian: not a dgf command"),
    ("make tests", "make: no target tests"),
    ("python tools/no_such.py", "no such script"),
    ("build-hdf5 in/ --compression zip", "invalid choice: 'zip'"),
])
def test_a_bad_line_fails(line, message):
    with pytest.raises(DocLineError, match=re.escape(message)):
        check_command(line)


def test_a_bad_line_in_a_page_is_found(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("```bash\ndgf-train --h5 x.h5 \\\n  --l2-weight 3\n```\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PAGES", [page])
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    [(name, line, command)] = documented_commands()
    assert (name, line) == ("page.md", 2)
    with pytest.raises(DocLineError, match="unrecognized arguments: --l2-weight 3"):
        check_command(command)


def test_every_documented_command_line_parses():
    commands = documented_commands()
    programs, failures = set(), []
    for page, line, command in commands:
        try:
            programs.add(check_command(command))
        except DocLineError as exc:
            failures.append(f"{page}:{line}: {command!r}: {exc}")
    assert not failures, "\n".join(failures)
    # The manual shows every command at least once.
    assert set(COMMANDS) <= programs, set(COMMANDS) - programs


def test_ci_runs_the_test_command_the_readme_gives():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = bash_blocks(readme)[0][1]
    assert split_commands(first_block) == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    steps = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert steps[-1] == "make test"
    assert {"demo", "test"} <= make_targets()


# --- the tests: flag tables -------------------------------------------------
def flag_tables(text: str) -> dict[str, list[list[str]]]:
    """{program: rows} of every table whose header is ``| `PROGRAM` flag | default |
    ...``; each row is its cells."""
    tables: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        header = re.fullmatch(r"`([\w-]+)` flag", cells[0])
        if header and len(cells) >= 2 and cells[1] == "default":
            current = tables.setdefault(header.group(1), [])
        elif current is not None and not set(cells[0]) <= set("-: "):
            current.append(cells)
    return tables


def row_options(cell: str) -> list[str]:
    """The option strings a row's first cell names: each backticked word that starts
    with a dash (``-o``, ``--size N`` -> ``--size``, ``--residual on/off``)."""
    return [code.split()[0] for code in re.findall(r"`([^`]+)`", cell)
            if code.startswith("-")]


def true_default(program: str, action: argparse.Action) -> object:
    """What a flag is when not given. dgf-train's flags leave their key unset
    (argparse.SUPPRESS) so that a --config file can set it: TrainConfig holds it."""
    if action.default is argparse.SUPPRESS and program == "dgf-train":
        if action.dest in settings():
            return settings()[action.dest].default
    return action.default


def choices_of(program: str, action: argparse.Action) -> tuple | None:
    """The values a flag accepts: argparse's choices, or for dgf-train the field's
    (TrainConfig checks them, so its flags carry none)."""
    if action.choices:
        return tuple(action.choices)
    if program == "dgf-train" and action.dest in settings():
        return settings()[action.dest].choices
    return None


def default_matches(documented: str, action: argparse.Action, default: object) -> bool:
    """Does the table's default cell say what the parser does when the flag is
    omitted? A required option reads ``(required)``; one without a value to name
    (None, or computed at run time) a parenthesised description; on/off flags and
    booleans ``on``/``off``; numbers compare as numbers; lists are space-joined."""
    text = documented.replace("`", "").strip()
    if action.required:
        return text == "(required)"
    if default is None or default is argparse.SUPPRESS:
        return text.startswith("(") and text.endswith(")") and text != "(required)"
    if isinstance(default, bool):
        return text == ("on" if default else "off")
    if isinstance(default, (int, float)):
        try:
            return math.isclose(float(text), float(default), rel_tol=1e-12)
        except ValueError:
            return False
    if isinstance(default, (list, tuple)):
        return text == " ".join(str(v) for v in default)
    return text == str(default)


def table_problems(program: str, parser: argparse.ArgumentParser,
                   rows: list[list[str]]) -> list[str]:
    """What is wrong with ``program``'s flag table: flags of the parser without a row,
    rows naming no flag or a flag the parser lacks, and defaults the parser does not
    have."""
    actions = {o: a for a in parser._actions for o in a.option_strings}
    problems, seen = [], set()
    for cells in rows:
        options = row_options(cells[0])
        unknown = [o for o in options if o not in actions]
        if not options or unknown:
            problems.append(f"{program}: row {cells[0]!r} names no flag of the parser "
                            f"({', '.join(unknown) or 'no -flag in backticks'})")
            continue
        found = {id(actions[o]) for o in options}
        if len(found) != 1:
            problems.append(f"{program}: row {cells[0]!r} names several flags; one a row")
            continue
        action = actions[options[0]]
        seen.add(id(action))
        default = true_default(program, action)
        if not default_matches(cells[1], action, default):
            shown = "(required)" if action.required else repr(default)
            problems.append(f"{program} {options[0]}: documented default {cells[1]!r}, "
                            f"the parser's is {shown}")
        named = set(re.findall(r"`([^`]+)`", " ".join(cells[2:]))) | {cells[1]}
        undocumented = [str(c) for c in choices_of(program, action) or ()
                        if str(c) not in named]
        if undocumented:
            problems.append(f"{program} {options[0]}: choices {', '.join(undocumented)} "
                            f"are not in its row")
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        if id(action) not in seen:
            problems.append(f"{program}: {'/'.join(action.option_strings)} is missing "
                            f"from its flag table")
    return problems


def test_the_table_check_finds_missing_flags_wrong_defaults_and_unknown_rows():
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("-o", "--out", required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--size", nargs=2, type=int, default=[256, 256])
    parser.add_argument("--loss", choices=("l1", "l2"), default="l1")
    text = (
        "| `tool` flag | default | meaning |\n|---|---|---|\n"
        "| `--epochs N` | 10 | epochs |\n| `--lr` | 3e-4 | rate |\n"
        "| `--jit` | off | XLA |\n| `-o`, `--out` | (required) | folder |\n"
        "| `--model` | (the bundled one) | file |\n| `--size H W` | 256 256 | size |\n"
        "| `--loss` | l1 | or `l2` |\n"
    )
    rows = flag_tables(text)["tool"]
    assert table_problems("tool", parser, rows) == []
    broken = (text.replace("| 10 |", "| 12 |").replace("| `--jit` | off", "| `--jit` | on")
              .replace("| `--model` | (the bundled one)", "| `--model` | bundled")
              .replace("| `--lr` |", "| `--learning-rate` |").replace("or `l2`", "or L2"))
    problems = table_problems("tool", parser, flag_tables(broken)["tool"])
    assert problems == [
        "tool --epochs: documented default '12', the parser's is 10",
        "tool: row '`--learning-rate`' names no flag of the parser (--learning-rate)",
        "tool --jit: documented default 'on', the parser's is False",
        "tool --model: documented default 'bundled', the parser's is None",
        "tool --loss: choices l2 are not in its row",
        "tool: --lr is missing from its flag table",
    ]


def test_train_defaults_come_from_train_config():
    parser = parser_for("dgf-train")
    [epochs] = [a for a in parser._actions if "--epochs" in a.option_strings]
    assert true_default("dgf-train", epochs) == TrainConfig().epochs
    assert not default_matches(str(TrainConfig().epochs + 1), epochs,
                               true_default("dgf-train", epochs))


@pytest.mark.parametrize("program", sorted(COMMANDS))
def test_every_flag_is_in_its_page_table_with_the_parsers_default(program):
    page = PAGE_OF[program]
    tables = flag_tables((ROOT / page).read_text(encoding="utf-8"))
    assert program in tables, f"{page} has no `{program}` flag table"
    problems = table_problems(program, parser_for(program), tables[program])
    assert not problems, "\n".join(problems)


def test_every_command_has_a_page():
    assert set(PAGE_OF) == set(COMMANDS)


def test_each_command_has_one_flag_table_in_the_manual():
    owners = {}
    for page in PAGES:
        for program in flag_tables(page.read_text(encoding="utf-8")):
            owners.setdefault(program, []).append(str(page.relative_to(ROOT)))
    assert owners == {p: [page] for p, page in PAGE_OF.items()}


# --- the tests: links between the pages -------------------------------------
def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a page: lower case, punctuation other
    than ``-`` and ``_`` dropped, spaces turned into ``-``."""
    anchors = set()
    for line in _outside_code(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def _outside_code(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def broken_links(page: Path) -> list[str]:
    """Relative links and images of ``page`` whose file, or heading, does not exist."""
    problems = []
    for line in _outside_code(page.read_text(encoding="utf-8")):
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{page.name}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(
                    file.read_text(encoding="utf-8")):
                problems.append(f"{page.name}: {target}: no heading #{anchor}")
    return problems


def test_the_link_check_finds_missing_files_and_headings(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n## Full-size photos: `--scale`\n",
                                       encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "See [it](other.md#full-size-photos---scale), [top](#a-page) and "
        "[gone](missing.md), [bad](other.md#nowhere), ![pic](pic.png).\n"
        "# A page\n```bash\n# [not a link](nothing.md)\n```\n", encoding="utf-8")
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#nowhere: no heading #nowhere",
        "page.md: pic.png: no such file",
    ]


def test_every_link_of_the_manual_resolves():
    pages = [*PAGES, ROOT / "CHANGELOG.md"]
    problems = [p for page in pages for p in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_the_readme_stays_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"
    linked = set(re.findall(r"\]\((docs/[\w.]+\.md)\)", "\n".join(lines)))
    pages = {str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"README.md does not link {sorted(pages - linked)}"
