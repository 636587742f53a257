"""Imports among ``uctrl_jax`` modules run one way: the module graph has no cycle, and
along the README's chains (``Layout``) no module imports one to its left.

Every ``import`` statement counts, at module level and inside functions alike (a
function-level import only hides a cycle until the function runs).
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "uctrl_jax"
# README "Layout": `train → evaluate → loading → state → models → objectives →
# rate_reduction` and `train → steps → state`; modules of one step import none of theirs.
CHAINS = (
  ("train", "evaluate", "loading", "state", "models", "objectives", "rate_reduction"),
  ("train", "steps", "state"),
)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set) -> set:
  """The ``uctrl_jax`` modules that ``path`` imports anywhere in its body."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from uctrl_jax import train` names a module; `from uctrl_jax.x import f` a member.
      names = [
        f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
        for alias in node.names
      ]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


def module_graph() -> dict:
  paths = sorted(PACKAGE.rglob("*.py"))
  modules = {_module_name(p) for p in paths}
  graph = {_module_name(p): _imports(p, modules) for p in paths}
  # A package's __init__ importing its own submodules is not a cycle of the kind meant
  # here (a submodule's `from uctrl_jax.evaluators import common` loads the package).
  return {m: {n for n in deps if n != m} for m, deps in graph.items()}


def find_cycle(graph: dict):
  """A list of modules forming a cycle, or None."""
  state = {}

  def visit(node, path):
    state[node] = "open"
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        return path[path.index(dep) :] + [dep]
      if dep not in state:
        cycle = visit(dep, path + [dep])
        if cycle:
          return cycle
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node, [node])
      if cycle:
        return cycle
  return None


def test_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
  graph = module_graph()
  assert "uctrl_jax.train" in graph and "uctrl_jax.evaluate" in graph["uctrl_jax.train"]
  assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def backward_imports(graph: dict, chain) -> list:
  """``(module, imported)`` pairs of ``graph`` where a module of ``chain`` (a sequence of
  names or tuples of names) imports one of its own step or one to its left."""
  steps = [(s,) if isinstance(s, str) else s for s in chain]
  found = []
  for i, step in enumerate(steps):
    left = {f"uctrl_jax.{m}" for s in steps[: i + 1] for m in s}
    for module in step:
      found += [(module, dep) for dep in sorted(graph[f"uctrl_jax.{module}"] & left)]
  return found


def test_finds_a_backward_import():
  graph = {"uctrl_jax.a": {"uctrl_jax.b"}, "uctrl_jax.b": {"uctrl_jax.a"}, "uctrl_jax.c": set()}
  assert backward_imports(graph, ("a", "b")) == [("b", "uctrl_jax.a")]
  assert backward_imports(graph, ("c", ("a", "b"))) == [
    ("a", "uctrl_jax.b"),
    ("b", "uctrl_jax.a"),
  ]
  assert backward_imports(graph, ("a", "c")) == []


def test_imports_run_along_the_readme_chains():
  graph = module_graph()
  # The chains' arrows that are direct imports, so that the chains stay the real ones.
  assert {"uctrl_jax.steps", "uctrl_jax.evaluate"} <= graph["uctrl_jax.train"]
  assert "uctrl_jax.state" in graph["uctrl_jax.steps"]
  for chain in CHAINS:
    assert backward_imports(graph, chain) == [], chain
