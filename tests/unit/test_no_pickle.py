"""No pickle anywhere: every Python file of the checkout (tracked, or new and not ignored) is
parsed with `ast`, and any call that can unpickle fails the test.

Refused: pickle / cPickle / _pickle / dill / cloudpickle load, loads and Unpickler, joblib.load,
pandas.read_pickle, shelve.open, torch.load without `weights_only=True`, and any call passing
`allow_pickle=` anything but a literal False (numpy.load(..., allow_pickle=True) included).
Import aliases are followed (`import pickle as p; p.loads(b)`, `from pickle import loads`)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle"}
PICKLE_CALLS = {"load", "loads", "Unpickler"}
ALWAYS_REFUSED = {"joblib.load", "pandas.read_pickle", "shelve.open"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it was imported as."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:  # `import a.b` binds `a`
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str:
    """`a.b.c` for a call target made of names and attributes ("" otherwise), with the first
    name resolved through the imports."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _is_literal(node: ast.expr, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def find_unpickling(source: str, filename: str = "<snippet>") -> list[str]:
    """Every call in `source` that can unpickle, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        module, _, function = name.rpartition(".")
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        problem = ""
        if (module in PICKLE_MODULES and function in PICKLE_CALLS) or name in ALWAYS_REFUSED:
            problem = f"{name}() unpickles"
        elif name in TORCH_LOADS and not _is_literal(
            keywords.get("weights_only", ast.expr()), True
        ):
            problem = f"{name}() without weights_only=True unpickles"
        elif "allow_pickle" in keywords and not _is_literal(keywords["allow_pickle"], False):
            problem = f"{name or 'a call'}(allow_pickle=...) may unpickle"
        if problem:
            found.append(f"{filename}:{node.lineno}: {problem}")
    return found


def python_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc}); nothing to list")
    return [ROOT / p for p in listed if (ROOT / p).is_file()]


def test_no_call_in_the_source_tree_unpickles() -> None:
    files = python_files()
    assert len(files) > 50, "the scan found suspiciously few Python files"
    found = [
        line
        for path in files
        for line in find_unpickling(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(b'')",
        "import pickle\nwith open('f', 'rb') as f:\n    pickle.load(f)",
        "import pickle as p\np.Unpickler(f).load()",
        "from pickle import loads\nloads(data)",
        "from pickle import loads as safe\nsafe(data)",
        "import cPickle\ncPickle.loads(data)",
        "import _pickle\n_pickle.load(f)",
        "import dill\ndill.loads(data)",
        "import cloudpickle\ncloudpickle.load(f)",
        "import joblib\njoblib.load('model.joblib')",
        "import pandas as pd\npd.read_pickle('frame.pkl')",
        "import shelve\nshelve.open('db')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import numpy\nnumpy.load('a.npz', allow_pickle=flag)",
        "from numpy import load\nload('a.npy', allow_pickle=True)",
        "anything(x, allow_pickle=True)",
        "import torch\ntorch.load('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=False)",
        "import torch\ntorch.load('m.pt', map_location='cpu', weights_only=flag)",
        "import torch.serialization\ntorch.serialization.load('m.pt')",
        "from torch import load\nload('m.pt')",
        "def f():\n    import pickle\n    return pickle.loads(b'')",
    ],
)
def test_an_unpickling_call_is_found(snippet: str) -> None:
    assert len(find_unpickling(snippet)) == 1, snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.dumps(obj)",
        "import numpy as np\nnp.load('a.npy')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=False)",
        "import torch\ntorch.load('m.pt', weights_only=True)",
        "import json\njson.loads(text)",
        "from safetensors.numpy import load_file\nload_file('m.safetensors')",
        "text = 'pickle.loads(data)'",
        "def load(x):\n    return x\nload(1)",
    ],
)
def test_safe_calls_pass(snippet: str) -> None:
    assert find_unpickling(snippet) == [], snippet


def test_a_failure_names_file_line_and_call() -> None:
    source = "import json\n\nimport torch\nmodel = torch.load(path)\n"
    assert find_unpickling(source, "client/x.py") == [
        "client/x.py:4: torch.load() without weights_only=True unpickles"
    ]
