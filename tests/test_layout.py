"""The house rules a newcomer relies on when reading the tree (README "What is here")."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sweep", "models", "evaluation")
MAX_LINES = 420  # "no module over ~400 lines"


def project_modules() -> dict[str, Path]:
    return {
        ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
        for package in PACKAGES
        for f in (ROOT / package).rglob("*.py")
    }


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at the top or inside a function)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    out.add(target)
        graph[name] = out
    return graph


def test_no_import_circles_and_dependencies_run_one_way():
    graph = import_graph()

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n))) for n in graph[start])

    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert circles == []
    order = {"models": 0, "evaluation": 1, "sweep": 2}
    upward = [(a, b) for a in graph for b in graph[a] if order[b.split(".")[0]] > order[a.split(".")[0]]]
    assert upward == []


def test_only_the_gate_imports_the_trainable():
    graph = import_graph()
    assert [name for name, deps in graph.items() if "sweep.trainable" in deps] == ["sweep.gate"]


def test_the_driver_reaches_tune_without_the_codec_or_the_trials_code():
    """The driver's preparing process imports torch, transformers, the evaluation and the trial's code
    (sweep.prepare); launch and the driver themselves do not, so Ray and Tune start seconds sooner.
    mlflow comes with the driver's first call to it (sweep.tracking) after its helper process opened
    the parent run."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, sweep.launch, sweep.driver; print(' '.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    heavy = {
        "torch",
        "mlflow",
        "transformers",
        "matplotlib",
        "sweep.trainable",
        "sweep.trial",
        "sweep.prepare",
        "evaluation.audio",
    }
    assert heavy & set(loaded) == set()


def test_a_trial_worker_imports_no_mlflow():
    """A trial's MLflow run lives in the host process its worker spawns at the gate (sweep/hosted_run.py),
    which imports mlflow beside the trial's own imports; the trial's code does not import it."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, sweep.gate, sweep.trainable; print(' '.join(sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert "torch" in loaded and "mlflow" not in loaded


def test_a_trials_pieces_need_no_ray():
    """sweep/trial.py runs one trial anywhere (sweep.smoke, tests); Ray's part is sweep/trainable.py."""
    graph, seen, todo = import_graph(), set(), ["sweep.trial"]
    while todo:
        name = todo.pop()
        seen.add(name)
        todo += [d for d in graph[name] if d not in seen]
    files, uses_ray = project_modules(), re.compile(r"^\s*(import ray|from ray)", re.M)
    assert [m for m in sorted(seen) if uses_ray.search(files[m].read_text())] == []


def test_no_module_is_over_about_400_lines():
    sizes = {
        str(f.relative_to(ROOT)): len(f.read_text().splitlines())
        for package in PACKAGES
        for f in (ROOT / package).rglob("*.py")
    }
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}


def test_the_readme_map_names_every_sweep_module_and_no_other():
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("## What is here") :].split("```")[1]
    named = set(re.findall(r"sweep/(\w+)\.py", block))
    # "sweep/spaces.py, config.py, objective.py": later names on the line share the folder
    for line in block.splitlines():
        if line.startswith("sweep/"):
            named |= set(re.findall(r"(?:, )(\w+)\.py", line))
    on_disk = {f.stem for f in (ROOT / "sweep").glob("*.py")} - {"__init__"}
    assert named == on_disk
    for folder in ("models", "evaluation", "cluster", "docker", "tests"):
        assert f"{folder}/" in block and (ROOT / folder).is_dir()
