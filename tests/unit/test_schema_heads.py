"""The migration scripts' head, as services read it without alembic, is alembic's."""

from __future__ import annotations

import pytest

from services.common.db import script_heads
from services.common.schema import script_directory

pytestmark = pytest.mark.unit


def test_the_scripts_head_read_without_alembic_is_alembics() -> None:
    assert script_heads() == set(script_directory().get_heads())
    assert len(script_heads()) == 1
