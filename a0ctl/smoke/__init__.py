"""``a0ctl smoke``: one check per concern, each with a pass/fail mark and a reason."""
