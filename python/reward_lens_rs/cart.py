"""Circuit-Aware Reward Training: discover tail circuits, check them against the ablation
oracle, score their vulnerability, the tail-generalisation bound, circuit-aware training, and the
arms-by-organisms table."""

from ._native import cart_bound as bound
from ._native import cart_discover as discover
from ._native import cart_oracle as oracle
from ._native import cart_table as table
from ._native import cart_train as train
from ._native import cart_vulnerability as vulnerability

__all__ = ["bound", "discover", "oracle", "table", "train", "vulnerability"]
