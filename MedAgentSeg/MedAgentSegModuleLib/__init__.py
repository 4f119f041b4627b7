"""Helpers of the MedAgentSeg Slicer module.

Slicer treats every .py file directly in a module folder as a module, so the helpers live here:
``geometry`` (numpy only), ``mrml_writer`` and ``agent_logic`` (MRML/VTK + numpy + MedAgentSegLib, no Qt),
``worker`` (the persistent model thread) and ``deps`` (first-use dependency install).
Nothing is imported eagerly, so importing this package has no side effects.
"""

__all__ = ["geometry", "mrml_writer", "agent_logic", "worker", "deps"]
