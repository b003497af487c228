"""The manual stays navigable: README.md is a short front page, every link in it and in docs/
resolves inside the repository, and nothing points at files that are not part of it."""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MARKDOWN = [README, *sorted(DOCS.rglob("*.md"))]
SOURCES = sorted(
    p for d in ("evalharness", "policies", "envs", "benchmarks") for p in (REPO / d).rglob("*.py")
)

#: Strings that point outside the repository: the project's private fact sheets and fixtures, or
#: one machine's checkout. Upstream code is named as repository and path instead.
OUTSIDE = ("shared/facts", "shared/fixtures", "../shared", "/work/")

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
LINE_ANCHOR = re.compile(r"^L(\d+)(?:-L(\d+))?$")


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    lines, in_fence = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, punctuation and symbols
    dropped (letters, digits, marks, `_`, `-` and spaces kept), each space turned into `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|\*|__)", "", text)
    kept = (
        ch
        for ch in text.lower()
        if ch in "-_ " or unicodedata.category(ch)[0] in "LNM" or unicodedata.category(ch) == "Pc"
    )
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every `#anchor` a Markdown file offers: heading slugs (repeats get -1, -2, ...) and
    explicit `<a id=...>` / `<a name=...>` anchors."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose_lines(path):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code.

    Link text may wrap onto the next line, so the prose is searched as one text (fenced code
    blanked out, so line numbers stay right)."""
    kept = dict(prose_lines(path))
    total = len(path.read_text(encoding="utf-8").splitlines())
    text = "\n".join(CODE_SPAN.sub("", kept.get(n, "")) for n in range(1, total + 1))
    found = [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in INLINE_LINK.finditer(text)]
    for number, line in kept.items():
        definition = REFERENCE_DEF.match(line)
        if definition:
            found.append((number, definition.group(1)))
    return found


def link_problem(source: Path, target: str) -> str | None:
    """Why a link from `source` does not resolve inside the repository (None when it does)."""
    if SCHEME.match(target):
        return None  # a web address; not checked offline
    if target.startswith("/"):
        return "absolute path: link relative to the file instead"
    path_part, _, anchor = unquote(target).partition("#")
    resolved = (source.parent / path_part).resolve() if path_part else source
    if not resolved.is_relative_to(REPO):
        return "points outside the repository"
    if not resolved.exists():
        return f"no such file or directory: {resolved.relative_to(REPO)}"
    if not anchor:
        return None
    if resolved.suffix == ".md":
        if anchor not in anchors(resolved):
            return f"no heading with anchor #{anchor} in {resolved.relative_to(REPO)}"
        return None
    lines = LINE_ANCHOR.match(anchor)
    if resolved.is_file() and lines:
        last = int(lines.group(2) or lines.group(1))
        length = len(resolved.read_text(encoding="utf-8").splitlines())
        return None if last <= length else f"line {last} is past the end ({length} lines)"
    return f"#{anchor} on a file that has no headings"


def test_the_github_slug_drops_punctuation_and_keeps_underscores_and_each_space():
    assert github_slug("Octo in JAX (`octo_jax`)") == "octo-in-jax-octo_jax"
    assert github_slug("One run → compare → dashboard") == "one-run--compare--dashboard"
    assert github_slug("**Resume safety.** and [a link](x.md)") == "resume-safety-and-a-link"
    assert github_slug("Speed and scale") == "speed-and-scale"


def test_links_are_found_when_their_text_wraps_and_never_inside_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "See [the\nmanual](docs/README.md#top) and `[not](a.md)`.\n"
        "```\n[nor](b.md)\n```\n"
        "![a figure](img.png)\n"
        "[ref]: c.md\n"
    )
    assert links(page) == [(1, "docs/README.md#top"), (6, "img.png"), (7, "c.md")]


def test_link_checker_reports_missing_files_anchors_and_paths_outside():
    page = REPO / "docs" / "README.md"
    assert link_problem(page, "https://example.org/x") is None
    assert link_problem(page, "../README.md") is None
    assert link_problem(page, "../no-such-page.md") == "no such file or directory: no-such-page.md"
    assert link_problem(page, "../../shared/facts/OCTO.md") == "points outside the repository"
    assert link_problem(page, "/etc/passwd") == "absolute path: link relative to the file instead"
    assert link_problem(page, "#no-such-heading") == (
        "no heading with anchor #no-such-heading in docs/README.md"
    )


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file_and_heading_in_the_repository(page):
    problems = [
        f"{page.relative_to(REPO)}:{number}: ({target}) {problem}"
        for number, target in links(page)
        if (problem := link_problem(page, target)) is not None
    ]
    assert problems == []


def test_the_docs_index_links_every_page_in_docs():
    index = DOCS / "README.md"
    linked = {
        (index.parent / unquote(target).partition("#")[0]).resolve()
        for _, target in links(index)
        if not SCHEME.match(target)
    }
    unlinked = [str(p.relative_to(REPO)) for p in MARKDOWN[1:] if p != index and p not in linked]
    assert unlinked == []


def test_readme_is_a_front_page_that_starts_with_make_demo_and_make_test():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    assert lines[0] == "```bash"
    assert lines[1].startswith("make demo ")
    assert lines[2].startswith("make test ")
    assert lines[3] == "```"


def test_readme_names_the_extras_the_makefile_installs():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    extras = re.findall(r"pip install[^\n]*?(\.\[[a-z,]+\])", makefile)
    assert extras, "the Makefile installs no `.[extras]`"
    readme = README.read_text(encoding="utf-8")
    assert all(extra in readme for extra in extras), extras


@pytest.mark.parametrize("path", MARKDOWN + SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_doc_or_docstring_points_at_files_outside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    found = [
        f"{path.relative_to(REPO)}:{number}: {needle!r}"
        for number, line in enumerate(text.splitlines(), 1)
        for needle in OUTSIDE
        if needle in line
    ]
    assert found == []


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_hold_no_absolute_paths(script):
    """Defaults resolve from the repository (`Path(__file__).parents[...]`), not one machine;
    only the kernel's own /proc and /dev are absolute everywhere."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    # An f-string's later pieces ("/task" in f"/proc/{pid}/task") are not paths of their own.
    pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values[1:]}
    constants = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in pieces
    ]
    absolute = [
        c
        for c in constants
        if (re.match(r"^/[A-Za-z]", c) and not c.startswith(("/proc/", "/dev/")))
        or re.search(r"(?<![\w.])/(?:home|work|Users|mnt|data)/", c)
    ]
    assert absolute == []
