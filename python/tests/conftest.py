"""Shared fixtures: the repository's committed fixture models and pairs, and the command-line
binary for parity checks (built by `cargo test`/`cargo build`)."""

import os
import shutil
from pathlib import Path

import pytest

import reward_lens_rs as rl

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODELS = FIXTURES / "models"
PAIRS = FIXTURES / "pairs.jsonl"


@pytest.fixture(scope="session")
def llama():
    return rl.load(MODELS / "llama")


@pytest.fixture(scope="session")
def pairs_path():
    return PAIRS


def cli_binary():
    """The `reward-lens` binary: $REWARD_LENS_BIN, else target/{debug,release}/ in the repo.
    With REWARD_LENS_REQUIRE_CLI=1 (CI) a missing binary fails the parity tests instead of
    skipping them."""
    env = os.environ.get("REWARD_LENS_BIN")
    candidates = [Path(env)] if env else [REPO / "target" / "debug" / "reward-lens", REPO / "target" / "release" / "reward-lens"]
    found = [c for c in candidates if c.exists()]
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    if os.environ.get("REWARD_LENS_REQUIRE_CLI") == "1":
        pytest.fail(f"reward-lens binary not found (looked at {candidates}); run cargo build first")
    pytest.skip("reward-lens binary not built (cargo build); parity with the command not checked")


@pytest.fixture(scope="session")
def cli():
    return cli_binary()


def close(a, b, rel=1e-5, abs_=1e-6, path="$"):
    """Asserts two JSON-like values are equal, numbers to float rounding, naming the first
    differing path."""
    if isinstance(a, dict):
        assert isinstance(b, dict), f"{path}: dict vs {type(b).__name__}"
        assert sorted(a) == sorted(b), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            close(a[k], b[k], rel, abs_, f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, rel, abs_, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None, f"{path}: {a} vs {b}"
        assert abs(a - b) <= abs_ + rel * max(abs(a), abs(b)), f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"
