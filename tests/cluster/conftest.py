"""The cluster tier: the stack with three KRaft nodes (``A0_PROFILE=cluster``), each a
process of its own, topics replicated 3 with ``min.insync.replicas=2`` from
topics.yaml's staging section; brought up by the same code as ``a0ctl up``."""

import os

# Before any settings are read; inherited by every process the tests start.
os.environ["A0_PROFILE"] = "cluster"

from tests.support.stack import settings, stack  # noqa: E402

__all__ = ["settings", "stack"]
