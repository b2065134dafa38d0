"""What operators read about a flow: its statistics (``statistics``) and its graph with live
counts per step (``diagram``). Read-only, from the engine's tables and Temporal's histories."""
