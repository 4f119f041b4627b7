"""Evaluation harness for interactive segmentation engines (box / clicks / NoC / agent protocols).

Importing this package does not import torch; the engines are built only when a run starts.
"""

from __future__ import annotations

from ..datasets import DatasetError, Instance, Skip, list_instances, load_instance, read_dataset, split_patients
from .harness import evaluate, format_table, plot_dice, summarize
from .protocols import PROTOCOLS, run_instance

__all__ = ["DatasetError", "Instance", "Skip", "list_instances", "load_instance", "read_dataset", "split_patients",
           "evaluate", "format_table", "plot_dice", "summarize", "PROTOCOLS", "run_instance"]
