package system.authz_test

import data.system.authz
import rego.v1

decide(path, method, identity) if {
	authz.allow with input as {"path": path, "method": method, "identity": identity}
		with authz.admin_token as "admin-secret"
		with authz.service_token as "service-secret"
}

anonymous(path, method) if {
	authz.allow with input as {"path": path, "method": method}
		with authz.admin_token as "admin-secret"
		with authz.service_token as "service-secret"
}

decision_path := ["v1", "data", "a0", "authz", "decision"]

test_health_is_open if anonymous(["health"], "GET")

test_anonymous_cannot_decide if not anonymous(decision_path, "POST")

test_anonymous_cannot_write_policy if not anonymous(["v1", "policies", "x"], "PUT")

test_anonymous_cannot_write_data if not anonymous(["v1", "data", "a0_local", "egress_allowed"], "PUT")

test_service_decides if decide(decision_path, "POST", "service-secret")

test_service_cannot_write_data if not decide(["v1", "data", "a0_local"], "PUT", "service-secret")

test_service_cannot_write_policy if not decide(["v1", "policies", "x"], "PUT", "service-secret")

test_service_cannot_read_other_data if not decide(["v1", "data"], "GET", "service-secret")

test_admin_writes_policy if decide(["v1", "policies", "x"], "PUT", "admin-secret")

test_wrong_token_is_refused if not decide(decision_path, "POST", "guess")

test_unset_tokens_let_nobody_in if {
	not authz.allow with input as {"path": decision_path, "method": "POST", "identity": ""}
		with authz.admin_token as ""
		with authz.service_token as ""
}
