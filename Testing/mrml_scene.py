"""Shared by the MRML tests: an oblique, anisotropic IJK-to-RAS matrix; a node that only its own thread may read."""

from __future__ import annotations

import math
import threading

import numpy as np


def oblique(rot_z: float, rot_x: float, spacing: tuple[float, float, float],
            origin: tuple[float, float, float]) -> np.ndarray:
    """4x4 IJK-to-RAS: rotation about z then x (degrees), anisotropic spacing (mm), an offset origin."""
    a, b = math.radians(rot_z), math.radians(rot_x)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx @ np.diag(spacing)
    m[:3, 3] = origin
    return m


class MainThreadOnly:
    """A node that refuses to be read from any thread but the one that made it."""

    def __init__(self, node):
        self._node, self._thread = node, threading.get_ident()

    def __getattr__(self, name):
        if threading.get_ident() != self._thread:
            raise AssertionError(f"MRML read on the worker thread: {name}")
        return getattr(self._node, name)
