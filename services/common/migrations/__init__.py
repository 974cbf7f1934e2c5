"""a0's schema migrations (alembic, SQL operations only): ``env.py`` runs them on the
connection :mod:`services.common.db` hands over; ``versions/`` holds one file per revision."""
