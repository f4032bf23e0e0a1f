"""The documentation holds together: every relative link in README.md and docs/*.md
reaches a file (and its #anchor a heading there), no page in docs/ speaks of the
project's earlier releases by number, and every python example marked
``<!-- runnable -->`` runs as written."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import pytest


def _root() -> Path:
    # Found by walking up, so the test keeps working if tests/ is split into folders.
    here = Path(__file__).resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file():
            return candidate
    raise RuntimeError("no pyproject.toml above tests/")


ROOT = _root()
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINKED = [ROOT / "README.md", *PAGES]

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# "v1 " as a word: OTLP's `/v1/metrics` path and Bedrock's `-v1:0` ids are not it.
_VERSION_WORDS = re.compile(r"\b(version\s+[12]\b|v[12](?=\s|$))", re.IGNORECASE)
_RUNNABLE = "<!-- runnable -->"


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation other
    than '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.replace("`", "").strip().lower()
    kept = "".join(ch for ch in text
                   if ch in " -_" or unicodedata.category(ch)[0] in ("L", "N"))
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def _is_external(target: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems: list[str] = []
    for number, target in links(path):
        if _is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not destination.exists():
            problems.append(f"{where}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{where}: no heading #{anchor} in {destination.name}")
    return problems


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """The ```python blocks right after a `<!-- runnable -->` line (blank lines between
    are allowed)."""
    blocks: list[tuple[int, str]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    marked = False
    index = 0
    while index < len(lines):
        line = lines[index].strip()
        if line == _RUNNABLE:
            marked = True
        elif line.startswith("```"):
            body: list[str] = []
            start = index + 1
            index += 1
            while index < len(lines) and not lines[index].strip().startswith("```"):
                body.append(lines[index])
                index += 1
            if marked:
                if line != "```python":
                    raise AssertionError(f"{path.name}:{start}: a runnable block must be "
                                         f"```python, got {line!r}")
                blocks.append((start, "\n".join(body) + "\n"))
            marked = False
        elif line:
            marked = False
        index += 1
    return blocks


RUNNABLE = [(page, start, code) for page in PAGES for start, code in runnable_blocks(page)]


def test_the_docs_exist() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "configuration.md", "budgets.md", "stores.md", "deployment.md",
            "observability.md", "pricing.md", "fleet-caps.md", "guarantees.md"} <= names


def test_every_relative_link_reaches_a_file_and_heading() -> None:
    problems = [problem for path in LINKED for problem in broken_links(path)]
    assert problems == []


def test_the_link_checker_catches_a_broken_link_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `spool`, kept\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#the-spool-kept) [gone](missing.md) "
                    "[bad](other.md#nowhere) `[code](skipped.md)` [web](https://example.com)\n"
                    "```\n[fenced](also-skipped.md)\n```\n")
    problems = broken_links(page, root=tmp_path)
    assert problems == ["page.md:1: missing.md: no such file",
                        "page.md:1: other.md#nowhere: no heading #nowhere in other.md"]


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_no_page_names_earlier_releases(page: Path) -> None:
    hits = [f"{page.name}:{number}: {line.strip()}"
            for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
            if _VERSION_WORDS.search(line)]
    assert hits == []


def test_the_release_word_check_matches_whole_words_only() -> None:
    assert _VERSION_WORDS.search("as in Version 1: the old name")
    assert _VERSION_WORDS.search("the V2 rows")
    assert _VERSION_WORDS.search("upgrade from v1")
    assert not _VERSION_WORDS.search("OTLP/HTTP posts to …/v1/metrics")
    assert not _VERSION_WORDS.search("us.anthropic.claude-sonnet-4-20250514-v1:0")
    assert not _VERSION_WORDS.search("version 10 and v12")


def test_only_marked_python_blocks_are_run(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- runnable -->\n\n```python\nx = 1\n```\n\n"
                    "```python\nnot run\n```\n<!-- runnable -->\ntext\n```python\nnor this\n```\n")
    assert runnable_blocks(page) == [(3, "x = 1\n")]  # the fence's line
    page.write_text("<!-- runnable -->\n```sh\nls\n```\n")
    with pytest.raises(AssertionError, match="must be ```python"):
        runnable_blocks(page)


def test_enough_examples_are_marked_runnable() -> None:
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("page,start,code", RUNNABLE,
                         ids=[f"{page.name}:{start}" for page, start, _ in RUNNABLE])
def test_runnable_example_runs(page: Path, start: int, code: str, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh directory and cache: the examples' SQLite files and spools land there.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in list(os.environ):
        if name.startswith(("OTEL_BUDGET_", "OTEL_EXPORTER_", "OTEL_METRICS_")):
            monkeypatch.delenv(name)
    namespace: dict[str, object] = {"__name__": f"docs_example_{page.stem}_{start}"}
    # exec: the examples are our own documentation, run as a reader would paste them.
    exec(compile(code, f"{page}:{start}", "exec"), namespace)


# --- docs/architecture.md: the module map is the package's -------------------------------


def _package_modules(package: Path) -> set[str]:
    names = set()
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] in ("__init__", "__main__") or parts[-1].startswith("_"):
            parts = parts[:-1]
        if parts:
            names.add(".".join(parts))
    return names


def _mapped_modules(text: str) -> set[str]:
    """The modules the map's tables name: backticked names in a row's first cell."""
    names = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_][a-z_.*]*)`", line.split("|")[1]))
    return names


def _unmapped(modules: set[str], mapped: set[str]) -> set[str]:
    def covered(module: str) -> bool:
        parts = module.split(".")
        return any(".".join(parts[:i]) in mapped or ".".join(parts[:i]) + ".*" in mapped
                   for i in range(1, len(parts) + 1))
    return {m for m in modules if not covered(m)}


def test_the_architecture_map_names_every_module_and_only_real_ones() -> None:
    modules = _package_modules(ROOT / "otel_budget")
    mapped = _mapped_modules((DOCS / "architecture.md").read_text())
    assert _unmapped(modules, mapped) == set(), "modules missing from docs/architecture.md"
    real = modules | {m.removesuffix(".*") for m in mapped if m.endswith(".*")}
    assert {m for m in mapped if m.removesuffix(".*") not in real} == set(), "no such module"


def test_the_architecture_map_check_finds_a_missing_module() -> None:
    mapped = _mapped_modules("| `meter` | the facade |\n| `cli.*` | commands |\n")
    assert _unmapped({"meter", "cli.demo", "tracker"}, mapped) == {"tracker"}
