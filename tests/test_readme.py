"""The README's Python examples run as written; the names, commands and tables of the README and
of docs/ are real."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {"__name__": "readme"})


def _resolve(dotted: str):
    """Import the longest importable module prefix of ``dotted``, then getattr the rest."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            value = getattr(value, name)
        return value
    raise ImportError(dotted)


DOCS = [README, *sorted(README.parent.glob("docs/*.md"))]
TEXT = "\n".join(path.read_text() for path in DOCS)
DOTTED = sorted(set(re.findall(r"`(patronus(?:\.[A-Za-z_]\w*)+)`", TEXT)))


def test_readme_names_dotted_api():
    assert "patronus.eval.frechet_distance" in DOTTED and "patronus.ops.scheduler_step" in DOTTED


@pytest.mark.parametrize("dotted", DOTTED)
def test_every_name_the_readme_shows_is_importable_where_it_says(dotted):
    value = _resolve(dotted)
    if dotted.endswith(("_distance", "_step", "linear_probes", "tad", "diagnose")):
        assert callable(value), f"{dotted} is {type(value).__name__}, not the function it names"


def _command_lines() -> list[str]:
    """Every `patronus ...` command the README and docs/ show, in code blocks or inline code."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", TEXT, flags=re.DOTALL):
        lines += [line for line in block.splitlines() if line.startswith("patronus ")]
    lines += re.findall(r"`(patronus [a-z-]+ [^`]*)`", TEXT)
    return lines


def _options(parser, words: list[str]) -> set[str]:
    """The option strings of the (sub)command named by the first words."""
    for word in words:
        subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subparsers or word not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[word]
    return set(parser._option_string_actions)


@pytest.mark.parametrize("line", _command_lines())
def test_every_flag_the_readme_shows_exists(line):
    from patronus.cli import build_parser

    words = line.split("#")[0].split()[1:]
    known = _options(build_parser(), words)
    flags = [w.split("=")[0] for w in words if w.startswith("--")]
    assert flags == [f for f in flags if f in known], f"{line}: unknown {set(flags) - known}"


MARKDOWN = sorted(README.parent.glob("*.md")) + sorted(
    [
        *README.parent.glob("docs/*.md"),
        *README.parent.glob("assets/*/*.md"),
        *README.parent.glob("benchmarks/results/*.md"),
    ]
)


def _cells(row: str) -> int:
    """The number of cells of a Markdown table row (pipes inside `code` or escaped do not count)."""
    unquoted = re.sub(r"`[^`]*`", "", row.replace("\\|", ""))
    return unquoted.strip().strip("|").count("|") + 1


def _table_errors(text: str) -> list[str]:
    """Rows that would not render as part of a table: a block of `|` lines must open with a header
    and a |---| separator, and every row must have the header's number of cells."""
    errors, block = [], []
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        if line.startswith("|"):
            block.append((number, line))
            continue
        if block:
            (first, header), *rows = block
            if not rows or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rows[0][1].strip()):
                errors.append(f"line {first}: table rows without a header and |---| line")
            errors += [
                f"line {n}: {_cells(row)} cells, the header has {_cells(header)}"
                for n, row in rows
                if _cells(row) != _cells(header)
            ]
        block = []
    return errors


def test_table_check_finds_a_row_cut_off_from_its_table():
    table = "| a | b |\n|---|---|\n| 1 | `x|y` |\n"
    assert _table_errors(table) == []
    assert _table_errors(table + "\nA paragraph.\n| 2 | 3 |\n") == [
        "line 6: table rows without a header and |---| line"
    ]
    assert _table_errors(table + "| 1 | 2 | 3 |\n") == ["line 4: 3 cells, the header has 2"]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(README.parent)))
def test_markdown_tables_render_whole(path):
    assert _table_errors(path.read_text()) == []


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _broken_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file, or heading anchor, does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            prose = re.sub(r"^```.*?^```", "", linked.read_text(), flags=re.DOTALL | re.MULTILINE)
            headings = re.findall(r"^#+ (.*)$", prose, flags=re.MULTILINE)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(target)
    return broken


def test_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A title: here\n[a](#a-title-here) [b](page.md#nope) [c](gone.md) [d](https://x.org)\n"
        "[e](#a-comment)\n```bash\n# a comment\n```\n"
    )
    assert _broken_links(page) == ["page.md#nope", "gone.md", "#a-comment"]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(README.parent)))
def test_markdown_links_lead_somewhere(path):
    assert _broken_links(path) == []
