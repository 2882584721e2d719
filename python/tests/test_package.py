"""The package's surface: every public name has a stub whose parameters are the runtime
signature's, and help() has something to teach for each."""

import ast
import inspect
from pathlib import Path

import pytest

import reward_lens_rs as rl
from conftest import REPO

PKG = Path(rl.__file__).parent


def stub_functions(path):
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = node
        elif isinstance(node, ast.ClassDef):
            out[node.name] = node
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    out[f"{node.name}.{item.name}"] = item
    return out


def params(fn_node):
    a = fn_node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return [n for n in names if n != "self"]


def runtime_params(obj):
    sig = inspect.signature(obj)
    return [("**" + p.name) if p.kind is p.VAR_KEYWORD else p.name for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("stub,module", [("__init__.pyi", rl), ("sae.pyi", rl.sae), ("cart.pyi", rl.cart)])
def test_stubs_match_runtime_signatures(stub, module):
    stubs = stub_functions(PKG / stub)
    names = module.__all__
    for name in names:
        obj = getattr(module, name)
        if inspect.ismodule(obj) or name == "__version__":
            continue
        assert name in stubs, f"{stub}: no stub for {name}"
        if isinstance(obj, type):
            if issubclass(obj, Exception):
                continue
            for attr, member in vars(obj).items():
                if callable(member) and not attr.startswith("__"):
                    assert f"{name}.{attr}" in stubs, f"{stub}: no stub for {name}.{attr}"
                    assert params(stubs[f"{name}.{attr}"]) == runtime_params(member), f"{name}.{attr}"
        else:
            assert params(stubs[name]) == runtime_params(obj), name


def test_every_public_callable_has_a_docstring():
    for module in (rl, rl.sae, rl.cart):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not (isinstance(obj, type) and issubclass(obj, Exception)):
                doc = inspect.getdoc(obj) or ""
                assert len(doc) > 40, f"{module.__name__}.{name} has no real docstring"


def test_version_is_the_workspace_version():
    cargo = (REPO / "Cargo.toml").read_text()
    assert f'version = "{rl.__version__}"' in cargo
