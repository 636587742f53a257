"""The documentation resolves inside the repository.

Every relative link and image in README.md and docs/*.md names a file of the
repository (and, with ``#anchor``, a heading of that page); every repository path
quoted in backticks exists; every ``docs/method.md#<section>`` the code cites is a
heading of docs/method.md; and nothing points outside the repository (the method's
old external references are gone).
"""

import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
TREES = ["uctrl_jax", "configs", "tests", "benchmarks", "experiments", "scripts", "docs", ".ci"]
FILES = ["main.py", "README.md", "pyproject.toml", "CITATION.cff"]

_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_QUOTED_PATH = re.compile(
  r"`((?:uctrl_jax|configs|tests|benchmarks|experiments|docs|scripts)/[\w./-]*|main\.py"
  r"|pyproject\.toml|LICENSE|CITATION\.cff)`"
)
_METHOD_ANCHOR = re.compile(r"docs/method\.md#([\w-]+)")


def slug(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set:
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
  return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _source_files():
  for tree in TREES:
    for path in sorted((REPO / tree).rglob("*")):
      if (
        path.is_file()
        and path.suffix in (".py", ".md", ".sh", "")
        and "__pycache__" not in path.parts
      ):
        yield path
  yield from (REPO / f for f in FILES)


def test_slug_matches_github():
  assert slug("Results at a glance") == "results-at-a-glance"
  assert slug("Closed forms the code uses") == "closed-forms-the-code-uses"
  assert (
    slug("The default run (2026-11-29, 2 CPU cores)") == "the-default-run-2026-11-29-2-cpu-cores"
  )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
  bad = []
  for target in _LINK.findall(text):
    if re.match(r"[a-z]+:", target):  # http(s), mailto: outside by design
      continue
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    if not resolved.exists() or REPO not in resolved.parents and resolved != REPO:
      bad.append(target)
    elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
      bad.append(f"{target} (no such heading)")
  for quoted in _QUOTED_PATH.findall(text):
    if "*" not in quoted and not (REPO / quoted).exists():
      bad.append(f"`{quoted}`")
  assert not bad, f"{page.name}: {bad}"


def test_readme_is_a_guide():
  text = (REPO / "README.md").read_text()
  assert len(text.splitlines()) <= 220
  first_screen = "\n".join(text.splitlines()[:60])
  assert "## Two commands" in first_screen and "## Results at a glance" in first_screen
  ci = (REPO / ".ci" / "run").read_text()
  test_command = re.search(r"^bash scripts/setup\.sh && .*pytest.*$", text, re.M).group(0)
  assert test_command in ci


def test_code_cites_existing_sections_of_the_method():
  known = anchors(REPO / "docs" / "method.md")
  bad = [
    f"{p.relative_to(REPO)}: #{a}"
    for p in _source_files()
    for a in _METHOD_ANCHOR.findall(p.read_text(errors="replace"))
    if a not in known
  ]
  assert not bad, bad


def test_nothing_points_outside_the_repository():
  patterns = [
    "SPEC " + "§",
    "../" + "shared",
    "shared/" + "SPEC",
    "shared/" + "CALIBRATION",
    "shared/" + "ENVIRONMENT",
  ]
  bad = [
    f"{p.relative_to(REPO)}: {pattern}"
    for p in _source_files()
    for pattern in patterns
    if pattern in p.read_text(errors="replace")
  ]
  assert not bad, bad
