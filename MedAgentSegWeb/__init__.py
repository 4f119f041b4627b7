"""MedAgentSeg in the browser: `medagentseg web`, a trame-slicer app over the Slicer module's own logic.

One logic, two front ends: `MedAgentSeg/MedAgentSegModuleLib/agent_logic.py` (AgentSegLogic, no Qt, no trame)
drives the sessions in both the Slicer module and this app. trame is imported only in `app`; `review` and `files`
are plain MRML. Nothing is imported here, so importing the package has no side effects.
"""

__all__ = ["app", "review", "files"]
