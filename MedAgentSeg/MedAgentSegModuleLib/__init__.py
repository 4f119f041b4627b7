"""The logic shared by the MedAgentSeg Slicer module and the browser app (an installable package: pip install -e .).

Slicer treats every .py file directly in a module folder as a module, so the helpers live here. `agent_logic`
(`AgentSegLogic`, the facade with every public verb) wires the parts: ``runs``, ``opening``, ``agent_turns``,
``turn_writer``, ``markups_sync``, ``propagation``, ``factories``, ``wording``, ``trajectory`` (each given a small
``context.Context``). ``mrml_writer`` re-exports the MRML parts: ``mrml_volume``, ``slice_writer``, ``prompt_nodes``,
``sequence_recorders``. Also ``geometry`` (numpy only), ``review_queue``, ``autostart``, ``chat``, ``words``,
``worker`` (the persistent model thread) and ``deps`` (first-use dependency install).
Nothing is imported eagerly, so importing this package has no side effects.
"""

__all__ = ["geometry", "mrml_writer", "agent_logic", "worker", "deps"]
