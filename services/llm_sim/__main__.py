"""``python -m services.llm_sim``: run the simulator with the stack's settings."""

from __future__ import annotations

from services.common.settings import load_settings
from services.llm_sim.main import serve

if __name__ == "__main__":
    serve(load_settings())
