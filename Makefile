# The set-up commands of the README.
.PHONY: up test down bootstrap upgrade

bootstrap:
	./scripts/bootstrap.sh

up: bootstrap
	.venv/bin/a0ctl up
	.venv/bin/a0ctl smoke

test:
	./scripts/test.sh

down:
	.venv/bin/a0ctl down

# Every Python dependency to its newest release that pyproject.toml allows: rewrites
# uv.lock, then installs it. Commit uv.lock with what the upgrade needed.
upgrade:
	./scripts/uv.sh lock --upgrade
	./scripts/bootstrap.sh
