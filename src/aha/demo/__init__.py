"""`aha demo`: RL surpasses its teacher, and thinking longer emerges, on a laptop CPU (see docs/demo.md)."""

from aha.demo.pipeline import DemoConfig, DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "run_demo"]
