"""The docs resolve: every reference to docs/method.md in code and tests names one of its sections, every .md file
named in code exists, and every relative link in README.md and docs/*.md points to a file (and heading) in the repo."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD = REPO / "docs" / "method.md"
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".cfg", ".ipynb")
SKIPPED_DIRS = {"__pycache__", "runs", "mlruns", "lightning_logs"}
"""Outputs of runs, never sources (hidden directories such as .git, .venv and .cache are skipped too)."""

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_NAME = re.compile(r"(?<![\w./-])([\w./-]*[\w-]\.md)\b")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _repo_files(suffixes: tuple[str, ...]) -> list[Path]:
    """Files of the repo with one of `suffixes`, outside hidden and run-output directories; not this file."""
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        found += [Path(root) / f for f in files if f.endswith(suffixes)]
    return sorted(path for path in found if path != Path(__file__).resolve())


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of a Markdown file outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, re.sub(r"`[^`]*`", "", line)))
    return lines


def headings(path: Path) -> list[str]:
    """The heading texts of a Markdown file, in order."""
    return [m.group(2) for _, line in _prose_lines(path) if (m := _HEADING.match(line))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(path):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result


def _where(path: Path, text: str, position: int) -> str:
    return f"{path.relative_to(REPO)}:{text.count(chr(10), 0, position) + 1}"


def test_method_sections_are_unique() -> None:
    names = headings(METHOD)
    repeated = sorted({name for name in names if names.count(name) > 1})
    assert not repeated, f"{METHOD.relative_to(REPO)}: headings {repeated} repeat; a reference by name must name one"


def test_method_references_name_an_existing_section() -> None:
    sections = sorted(headings(METHOD), key=len, reverse=True)  # longest first: "Hint" must not shadow a longer one
    found, problems = 0, []
    for path in _repo_files(CODE_SUFFIXES):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"method\.md", text):
            found += 1
            start, end = match.start(), match.end()
            rest = text[end:]
            section = next(
                (s for s in sections if rest.startswith(f", {s}") and not re.match(r"[\w-]", rest[len(s) + 2 :])),
                None,
            )
            if text[max(start - 5, 0) : start] != "docs/" or section is None:
                problems.append(f"{_where(path, text, start)}: {text[max(start - 5, 0) : end + 30]!r}")
    assert found, "no reference to docs/method.md found in the code: is the repo walk broken?"
    assert not problems, (
        "references to method.md must read 'docs/method.md, <section heading>' with a heading of docs/method.md "
        f"(one of {sorted(sections)}):\n" + "\n".join(problems)
    )


def test_markdown_files_named_in_code_exist() -> None:
    """A bare name (README.md) is a file at the repo root, docs/NAME.md a file in docs/; longer paths are citations
    of other repositories' files and are not checked."""
    problems = []
    for path in _repo_files(CODE_SUFFIXES):
        text = path.read_text(encoding="utf-8")
        for match in _MD_NAME.finditer(text):
            name = match.group(1)
            if name.count("/") > 1 or ("/" in name and not name.startswith("docs/")):
                continue
            if not (REPO / name).is_file():
                problems.append(f"{_where(path, text, match.start())}: {name} is not a file of the repo")
    assert not problems, "\n".join(problems)


def test_relative_links_in_docs_resolve() -> None:
    documents = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    checked, problems = 0, []
    for document in documents:
        for number, line in _prose_lines(document):
            for match in _LINK.finditer(line):
                target = match.group(1)
                if _SCHEME.match(target):
                    continue
                checked += 1
                where = f"{document.relative_to(REPO)}:{number}: {target}"
                path_part, _, fragment = target.partition("#")
                linked = (document.parent / path_part).resolve() if path_part else document
                if not linked.is_relative_to(REPO) or not linked.exists():
                    problems.append(f"{where}: no such file in the repo")
                elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
                    problems.append(f"{where}: no heading with anchor #{fragment} in {linked.relative_to(REPO)}")
    assert checked, "no relative link found in README.md and docs/: is the link pattern broken?"
    assert not problems, "\n".join(problems)
