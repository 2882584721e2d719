"""Back from numpy to JSON-ready data, e.g. to write a report as the command would."""

from __future__ import annotations

import numpy as np


def to_json(obj):
    """`obj` with every numpy array a (nested) list and numpy scalars Python numbers, so that
    json.dumps(to_json(report)) works and compares with the command's --out file."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    return obj
