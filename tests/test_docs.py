"""The README and docs/: every relative link resolves (the file exists; a ``#anchor`` into a markdown file names one
of its headings, GitHub-style), and the README stays a front door: at most 16,000 characters, the answer on IMAE
within its first 40 lines, no commit hashes or CI timings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*|_(?=\W)|(?<=\W)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, broken


def test_the_slugs_are_githubs() -> None:
    assert slug("Does IMAE help?") == "does-imae-help"
    assert slug("The REST API (`vidret serve`)") == "the-rest-api-vidret-serve"
    assert slug("Speed, memory and recall of the parts") == "speed-memory-and-recall-of-the-parts"
    assert slug("From random weights (the earlier benchmark)") == "from-random-weights-the-earlier-benchmark"


def test_the_readme_is_a_front_door() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 16_000, len(text)
    head = text.splitlines()[:40]
    assert any(line.startswith("## Does IMAE help?") for line in head)
    assert any("docs/results.md" in line for line in head)
    assert not re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text)  # commit hashes
    assert not re.findall(r"\d+(\.\d+)? (minutes|min)\b", text)  # timings belong in docs/results.md


def test_the_checker_sees_a_broken_link_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title\n\n## Some part\n\n[x](b.md) [y](#some-part) [z](#nope)\n")
    page = tmp_path / "a.md"
    assert links(page) == ["b.md", "#some-part", "#nope"]
    assert anchors(page) == {"title", "some-part"}
