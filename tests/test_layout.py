"""The package's shape, read from the source files (ast, nothing imported): the stages import only
downward (`train/` reaches neither sampling nor evaluation, through any chain of imports, the
function-level ones included), at most four modules stay directly under `jaxcomposer/`, and the
README's layout tree names every folder and module there is, its links lead to files, it stays
a short guide, and its test command is the one CI runs."""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxcomposer"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def module_name(path: pathlib.Path) -> str:
    """jaxcomposer/a/b.py -> "jaxcomposer.a.b"; jaxcomposer/a/__init__.py -> "jaxcomposer.a"."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_by(name: str) -> set[str]:
    """The jaxcomposer modules `name` imports anywhere in its file (top level or inside a
    function), with the packages whose __init__ each import runs."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from jaxcomposer.x import y`: y is a module when it has a file, else a name of x
            targets = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                for a in node.names
            ]
        for target in targets:
            parts = target.split(".")
            out |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()
    return out


def reachable_from(prefix: str) -> set[str]:
    """Every jaxcomposer module that importing any module under `prefix` can import."""
    seen, todo = set(), [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imported_by(name) - seen)
    return seen


def test_import_graph_reads_function_level_imports():
    """The reader sees a lazy import: main.py imports the studio inside main()."""
    assert "jaxcomposer.studio.server" in imported_by("jaxcomposer.main")
    assert "jaxcomposer.sample.generate" in reachable_from("jaxcomposer.main")


def test_training_reaches_neither_sampling_nor_evaluation():
    later = ("sample", "evaluation", "finetune", "studio")
    reached = reachable_from("jaxcomposer.train")
    bad = sorted(m for m in reached if m.split(".")[1:2] and m.split(".")[1] in later)
    assert bad == [], f"train/ reaches {bad}"


def test_at_most_four_modules_at_the_top():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    assert top == ["cli", "config_lib", "main", "workdir_lib"]


def layout_block() -> str:
    """The README's layout tree: the code block after '## Layout'."""
    section = README.split("\n## Layout", 1)[1]
    return section.split("```", 2)[1]


def layout_entries() -> dict[str, str]:
    """{"tokenizers/": its text, ...}: each entry of the tree, indented or not, with its
    continuation lines."""
    entries, current = {}, None
    for line in layout_block().splitlines():
        head = re.match(r"^\s{0,2}(\S+/)\s", line + " ")
        if head:
            current = head.group(1)
            entries[current] = line
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def named(filename: str, text: str) -> bool:
    """Whether `text` names `filename`, itself or by a glob such as bench_*.py."""
    words = set(re.findall(r"[\w*.-]+\.py", text))
    return filename in words or any("*" in w and fnmatch.fnmatch(filename, w) for w in words)


def test_readme_layout_names_every_folder_and_module():
    entries = layout_entries()
    top_text = entries["jaxcomposer/"]
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem != "__init__":
            assert named(path.name, top_text), f"README layout: jaxcomposer/{path.name} missing"
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        assert f"{folder.name}/" in entries, f"README layout: jaxcomposer/{folder.name}/ missing"
        for path in sorted(folder.glob("*.py")):
            if path.stem != "__init__":
                assert named(path.name, entries[f"{folder.name}/"]), (
                    f"README layout: jaxcomposer/{folder.name}/{path.name} missing"
                )
    for folder in ("configs", "launch"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.stem != "__init__":
                assert named(path.name, entries[f"{folder}/"]), f"README: {folder}/{path.name}"
    for folder in ("notebooks", "docs", "tests"):
        assert f"{folder}/" in entries and (ROOT / folder).is_dir()
    # and nothing it names is gone
    for entry, text in entries.items():
        base = PACKAGE / entry if (PACKAGE / entry).is_dir() else ROOT / entry
        if entry == "jaxcomposer/":
            base = PACKAGE
        for word in re.findall(r"[\w-]+\.py\b", text):
            if entry != "jaxcomposer/" or "/" not in word:
                assert (base / word).exists() or (PACKAGE / word).exists(), f"{entry}{word}"


def test_readme_links_lead_to_files():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "no links found"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []


def test_readme_is_a_short_guide():
    assert len(README.splitlines()) <= 400


def test_readme_test_command_is_the_one_ci_runs():
    setup = README.split("\n## Set-up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = setup.strip().splitlines()[-1].strip()
    assert command.startswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    at = ci.index("# The README's test command:")
    assert ci[at + 1].strip() == command


@pytest.mark.parametrize("stage", ["sample", "evaluation", "finetune", "studio"])
def test_later_stages_are_not_imported_by_the_tokenizers_or_the_model(stage):
    for base in ("jaxcomposer.tokenizers", "jaxcomposer.model", "jaxcomposer.data"):
        reached = reachable_from(base)
        assert not [m for m in reached if m.startswith(f"jaxcomposer.{stage}")], (base, stage)
