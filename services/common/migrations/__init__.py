"""a0's schema migrations (alembic, SQL operations only): ``env.py`` runs them on the
connection :mod:`services.common.db` hands over; ``versions/`` holds one file per revision."""

from pathlib import Path

# alembic's script directory: this package.
MIGRATIONS = Path(__file__).resolve().parent
