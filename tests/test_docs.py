"""Every document the repository cites exists in the repository, and every `docs/method.md §N` names a real section.

Scanned: every code, YAML, shell, TOML and markdown file the repository holds (git's tracked and not-ignored files;
without git, a walk that skips hidden and output folders). What counts as a citation:
- a `docs/<name>.md` path (relative to the repository root), `README.md`, and any upper-case markdown name such as
  `METHOD.md` or `shared/spec/METRICS.md` (root-relative or next to the citing file): these must be files here;
- a relative link `[text](target)` in a markdown file (relative to that file; `#anchor`s into markdown files are
  checked against the target's headings);
- `docs/<name>.md §N` (also `§N, §M and §K.L`, `§4/§5`): the cited document needs a heading starting with `§N`.
docs/metrics.md is checked against tests/test_metrics.py: the same case ids, the same values.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from fractions import Fraction
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".ini"}
WALK_SKIP = {"__pycache__", "demo_out", "out", "runs", "tmp", "outputs", "node_modules"}

DOCS_PATH = re.compile(r"(?<![\w./-])(docs/[\w./-]+?\.md)(?![\w-])")
README = re.compile(r"(?<![\w./-])(README\.md)(?![\w-])")
UPPER_MD = re.compile(r"(?<![\w.-])((?:[\w.-]+/)*[A-Z][A-Z0-9_-]*\.md)(?![\w-])")
LINK = re.compile(r"\[[^\]\n]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
SECTION_CITE = re.compile(r"(docs/[\w./-]+?\.md)((?:\s*(?:,|and|or|/)?\s*§\s*\d+(?:\.\d+)*)+)")
SECTION_NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")

# The meaning of each `docs/method.md §N` the code cites: renumbering the page would silently change them.
METHOD_SECTIONS = {
    1: "Pipeline",
    2: "Data formats",
    3: "Data sampling",
    4: "Frame sampling and keyframe",
    5: "Prompt and answer",
    6: "CoT generation request",
    7: "Reward",
    8: "GRPO hyper-parameters",
    9: "Evaluation protocol",
}


@lru_cache(maxsize=1)
def repo_files() -> tuple[str, ...]:
    """Repository-relative POSIX paths of every file the repository holds."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout.decode()
        files = [f for f in out.split("\0") if f and (REPO / f).is_file()]
        if files:
            return tuple(sorted(files))
    except (OSError, subprocess.SubprocessError):
        pass
    files = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if any((p.startswith(".") and p != ".ci") or p in WALK_SKIP or p.endswith(".egg-info") for p in rel.parts):
            continue
        if path.is_file():
            files.append(rel.as_posix())
    return tuple(sorted(files))


@lru_cache(maxsize=1)
def repo_file_set() -> frozenset[str]:
    return frozenset(repo_files())


@lru_cache(maxsize=1)
def repo_dirs() -> frozenset[str]:
    dirs = {""}
    for f in repo_files():
        parts = PurePosixPath(f).parts
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(dirs)


def text_files() -> list[str]:
    out = []
    for f in repo_files():
        p = PurePosixPath(f)
        if p.suffix in TEXT_SUFFIXES or p.name == "Makefile":
            out.append(f)
        elif not p.suffix:
            with open(REPO / f, "rb") as fh:
                if fh.read(2) == b"#!":
                    out.append(f)
    return out


def read(rel: str) -> str | None:
    try:
        return (REPO / rel).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def normalize(path: str) -> str | None:
    """A repository-relative path with `.` and `..` resolved; None when it leaves the repository."""
    parts: list[str] = []
    for p in PurePosixPath(path).parts:
        if p in ("", ".", "/"):
            continue
        if p == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


def exists(rel: str | None, *, directory_ok: bool = False) -> bool:
    """Case-sensitive existence in the repository (a case-insensitive disk must not hide `METHOD.md`)."""
    if rel is None:
        return False
    return rel in repo_file_set() or (directory_ok and rel in repo_dirs())


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(rel: str) -> list[str]:
    text = read(rel) or ""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            out.append(m.group(2))
    return out


def anchors(rel: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in headings(rel):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def section_numbers(rel: str) -> set[str]:
    """The `§N` / `§N.M` that start a heading of a markdown file."""
    out = set()
    for h in headings(rel):
        m = re.match(r"§\s*(\d+(?:\.\d+)*)\b", h)
        if m:
            out.add(m.group(1))
    return out


def unfenced_lines(text: str):
    fenced = False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield i, line


SELF = "tests/test_docs.py"  # its examples of broken citations are on purpose


def broken_citations() -> list[str]:
    problems = []
    for rel in text_files():
        if rel == SELF:
            continue
        text = read(rel)
        if text is None:
            continue
        here = PurePosixPath(rel).parent.as_posix()
        here = "" if here == "." else here
        is_md = rel.endswith(".md")
        for i, line in enumerate(text.splitlines(), 1):
            where = f"{rel}:{i}"
            for m in DOCS_PATH.finditer(line):
                if not exists(normalize(m.group(1))):
                    problems.append(f"{where}: cites {m.group(1)}, which is not in the repository")
            for m in README.finditer(line):
                if not exists("README.md"):
                    problems.append(f"{where}: cites README.md, which is not in the repository")
            for m in UPPER_MD.finditer(line):
                name = m.group(1)
                if name == "README.md" or name.startswith("docs/"):
                    continue  # checked above
                if not (exists(normalize(name)) or exists(normalize(f"{here}/{name}"))):
                    problems.append(f"{where}: cites {name}, which is not in the repository")
            for m in SECTION_CITE.finditer(line):
                doc = normalize(m.group(1))
                if not exists(doc):
                    continue  # reported above
                have = section_numbers(doc)
                for n in SECTION_NUMBER.findall(m.group(2)):
                    if n not in have:
                        problems.append(f"{where}: cites {m.group(1)} §{n}, but {doc} has no heading '§{n} ...'")
        if not is_md:
            continue
        for i, line in unfenced_lines(text):
            for m in LINK.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-zA-Z][\w+.-]*:", target):  # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                dest = rel if not path else normalize(path[1:] if path.startswith("/") else f"{here}/{path}")
                if not exists(dest, directory_ok=True):
                    problems.append(f"{rel}:{i}: link to {target}, which is not in the repository")
                elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                    problems.append(f"{rel}:{i}: link to {target}: {dest} has no heading with anchor #{anchor}")
    return problems


