"""The tool executor is never root: started as root, it becomes the tool user.

It drops right after start-up, once it has bound its metrics port and imported what
it runs (the interpreter under ``/root`` may not be readable later). Its groups, gid and
uid all change, so no capability and no supplementary group of root is kept.
"""

from __future__ import annotations

import logging
import os
import pwd

from services.common.errors import ConfigError

log = logging.getLogger(__name__)


class PrivilegeError(ConfigError):
    """The executor runs as root and cannot become the tool user."""


def drop_root(user: str) -> None:
    """Become ``user`` if running as root; a no-op otherwise."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"the tool executor runs as root and there is no user {user!r} to drop to: "
            "run scripts/bootstrap.sh (it creates it) or set A0_TOOLS_RUN_AS"
        ) from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"A0_TOOLS_RUN_AS={user!r} is root; name an unprivileged user")
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    if os.geteuid() == 0 or os.getuid() == 0:  # setuid is all or nothing, but be sure
        raise PrivilegeError("could not drop root")
    log.info("running as %s (uid %d)", user, entry.pw_uid)
