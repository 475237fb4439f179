"""The docs hold together: every relative link in README.md and docs/*.md reaches a file, and a heading there when
it names one (#anchor, by GitHub's slug rule); the README stays a short entry page; every docs page is linked from
the README and links back to it. External links (http, https, mailto) are not fetched: the test runs offline."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 200

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
# [text](target) and ![alt](target), with an optional "title"; the text may not hold brackets.
LINK = re.compile(r"!?\[[^\[\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = ("http://", "https://", "mailto:")


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks: a '#' comment or '[x](y)' in a code block is not Markdown."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if fence is None:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text (link targets and code marks gone), lowercased, every
    character but letters, digits, '_', '-' and spaces dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\[\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor the page's headings produce; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(page: Path) -> list[tuple[int, str]]:
    found = []
    for n, line in prose_lines(page.read_text(encoding="utf-8")):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            found.append((n, m.group(1)))
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One line per link of ``page`` that does not resolve (paths shown relative to ``root``)."""
    problems = []
    for n, target in links(page):
        where = f"{page.relative_to(root)}:{n}: ({target})"
        if not target:
            problems.append(f"{where} empty link")
            continue
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path)).resolve() if path else page
        if not dest.exists():
            problems.append(f"{where} no such file {dest.relative_to(root) if dest.is_relative_to(root) else dest}")
            continue
        if anchor and dest.suffix == ".md" and unquote(anchor) not in anchors(dest):
            problems.append(f"{where} no heading in {dest.relative_to(root)} makes #{anchor}")
    return problems


def test_there_are_pages_to_check():
    assert README.exists() and DOCS, "README.md and docs/*.md are what this test checks"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_readme_stays_short():
    # The README is the entry page; the detail belongs in docs/, by reader.
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (limit {README_MAX_LINES})"


def test_every_docs_page_is_linked_from_the_readme_and_back():
    linked = {(ROOT / unquote(t.partition("#")[0])).resolve() for _, t in links(README) if not t.startswith(EXTERNAL)}
    for page in DOCS:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"
        back = [t for _, t in links(page) if t.partition("#")[0] == "../README.md"]
        assert back, f"{page.relative_to(ROOT)} does not link back to ../README.md"


# The checker itself, on small cases: a broken link must fail, or the tests above prove nothing.
@pytest.mark.parametrize("heading, anchor", [
    ("Checkpoints: resume, change, verify", "checkpoints-resume-change-verify"),
    ("Curation with `ray job submit`", "curation-with-ray-job-submit"),
    ("Multi-node training (torchrun, SLURM)", "multi-node-training-torchrun-slurm"),
    ("What `make demo` leaves", "what-make-demo-leaves"),
    ("The one-GPU check", "the-one-gpu-check"),
    ("memory_bench & co.", "memory_bench--co"),
    ("See [the docs](docs/x.md) now", "see-the-docs-now"),
])
def test_slug(heading, anchor):
    assert slug(heading) == anchor


def test_checker_catches_broken_links(tmp_path):
    (tmp_path / "b.md").write_text("# Part one\n\n## Part one\n\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#part-one) [dup](b.md#part-one-1) [ext](https://example.com/x#y) [self](#top)\n"
        "# Top\n"
        "`[in code](missing.md)`\n"
        "```\n[in a block](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](b.md#part-two) [code heading](b.md#not-a-heading)\n"
    )
    problems = broken_links(page, tmp_path)
    assert [p.split(": ", 1)[1].split(")")[0] for p in problems] == [
        "(missing.md", "(b.md#part-two", "(b.md#not-a-heading"]