# -----------------------------------------------------------------------------------------------------------------


def test_every_cited_document_and_section_exists():
    problems = broken_citations()
    assert not problems, "broken citations:\n" + "\n".join(problems)


def test_the_scan_sees_the_repository():
    files = set(text_files())
    assert {"README.md", "docs/method.md", "docs/metrics.md", "veason_r1/prompting.py"} <= files
    assert {PurePosixPath(f).suffix for f in files} >= {".py", ".md", ".yaml", ".sh", ".toml"}
    assert "Makefile" in files and ".venv" not in {PurePosixPath(f).parts[0] for f in files}
    # the code does cite the method by section: the check above is not vacuous
    cites = sum(len(SECTION_CITE.findall(read(f) or "")) for f in files if f.startswith("veason_r1/"))
    assert cites >= 30


def test_method_sections_are_numbered_and_titled_as_cited():
    found = {}
    for h in headings("docs/method.md"):
        m = re.match(r"§(\d+) (.+)$", h)
        if m:
            found[int(m.group(1))] = m.group(2)
    assert found == METHOD_SECTIONS
    # the pipeline's stages are cited as §1.1 .. §1.5 (e.g. inference as §1.5)
    assert {"1.1", "1.2", "1.3", "1.4", "1.5"} <= section_numbers("docs/method.md")


def _clear_caches() -> None:
    for cached in (repo_files, repo_file_set, repo_dirs):
        cached.cache_clear()


def _write(tmp: Path, rel: str, text: str) -> None:
    p = tmp / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_the_checker_catches_each_kind_of_broken_citation(tmp_path, monkeypatch):
    _write(tmp_path, "README.md", "[ok](docs/a.md) [gone](docs/gone.md) [bad anchor](docs/a.md#nope)\n")
    _write(tmp_path, "docs/a.md", "# A\n## §1 One\nsee [method](a.md#1-one) and [img](img/x.png)\n"
                                  "```\n[not a link](nowhere.md)\n```\n")
    _write(tmp_path, "pkg/mod.py", '"""Rules in docs/a.md §1, §2 and §1.3; old METHOD.md §4 and docs/old.md;\n'
                                   'also /spec/METRICS.md and docs/a.md §1/§1."""\n')
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    _clear_caches()
    try:
        problems = broken_citations()
    finally:
        _clear_caches()
    text = "\n".join(problems)
    assert "README.md:1: link to docs/gone.md" in text
    assert "README.md:1: link to docs/a.md#nope" in text
    assert "docs/a.md:3: link to img/x.png" in text
    assert "nowhere.md" not in text  # inside a code fence
    assert "cites docs/a.md §2" in text and "cites docs/a.md §1.3" in text
    assert "cites docs/a.md §1," not in text
    assert "pkg/mod.py:1: cites METHOD.md" in text
    assert "pkg/mod.py:1: cites docs/old.md" in text
    assert "pkg/mod.py:2: cites spec/METRICS.md" in text
    assert len(problems) == 9, text  # the 8 above + docs/gone.md as a path


# -----------------------------------------------------------------------------------------------------------------
# docs/metrics.md <-> tests/test_metrics.py


def _load_test_metrics():
    spec = importlib.util.spec_from_file_location("_test_metrics_for_docs", REPO / "tests" / "test_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _number(cell: str) -> Fraction | None:
    cell = cell.strip()
    if not cell:
        return None
    return Fraction(cell)  # "12/20", "0.625", "1"


def _metric_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (read("docs/metrics.md") or "").splitlines():
        m = re.match(r"^\|\s*(V\d+b?)\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_metrics_page_lists_exactly_the_tested_cases_with_their_values():
    tm = _load_test_metrics()
    rows = _metric_rows()
    test_ids = set(re.findall(r"\"(V\d+b?)\"", read("tests/test_metrics.py")))
    assert set(rows) == test_ids | {"V16"}  # V16 is test_v16_expression_means
    for vid, (_gt, _pred, j, f) in tm.JF_VECTORS.items():
        cells = rows[vid]
        assert (_number(cells[2]), _number(cells[3])) == (Fraction(j).limit_denominator(1000),
                                                          Fraction(f).limit_denominator(1000)), vid
    (mark,) = [m for m in tm.test_revos_a_r_vectors.pytestmark if m.name == "parametrize"]
    for case, _gt, _pred, _fg, r, a in mark.args[1]:
        cells = rows[case]
        assert _number(cells[1]) == Fraction(r).limit_denominator(10000), case
        assert _number(cells[2]) == (None if a is None else Fraction(a).limit_denominator(10000)), case
    v16 = rows["V16"]
    assert (float(v16[2]), float(v16[3])) == pytest.approx((0.533333, 0.666667), abs=1e-6)
