""".dockerignore files must select the same build context as BuildKit.

Matching tables come from moby/patternmatcher's tests and Go's filepath.Match
tests; the walk tests build real directory trees.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from lamina.builder._dockerignore import (
    BuildContextError,
    PatternMatcher,
    go_clean,
    iter_context,
    parse_dockerignore,
    read_dockerignore,
    walk_context,
)
from lamina.errors import LaminaError

# (pattern, path, matches) -- patternmatcher_test.go TestMatches
MOBY_MATCHES: list[tuple[str, str, bool]] = [
    ("**", "file", True),
    ("**", "file/", True),
    ("**/", "file", True),
    ("**/", "file/", True),
    ("**", "/", True),
    ("**/", "/", True),
    ("**", "dir/file", True),
    ("**/", "dir/file", True),
    ("**", "dir/file/", True),
    ("**/", "dir/file/", True),
    ("**/**", "dir/file", True),
    ("**/**", "dir/file/", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/file/", True),
    ("dir/**", "dir/dir2/file", True),
    ("dir/**", "dir/dir2/file/", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/*", "dir/dir2/file/", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file/", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("a\\\\", "a\\", True),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    (
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        True,
    ),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\*b", "a*b", True),
    # TestMatch, Go's filepath.Match table (a parent match counts here)
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "α", True),  # noqa: RUF001
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
    # more: escapes, dots and the regex metacharacters are literal
    ("\\[a\\]", "[a]", True),
    ("\\[a\\]", "a", False),
    ("a\\?", "a?", True),
    ("a\\?", "ab", False),
    ("*.go", "fileutils.go", True),
    ("*.go", "dir/fileutils.go", False),
    ("**/*.go", "dir/fileutils.go", True),
    ("[!a]", "!", True),
    ("[!a]", "b", False),
    ("a^b", "a^b", True),
    ("docs", "docs/README.md", True),
    ("docs/", "docs/README.md", True),
    ("/abs/path", "abs/path", False),  # the leading / is removed by the file reader only
    ("./rel", "rel/file", True),
    ("dir/../other", "other/x", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), MOBY_MATCHES)
def test_pattern_matches_like_moby(pattern: str, path: str, expected: bool) -> None:
    pm = PatternMatcher([pattern])
    assert pm.matches_or_parent_matches(path) is expected
    # walking down component by component, as the context walk does, agrees
    info = None
    parts = path.split("/")
    result = False
    for i in range(len(parts)):
        sub = "/".join(parts[: i + 1])
        result, info = (
            pm.matches_using_parent_results(sub, info)
            if info is not None
            else pm.matches_using_parent_results(sub)
        )
    assert result is expected


BAD_PATTERNS = [
    "[]a]",
    "[-]",
    "[x-]",
    "[-x]",
    "\\",
    "[a-b-c]",
    "[",
    "[^",
    "[^bc",
    "a[",
    "!",
    "[z-a]",
]


@pytest.mark.parametrize("pattern", BAD_PATTERNS)
def test_malformed_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(BuildContextError) as info:
        PatternMatcher([pattern])
    assert isinstance(info.value, LaminaError)
    assert "\n" not in str(info.value)


MULTI: list[tuple[list[str], str, bool]] = [
    (["**", "!util/docker/web"], "util/docker/web/foo", False),
    (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
    (
        ["**", "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"],
        "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
        False,
    ),
    (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
    (["docs", "!docs/README.md"], "docs/README.md", False),
    (["docs/", "!docs/README.md"], "docs/README.md", False),
    (["docs/*", "!docs/README.md"], "docs/README.md", False),
    (["docs", "!docs/README.md"], "docs/other.md", True),
    (["!fileutils.go", "*.go"], "fileutils.go", True),
    (["*.go", "!fileutils.go"], "fileutils.go", False),
    (["**", "!fileutils.go"], "fileutils.go", False),
    (["*", "!keep/**"], "keep/a/b", False),
    (["*", "!keep/**"], "drop/a", True),
    (["**/*.log", "!important.log"], "important.log", False),
    (["**/*.log", "!important.log"], "sub/important.log", True),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), MULTI)
def test_last_matching_pattern_wins(patterns: list[str], path: str, expected: bool) -> None:
    pm = PatternMatcher(patterns)
    assert pm.matches_or_parent_matches(path) is expected


def test_pattern_cleaning_and_exclusions_flag() -> None:
    pm = PatternMatcher(["docs", "config/CONFIG.md", "", "  !docs/README.md  ", "./a/../b/"])
    assert pm.patterns == ["docs", "config/CONFIG.md", "!docs/README.md", "b"]
    assert pm.exclusions
    assert not PatternMatcher(["docs"]).exclusions
    assert not PatternMatcher([])


def test_legacy_matches_checks_only_one_parent_level() -> None:
    pm = PatternMatcher(["a/b"])
    assert pm.matches("a/b/c")
    assert pm.matches("a/b/c/d")  # the parent prefix is cut to the pattern's depth
    pm = PatternMatcher(["**/b"])  # 2 components: only "x/y" is tried as the parent
    assert not pm.matches("x/y/b/c")
    assert pm.matches_or_parent_matches("x/y/b/c")


def test_go_clean() -> None:
    cases = {
        "": ".",
        ".": ".",
        "./": ".",
        "a/": "a",
        "./a": "a",
        "a//b": "a/b",
        "/a/../..": "/",
        "a/../..": "..",
        "../../a": "../../a",
        "//a": "/a",
        "/": "/",
        "a/./b/.": "a/b",
    }
    for path, cleaned in cases.items():
        assert go_clean(path) == cleaned, path


# --- the ignore file ------------------------------------------------------------


def test_parse_like_ignorefile_readall() -> None:
    content = (
        "\ufeff# comment\n"
        "\n"
        "  node_modules  \r\n"
        "/abs/path\n"
        "./rel/path/\n"
        "  # not a comment: only a leading # is\n"
        "!  keep.txt\n"
        "! /keep/abs\n"
        "a//b/../c\n"
        "/\n"
        "**/*.log\n"
    )
    assert parse_dockerignore(content.encode()) == [
        "node_modules",
        "abs/path",
        "rel/path",
        "# not a comment: only a leading # is",
        "!keep.txt",
        "!keep/abs",
        "a/c",
        "/",
        "**/*.log",
    ]


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "docker").mkdir(parents=True)
    (ctx / ".dockerignore").write_text("from-context\n")
    dockerfile = ctx / "docker" / "app.Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    assert read_dockerignore(ctx, dockerfile) == ["from-context"]
    (ctx / "docker" / "app.Dockerfile.dockerignore").write_text("from-dockerfile\n")
    assert read_dockerignore(ctx, dockerfile) == ["from-dockerfile"]
    assert read_dockerignore(ctx, None) == ["from-context"]
    assert read_dockerignore(ctx, ctx / "Dockerfile") == ["from-context"]
    (ctx / "Dockerfile.dockerignore").write_text("plain\n")
    assert read_dockerignore(ctx, ctx / "Dockerfile") == ["plain"]
    assert read_dockerignore(tmp_path / "empty", None) == []


# --- walking the context ----------------------------------------------------------


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(rel)


def _walk(root: Path, patterns: list[str]) -> list[str]:
    return list(walk_context(root, PatternMatcher(patterns)))


FILES = [
    "Dockerfile",
    ".dockerignore",
    "app.py",
    "build.log",
    "a*b",
    "src/main.py",
    "src/debug.log",
    "src/deep/x.log",
    "src/deep/y.py",
    "keep/one",
    "keep/sub/two",
    "drop/three",
    "empty/",
    "node_modules/pkg/index.js",
    "docs/README.md",
    "docs/other.md",
]


def test_walk_without_patterns_lists_everything_depth_first(tmp_path: Path) -> None:
    _tree(tmp_path, FILES)
    assert list(walk_context(tmp_path)) == [
        ".dockerignore", "Dockerfile", "a*b", "app.py", "build.log",
        "docs", "docs/README.md", "docs/other.md", "drop", "drop/three", "empty",
        "keep", "keep/one", "keep/sub", "keep/sub/two",
        "node_modules", "node_modules/pkg", "node_modules/pkg/index.js",
        "src", "src/debug.log", "src/deep", "src/deep/x.log", "src/deep/y.py", "src/main.py",
    ]  # fmt: skip


WALKS: list[tuple[list[str], list[str] | None]] = [
    (["*", "!keep/**"], ["keep", "keep/one", "keep/sub", "keep/sub/two"]),
    (["*", "!keep"], ["keep", "keep/one", "keep/sub", "keep/sub/two"]),
    (["*", "!keep/sub/two"], ["keep", "keep/sub", "keep/sub/two"]),
    (["**", "!**/*.py"], ["app.py", "src", "src/deep", "src/deep/y.py", "src/main.py"]),
    (
        ["**/*.log", "node_modules", "docs/", "drop/three", "empty", ".dockerignore", "a\\*b"],
        [
            "Dockerfile", "app.py", "drop", "keep", "keep/one", "keep/sub", "keep/sub/two",
            "src", "src/deep", "src/deep/y.py", "src/main.py",
        ],
    ),
    (["docs", "!docs/README.md"], None),
    (["/src/", "./keep", "!/src/main.py"], None),
]  # fmt: skip


@pytest.mark.parametrize(("patterns", "expected"), WALKS)
def test_walk_applies_patterns_and_exceptions(
    tmp_path: Path, patterns: list[str], expected: list[str] | None
) -> None:
    _tree(tmp_path, FILES)
    clean = parse_dockerignore("\n".join(patterns))
    got = _walk(tmp_path, clean)
    if expected is not None:
        assert got == expected
    # a file is listed exactly when it is not excluded
    pm = PatternMatcher(clean)
    for path in walk_context(tmp_path):
        if not (tmp_path / path).is_dir():
            assert (path in got) is (not pm.matches_or_parent_matches(path)), path
    # an excluded directory is listed only for something kept below it
    for path in got:
        if (tmp_path / path).is_dir() and pm.matches_or_parent_matches(path):
            assert any(p.startswith(path + "/") for p in got), path


def test_walk_re_includes_files_in_excluded_dirs_via_exceptions(tmp_path: Path) -> None:
    _tree(tmp_path, FILES)
    assert _walk(tmp_path, ["docs", "!docs/README.md"])[:4] == [
        ".dockerignore", "Dockerfile", "a*b", "app.py",
    ]  # fmt: skip
    got = _walk(tmp_path, ["docs", "!docs/README.md"])
    assert "docs" in got and "docs/README.md" in got and "docs/other.md" not in got


def test_walk_does_not_read_pruned_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tree(tmp_path, ["ok/a", "secret/b", "secret/deep/c"])
    scanned: list[str] = []
    real_scandir = os.scandir

    def spy(path: str) -> Any:
        scanned.append(os.path.relpath(path, tmp_path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", spy)
    assert _walk(tmp_path, ["secret", "!ok/a"]) == ["ok", "ok/a"]
    assert scanned == [".", "ok"]
    scanned.clear()
    # an exception that may match below forces the read
    assert _walk(tmp_path, ["secret", "!**/c"]) == [
        "ok", "ok/a", "secret", "secret/deep", "secret/deep/c",
    ]  # fmt: skip
    assert scanned == [".", "ok", "secret", "secret/deep"]


def test_unreadable_context_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(BuildContextError, match="cannot read build context directory"):
        list(walk_context(tmp_path / "missing"))


def test_walk_lists_symlinks_without_following(tmp_path: Path) -> None:
    _tree(tmp_path, ["real/file"])
    (tmp_path / "link").symlink_to("real")
    (tmp_path / "dangling").symlink_to("nowhere")
    entries = list(iter_context(tmp_path))
    assert [e.path for e in entries] == ["dangling", "link", "real", "real/file"]
    assert [e.is_dir() for e in entries] == [False, False, True, False]


def test_walk_is_fast_on_big_trees(tmp_path: Path) -> None:
    files = [f"pkg{i}/mod{j}/file{k}.{'log' if k % 5 == 0 else 'py'}"
             for i in range(10) for j in range(10) for k in range(30)]  # fmt: skip
    files += [f"node_modules/dep{i}/index.js" for i in range(500)]
    _tree(tmp_path, files)
    patterns = ["node_modules", "**/*.log", "*.tmp", "!pkg1/mod1/file5.log", "**/__pycache__"]
    start = time.perf_counter()
    got = _walk(tmp_path, patterns)
    elapsed = time.perf_counter() - start
    kept = [p for p in got if p.endswith((".py", ".log"))]
    assert len(kept) == 3000 - 600 + 1
    assert "node_modules" not in got
    assert elapsed < 1.0, elapsed
