"""a0ctl: brings the a0 stack up on real services and operates it."""
