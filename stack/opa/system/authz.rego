# Who may talk to OPA at all (OPA's own API authorization: `opa run --authentication=token
# --authorization=basic` asks this for every request). Without it any local process could
# rewrite the policy or the egress allow-list with a PUT.
#   - a0's services (A0_OPA_TOKEN) ask the one decision they need;
#   - a0ctl and its tests (A0_OPA_ADMIN_TOKEN) read and change policies and data;
#   - anyone may ask /health, which tells nothing.
# Both tokens are generated into conf/env/secrets.env by `a0ctl up` and reach OPA in its
# environment only.
package system.authz

import rego.v1

default allow := false

allow if input.path == ["health"]

allow if {
	admin_token != ""
	input.identity == admin_token
}

allow if {
	service_token != ""
	input.identity == service_token
	input.method == "POST"
	input.path == ["v1", "data", "a0", "authz", "decision"]
}

admin_token := object.get(opa.runtime().env, "A0_OPA_ADMIN_TOKEN", "")

service_token := object.get(opa.runtime().env, "A0_OPA_TOKEN", "")
