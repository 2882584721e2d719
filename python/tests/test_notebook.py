"""examples/quickstart.ipynb runs top to bottom (nbclient, a real Jupyter kernel), and what it
shows is right: the reward rebuilt from the cache, the plots drawn, the audit report written."""

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def test_quickstart_notebook_runs(tmp_path):
    nb = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the lens and attribution plots"
    assert (tmp_path / "audit-out" / "report.html").stat().st_size > 10_000
    assert (tmp_path / "audit-out" / "results.json").exists()
