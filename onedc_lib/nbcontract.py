"""The thin-notebook contract (design/ARCHITECTURE.md), checked, and the tools that keep notebooks in it.

A notebook in `notebooks/` is thin:

* kernel `python3`, no outputs and no execution counts stored (strip them before committing);
* its first code cell is tagged `parameters` (papermill) and holds typed literals only:
  `name: type = literal` with type one of str, int, float, bool, list, dict and a literal of that type;
  `preset`, `overrides`, `smoke` and `out_dir` are always there;
* every later code cell is either imports from onedc_lib, or one statement: one library call (`f(...)`,
  `x = f(...)`, `obj.method(...)`), whose arguments are names, literals or attributes/subscripts of names, or
  a value shown as it is (`report`, `anatomy.notes`, `report["device"]`);
* no `def`, `class`, `lambda`, loops, conditionals, comprehensions, `with`/`try`, shell escapes (`!cmd`),
  magics (`%cmd`), `subprocess`, `os.system` anywhere.

    python -m onedc_lib.nbcontract check notebooks/*.ipynb     # exit 1 and the reasons when one breaks it
    python -m onedc_lib.nbcontract strip notebooks/*.ipynb     # drop outputs, counts and run metadata in place

`write_notebook` builds a contract-abiding notebook from cell sources (used by notebooks/build.py).
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

REQUIRED_PARAMETERS = ("preset", "overrides", "smoke", "out_dir")
PARAMETER_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict}
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
FORBIDDEN_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.AsyncFor,
                   ast.While, ast.If, ast.IfExp, ast.With, ast.AsyncWith, ast.Try, ast.ListComp, ast.SetComp,
                   ast.DictComp, ast.GeneratorExp, ast.Global, ast.Nonlocal, ast.Delete, ast.Match)
FORBIDDEN_NAMES = {"subprocess", "system", "popen", "Popen", "exec", "eval", "compile", "__import__",
                   "get_ipython", "getoutput", "check_output", "spawn", "execv", "execvp"}
RUN_METADATA = ("execution", "papermill", "collapsed", "scrolled", "jupyter")  # transient cell metadata


def _literal_value(node: ast.AST):
    try:
        return True, ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def check_parameters_source(source: str) -> tuple[dict, list[str]]:
    """(parameters {name: value}, problems) of a parameters cell."""
    problems: list[str] = []
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return {}, [f"parameters cell is not Python ({e.msg}, line {e.lineno})"]
    params = {}
    for node in tree.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name) or node.value is None:
            problems.append(f"parameters cell line {node.lineno}: only `name: type = literal` lines are allowed")
            continue
        name = node.target.id
        annotation = ast.unparse(node.annotation)
        if annotation not in PARAMETER_TYPES:
            problems.append(f"parameter {name}: type {annotation!r} is not one of {', '.join(PARAMETER_TYPES)}")
            continue
        ok, value = _literal_value(node.value)
        if not ok:
            problems.append(f"parameter {name}: value is not a literal")
            continue
        expected = PARAMETER_TYPES[annotation]
        if not isinstance(value, expected) or (annotation in ("int", "float") and isinstance(value, bool)):
            problems.append(f"parameter {name}: {value!r} is not a {annotation}")
            continue
        if name in params:
            problems.append(f"parameter {name} set twice")
        params[name] = value
    missing = [p for p in REQUIRED_PARAMETERS if p not in params]
    if missing:
        problems.append(f"parameters cell lacks {', '.join(missing)}")
    return params, problems


def _simple_argument(node: ast.AST) -> bool:
    """A name, a literal, or an attribute / subscript / unary minus of those."""
    if isinstance(node, ast.Starred):
        return _simple_argument(node.value)
    if isinstance(node, ast.Name):
        return True
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        inner = node.value
        return _simple_argument(inner) and (not isinstance(node, ast.Subscript) or _literal_value(node.slice)[0]
                                            or isinstance(node.slice, ast.Name))
    return _literal_value(node)[0]


def _is_one_call(node: ast.AST) -> bool:
    """f(...), a.b.f(...), with simple arguments; the callee is a name or an attribute chain of names."""
    if not isinstance(node, ast.Call):
        return False
    callee = node.func
    while isinstance(callee, ast.Attribute):
        callee = callee.value
    if not isinstance(callee, ast.Name):
        return False
    return all(_simple_argument(a) for a in node.args) and all(_simple_argument(k.value) for k in node.keywords)


def check_code_cell(source: str, index: int) -> list[str]:
    """Problems of a later code cell (not the parameters cell)."""
    where = f"cell {index}"
    for number, line in enumerate(source.splitlines(), 1):
        if line.lstrip().startswith(("!", "%")):
            return [f"{where} line {number}: shell escapes and magics are not allowed ({line.strip()[:40]!r})"]
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return [f"{where}: not plain Python ({e.msg}, line {e.lineno})"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, FORBIDDEN_NODES):
            problems.append(f"{where} line {node.lineno}: {type(node).__name__} is logic: move it into onedc_lib")
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name in FORBIDDEN_NAMES:
            problems.append(f"{where} line {node.lineno}: {name} is not allowed in a notebook")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            if isinstance(node, ast.Import) or not (module == "onedc_lib" or module.startswith("onedc_lib.")):
                problems.append(f"{where} line {node.lineno}: only `from onedc_lib... import ...` is allowed")
    statements = [s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom))]
    if len(statements) > 1:
        problems.append(f"{where}: {len(statements)} statements; a cell makes one library call")
    for s in statements:
        value = s.value if isinstance(s, (ast.Expr, ast.Assign)) else None
        targets_ok = not isinstance(s, ast.Assign) or all(
            isinstance(t, ast.Name) or isinstance(t, ast.Tuple) and all(isinstance(e, ast.Name) for e in t.elts)
            for t in s.targets)
        shown = isinstance(s, ast.Expr) and _simple_argument(value) and not _literal_value(value)[0]
        if value is None or not targets_ok or not (_is_one_call(value) or shown):
            problems.append(f"{where} line {s.lineno}: not one library call (`f(...)` or `x = f(...)`) "
                            f"with simple arguments")
    return problems


def check_notebook(nb) -> list[str]:
    """Every way the notebook (a path, or a dict as nbformat reads it) breaks the contract; [] when thin."""
    if not isinstance(nb, dict):
        nb = json.loads(Path(nb).read_text())
    problems = []
    kernel = nb.get("metadata", {}).get("kernelspec", {})
    if kernel.get("name") != "python3":
        problems.append(f"kernel is {kernel.get('name')!r}, not 'python3'")
    code_cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not code_cells:
        return problems + ["no code cells"]
    for i, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") == "code":
            if cell.get("outputs"):
                problems.append(f"cell {i}: outputs are stored (strip them)")
            if cell.get("execution_count") is not None:
                problems.append(f"cell {i}: execution count is stored (strip it)")
            stray = [k for k in RUN_METADATA if k in cell.get("metadata", {})]
            if stray:
                problems.append(f"cell {i}: run metadata {stray} is stored (strip it)")
    for key in ("papermill", "widgets"):
        if key in nb.get("metadata", {}):
            problems.append(f"notebook metadata holds run state ({key}): strip it")
    first = code_cells[0]
    if "parameters" not in first.get("metadata", {}).get("tags", []):
        problems.append("the first code cell is not tagged `parameters`")
    _, param_problems = check_parameters_source(_source(first))
    problems += param_problems
    for i, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") == "code" and cell is not first:
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                problems.append(f"cell {i}: a second `parameters` cell")
            problems += check_code_cell(_source(cell), i)
    return problems


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def notebook_parameters(path) -> dict:
    """{name: default} of a notebook's parameters cell."""
    nb = json.loads(Path(path).read_text())
    first = next(c for c in nb["cells"] if c.get("cell_type") == "code")
    params, problems = check_parameters_source(_source(first))
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return params


