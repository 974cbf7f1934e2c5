"""Dead letters: what the services could not handle, listed, explained, replayed once
or discarded (:mod:`a0ctl.dlq.store` reads and acts, :mod:`a0ctl.dlq.model` says what
an entry and an audit record are). ``a0ctl dlq`` is its command."""
