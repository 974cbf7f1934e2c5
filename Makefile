# The two set-up commands of the README.
.PHONY: up test down bootstrap

bootstrap:
	./scripts/bootstrap.sh

up: bootstrap
	.venv/bin/a0ctl up
	.venv/bin/a0ctl smoke

test:
	./scripts/test.sh

down:
	.venv/bin/a0ctl down
