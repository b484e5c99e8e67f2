"""The house's rule: a stage imports only from its own stage or the stages below it, and no
module imports itself back through others. Read from the source, so it holds for every import,
whether at module level or inside a function."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autoseg"

# Lowest first. The order is the pipeline's, read as "who may use whom": training validates with
# the prediction path, which ends with postprocessing and is scored by evaluation.
STAGES = [
    ["autoseg.errors", "autoseg.atomic", "autoseg.locks", "autoseg.workspace", "autoseg.plugins", "autoseg.device",
     "autoseg.checkpoint", "autoseg.typed_json"],
    ["autoseg.dataset"],
    ["autoseg.synthetic"],
    ["autoseg.fingerprint"],
    ["autoseg.planners"],
    ["autoseg.preprocessing"],
    ["autoseg.networks"],
    ["autoseg.evaluation"],
    ["autoseg.postprocessing"],
    ["autoseg.inference"],
    ["autoseg.trainers"],
    ["autoseg.study"],  # a whole study: plan, the folds as jobs on an executor, find-best, predict
    ["autoseg.commands", "autoseg.cli", "autoseg.__main__", "autoseg"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The autoseg modules a file imports (``from autoseg import checkpoint`` names a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("autoseg")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoseg"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return out


def stage_of(module: str) -> int:
    best = None
    for i, members in enumerate(STAGES):
        for m in members:
            if (module == m or module.startswith(m + ".")) and (best is None or len(m) > len(best[1])):
                best = (i, m)
    assert best is not None, f"{module} belongs to no stage: add it to STAGES"
    return best[0]


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {m: {i for i in imported_modules(p, known) if i != m} for m, p in files.items()}


def test_no_import_from_a_lower_stage_to_a_higher_one():
    upward = sorted(f"{m} (stage {stage_of(m)}) imports {i} (stage {stage_of(i)})"
                    for m, imports in import_graph().items() for i in imports if stage_of(i) > stage_of(m))
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for i in sorted(graph.get(m, ())):
            if state.get(i) == 1:
                circles.append(" -> ".join(path[path.index(i):] + [i]))
            elif i in graph and state.get(i) is None:
                visit(i, path + [i])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    # a package's __init__ handing on names of its own modules is not a circle
    circles = [c for c in circles if not all(n.startswith(c.split(" -> ")[0]) for n in c.split(" -> "))]
    assert not circles, "\n".join(circles)


def test_library_code_never_imports_the_command_line():
    library = {m: i for m, i in import_graph().items()
               if stage_of(m) < stage_of("autoseg.commands")}
    offenders = sorted(m for m, imports in library.items() if any(stage_of(i) == stage_of("autoseg.cli") for i in imports))
    assert not offenders, offenders


def test_the_rule_sees_a_violation(tmp_path):
    """The parser finds imports inside functions and ``from autoseg import module``."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from autoseg.trainers.base import Trainer\nfrom autoseg import checkpoint\n")
    found = imported_modules(f, {"autoseg.checkpoint", "autoseg.trainers.base"})
    assert found == {"autoseg.trainers.base", "autoseg.checkpoint"}
    assert stage_of("autoseg.trainers.base") > stage_of("autoseg.inference.predictor")
