"""The fault tier: the stack of the integration tier, then processes killed and services
restarted under load; supervision alone must bring everything back."""

from tests.support.stack import settings, stack

__all__ = ["settings", "stack"]