def strip_notebook(path) -> bool:
    """Drops outputs, execution counts and run metadata in place; True when the file changed."""
    import nbformat

    path = Path(path)
    before = path.read_text()
    nb = nbformat.reads(before, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]  # papermill's
    for cell in nb.cells:
        for key in RUN_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    after = nbformat.writes(nb) + "\n"
    if after != before:
        path.write_text(after)
    return after != before


def write_notebook(path, title: str, parameters: str, cells: list[tuple[str, str]]) -> Path:
    """A notebook: a markdown title cell, the parameters cell, then (kind, source) cells, kind "md" or "code".

    Raises ValueError when the result breaks the contract, so that a generator cannot write a fat notebook.
    """
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook(metadata={"kernelspec": dict(KERNEL),
                                "language_info": {"name": "python", "pygments_lexer": "ipython3"}})
    nb.cells.append(new_markdown_cell(title.strip()))
    nb.cells.append(new_code_cell(parameters.strip(), metadata={"tags": ["parameters"]}))
    for kind, source in cells:
        maker = new_markdown_cell if kind == "md" else new_code_cell
        nb.cells.append(maker(source.strip()))
    for i, cell in enumerate(nb.cells):  # stable ids: regenerating an unchanged notebook changes no byte
        cell["id"] = f"{Path(path).stem[:40]}-{i}".replace("_", "-")
    problems = check_notebook(json.loads(nbformat.writes(nb)))
    if problems:
        raise ValueError(f"{path} would break the notebook contract: " + "; ".join(problems))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(nbformat.writes(nb) + "\n")
    return Path(path)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m onedc_lib.nbcontract", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("check", "strip"))
    parser.add_argument("notebooks", nargs="+")
    args = parser.parse_args(argv)
    status = 0
    for path in args.notebooks:
        if args.command == "strip":
            if strip_notebook(path):
                print(f"stripped {path}")
        else:
            for problem in check_notebook(path):
                print(f"{path}: {problem}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
