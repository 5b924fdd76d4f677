"""The suite's split holds: what starts real servers, engines, clusters or training runs lives in tests/e2e/
(and so carries the `e2e` marker that `make test-fast` leaves out); no test outside it asks for the shared
heavy fixtures; and tests do not import each other's conftest (two conftest modules share that name)."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HEAVY_FIXTURES = {"judge_server", "flip_world", "gpu_cluster"}


def modules_under(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("test_*.py"))


def fixtures_asked(path: Path) -> set[str]:
    """The fixtures its tests and its own fixtures ask for (a helper's parameters are not fixtures)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
            node.name.startswith("test_") or any("fixture" in ast.unparse(d) for d in node.decorator_list)
        ):
            names |= {a.arg for a in node.args.args}
    return names


def test_only_end_to_end_tests_ask_for_the_shared_servers_and_the_world():
    outside = [p for p in modules_under(TESTS) if "e2e" not in p.relative_to(TESTS).parts]
    offenders = {
        str(p.relative_to(TESTS)): sorted(fixtures_asked(p) & HEAVY_FIXTURES)
        for p in outside
        if fixtures_asked(p) & HEAVY_FIXTURES
    }
    assert offenders == {}, f"move these to tests/e2e/: {offenders}"


def test_the_e2e_marker_comes_from_the_folder_alone():
    """A stray `slow` mark would be a second, silent way to leave a test out."""
    for path in modules_under(TESTS):
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        assert "mark.slow" not in text, path
        assert "from conftest import" not in text and "import conftest" not in text, path
    assert len(modules_under(TESTS / "e2e")) >= 10
