package a0.authz_test

import data.a0.authz

# --- helpers -------------------------------------------------------------------

subject(user, roles) := {"user_id": user, "roles": roles}

alice := subject("alice", ["user"])

bob := subject("bob", ["user"])

root := subject("root", ["user", "admin"])

conv := {"owner_id": "alice", "conversation_id": "c1"}

req(action, subj, resource) := {"action": action, "subject": subj, "resource": resource}

decide(inp) := d if {
	d := authz.decision with input as inp
}

# --- always defined --------------------------------------------------------------

test_decision_defined_without_input if {
	d := authz.decision
	d.allow == false
	d.reason == "denied: missing action"
}

test_decision_shape if {
	d := decide(req("conversation.read", alice, conv))
	object.keys(d) == {"allow", "reason"}
	authz.allow with input as req("conversation.read", alice, conv)
	authz.reason == "allowed: owner" with input as req("conversation.read", alice, conv)
}

test_unknown_action_denied if {
	decide(req("conversation.delete_everything", alice, conv)) == {
		"allow": false,
		"reason": "denied: unknown action conversation.delete_everything",
	}
}

test_missing_action_denied if {
	decide({"subject": alice, "resource": conv}) == {"allow": false, "reason": "denied: missing action"}
}

test_non_string_action_denied if {
	not decide(req(42, alice, conv)).allow
}

test_missing_user_denied if {
	decide(req("conversation.create", {"roles": ["user"]}, {})) == {
		"allow": false,
		"reason": "denied: missing subject.user_id",
	}
}

test_empty_user_denied if {
	not decide(req("conversation.create", subject("", ["user"]), {})).allow
	not decide(req("conversation.create", subject("   ", ["admin"]), {})).allow
}

test_missing_subject_denied if {
	d := decide({"action": "conversation.read", "resource": conv})
	d.reason == "denied: missing subject.user_id"
}

test_missing_user_denied_for_every_action if {
	every a in authz.known_actions {
		d := decide(req(a, {"roles": ["admin"]}, {"owner_id": "", "tool": "calculator", "provider": "openai"}))
		d == {"allow": false, "reason": "denied: missing subject.user_id"}
	}
}

# --- conversation.create -------------------------------------------------------------

test_conversation_create_allowed if {
	decide(req("conversation.create", alice, {})) == {"allow": true, "reason": "allowed: authenticated user"}
}

test_conversation_create_without_roles_allowed if {
	decide({"action": "conversation.create", "subject": {"user_id": "alice"}}).allow
}

test_conversation_create_denied_without_user if {
	not decide({"action": "conversation.create", "subject": {}}).allow
}

# --- conversation.list / read ----------------------------------------------------------

test_conversation_list_owner_allowed if {
	decide(req("conversation.list", alice, {"owner_id": "alice"})) == {"allow": true, "reason": "allowed: owner"}
}

test_conversation_list_other_denied if {
	decide(req("conversation.list", bob, {"owner_id": "alice"})) == {
		"allow": false,
		"reason": "denied: user bob does not own conversations of alice",
	}
}

test_conversation_list_admin_allowed if {
	decide(req("conversation.list", root, {"owner_id": "alice"})) == {"allow": true, "reason": "allowed: admin read"}
}

test_conversation_read_owner_allowed if {
	decide(req("conversation.read", alice, conv)) == {"allow": true, "reason": "allowed: owner"}
}

test_conversation_read_other_denied if {
	decide(req("conversation.read", bob, conv)) == {
		"allow": false,
		"reason": "denied: user bob does not own conversation c1",
	}
}

test_conversation_read_admin_allowed if {
	decide(req("conversation.read", root, conv)) == {"allow": true, "reason": "allowed: admin read"}
}

test_conversation_read_missing_owner_denied if {
	decide(req("conversation.read", alice, {"conversation_id": "c1"})) == {
		"allow": false,
		"reason": "denied: resource.owner_id missing",
	}
}

test_conversation_read_missing_resource_denied if {
	not decide({"action": "conversation.read", "subject": alice}).allow
}

# --- conversation.write / cancel ---------------------------------------------------------

test_conversation_write_owner_allowed if {
	decide(req("conversation.write", alice, conv)) == {"allow": true, "reason": "allowed: owner"}
}

test_conversation_write_other_denied if {
	decide(req("conversation.write", bob, conv)) == {
		"allow": false,
		"reason": "denied: user bob does not own conversation c1",
	}
}

test_conversation_write_admin_denied if {
	decide(req("conversation.write", root, conv)) == {
		"allow": false,
		"reason": "denied: admin root may read but not modify conversation c1",
	}
}

test_conversation_cancel_owner_allowed if {
	decide(req("conversation.cancel", alice, conv)).allow
}

test_conversation_cancel_other_denied if {
	decide(req("conversation.cancel", bob, conv)) == {
		"allow": false,
		"reason": "denied: user bob does not own conversation c1",
	}
}

test_conversation_cancel_admin_denied if {
	not decide(req("conversation.cancel", root, conv)).allow
}

# --- conversation.delete: the owner only; an admin may read but never delete ----------------

test_conversation_delete_owner_allowed if {
	decide(req("conversation.delete", alice, conv)) == {"allow": true, "reason": "allowed: owner"}
}

test_conversation_delete_other_denied if {
	decide(req("conversation.delete", bob, conv)) == {
		"allow": false,
		"reason": "denied: user bob does not own conversation c1",
	}
}

test_conversation_delete_admin_denied if {
	decide(req("conversation.delete", root, conv)) == {
		"allow": false,
		"reason": "denied: admin root may read but not modify conversation c1",
	}
}

test_conversation_delete_without_owner_denied if {
	decide(req("conversation.delete", alice, {"conversation_id": "c1"})) == {
		"allow": false,
		"reason": "denied: resource.owner_id missing",
	}
}

test_admin_owner_may_write_own_conversation if {
	decide(req("conversation.write", root, {"owner_id": "root", "conversation_id": "c9"})).allow
}

# --- tool.call -------------------------------------------------------------------------

test_tool_call_allowed if {
	decide(req("tool.call", alice, {"tool": "calculator"})) == {"allow": true, "reason": "allowed: tool calculator"}
	decide(req("tool.call", alice, {"tool": "current_time"})).allow
}

test_tool_call_unlisted_denied if {
	decide(req("tool.call", alice, {"tool": "shell"})) == {
		"allow": false,
		"reason": "denied: tool shell is not allowed",
	}
}

test_tool_call_missing_tool_denied if {
	decide(req("tool.call", alice, {})) == {"allow": false, "reason": "denied: resource.tool missing"}
}

test_tool_call_restricted_with_role_allowed if {
	decide(req("tool.call", alice, {"tool": "run_python"})).allow
	decide(req("tool.call", subject("ops", ["admin"]), {"tool": "run_python"})).allow
}

test_tool_call_restricted_without_role_denied if {
	decide(req("tool.call", subject("guest", ["viewer"]), {"tool": "run_python"})) == {
		"allow": false,
		"reason": "denied: tool run_python requires one of roles admin, user",
	}
	not decide(req("tool.call", {"user_id": "guest"}, {"tool": "run_python"})).allow
}

test_tool_call_follows_data if {
	inp := req("tool.call", alice, {"tool": "shell"})
	decide(inp).allow with data.a0.tools.allowed as ["shell"]
	not decide(req("tool.call", alice, {"tool": "calculator"})).allow with data.a0.tools.allowed as ["shell"]
	not decide(inp).allow with data.a0.tools.allowed as ["shell"] with data.a0.tools.restricted as {"shell": ["admin"]}
}

# --- credentials ------------------------------------------------------------------------

cred := {"owner_id": "alice", "provider": "openai"}

test_credentials_owner_allowed_for_every_action if {
	every a in authz.credential_actions {
		decide(req(a, alice, cred)) == {"allow": true, "reason": "allowed: owner"}
	}
}

test_credentials_other_user_denied_for_every_action if {
	every a in authz.credential_actions {
		decide(req(a, bob, cred)) == {
			"allow": false,
			"reason": "denied: user bob does not own credentials of alice",
		}
	}
}

test_credentials_read_admin_allowed if {
	decide(req("credentials.read", root, cred)) == {"allow": true, "reason": "allowed: admin read (masked)"}
	decide(req("credentials.read", root, {"owner_id": "alice"})).allow
}

test_credentials_set_admin_denied if {
	not decide(req("credentials.set", root, cred)).allow
}

test_credentials_delete_admin_denied if {
	not decide(req("credentials.delete", root, cred)).allow
}

test_credentials_use_admin_denied if {
	not decide(req("credentials.use", root, cred)).allow
}

test_credentials_read_listing_without_provider_allowed if {
	decide(req("credentials.read", alice, {"owner_id": "alice"})).allow
}

test_credentials_set_unsupported_provider_denied if {
	decide(req("credentials.set", alice, {"owner_id": "alice", "provider": "acme"})) == {
		"allow": false,
		"reason": "denied: provider acme is not supported",
	}
}

test_credentials_use_unsupported_provider_denied if {
	not decide(req("credentials.use", alice, {"owner_id": "alice", "provider": "acme"})).allow
}

test_credentials_set_missing_provider_denied if {
	decide(req("credentials.set", alice, {"owner_id": "alice"})) == {
		"allow": false,
		"reason": "denied: resource.provider missing",
	}
}

test_credentials_delete_missing_owner_denied if {
	decide(req("credentials.delete", alice, {"provider": "openai"})) == {
		"allow": false,
		"reason": "denied: resource.owner_id missing",
	}
}

test_credentials_providers_follow_data if {
	inp := req("credentials.set", alice, {"owner_id": "alice", "provider": "acme"})
	decide(inp).allow with data.a0.credentials.providers as ["openai", "acme"]
}

# --- where a credential's base URL may point ----------------------------------------

egress(scheme, host, port, addresses) := decide(req(
	"credentials.egress", alice,
	{"url": {"scheme": scheme, "host": host, "port": port}, "addresses": addresses},
))

test_egress_public_https_allowed if {
	egress("https", "api.openai.com", 443, ["162.159.140.245"]).allow
}

test_egress_plain_http_to_a_public_host_denied if {
	d := egress("http", "api.openai.com", 80, ["162.159.140.245"])
	not d.allow
	d.reason == "denied: base URLs must use https"
}

test_egress_loopback_and_private_denied if {
	every address in ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1"] {
		not egress("https", "example.test", 443, [address]).allow
	}
}

test_egress_every_address_checked if {
	# A public name that also resolves inward is refused.
	not egress("https", "rebind.example", 443, ["162.159.140.245", "127.0.0.1"]).allow
}

test_egress_allow_listed_simulator if {
	egress("http", "llm-sim", 8000, ["172.18.0.5"]).allow
	egress("http", "127.0.0.1", 18000, ["127.0.0.1"]).allow with data.a0_local.egress_allowed as ["127.0.0.1:18000"]
}

test_egress_allow_list_is_by_port if {
	# The simulator's name does not open the other ports of its host (OPA, metrics ...).
	not egress("http", "127.0.0.1", 18181, ["127.0.0.1"]).allow with data.a0_local.egress_allowed as ["127.0.0.1:18000"]
	not egress("http", "llm-sim", 9101, ["172.18.0.5"]).allow
}

test_egress_same_reason_for_any_port if {
	a := egress("http", "127.0.0.1", 18181, ["127.0.0.1"])
	b := egress("http", "127.0.0.1", 1, ["127.0.0.1"])
	a.reason == b.reason
}

test_egress_without_url_or_addresses_denied if {
	not decide(req("credentials.egress", alice, {})).allow
	not egress("https", "nowhere.example", 443, []).allow
}

# --- MCP servers' tools (data.a0_mcp, rendered from mcp.yaml) ------------------

mcp_data := {"tools": {
	"time__get_current_time": {"server": "time", "users": [], "roles": ["user"]},
	"files__read_text_file": {"server": "files", "users": ["bob"], "roles": ["admin"]},
}}

test_mcp_tool_allowed_by_role if {
	d := decide(req("tool.call", alice, {"tool": "time__get_current_time"})) with data.a0_mcp as mcp_data
	d.allow
	d.reason == "allowed: time__get_current_time is offered to role user"
}

test_mcp_tool_allowed_by_user if {
	decide(req("tool.call", {"user_id": "bob", "roles": ["user"]}, {"tool": "files__read_text_file"})).allow with data.a0_mcp as mcp_data
}

test_mcp_tool_refused_with_a_reason if {
	d := decide(req("tool.call", alice, {"tool": "files__read_text_file"})) with data.a0_mcp as mcp_data
	not d.allow
	d.reason == "denied: user alice may not call files__read_text_file (MCP server files: mcp.yaml offers it to users [bob] and roles [admin])"
}

test_mcp_tool_unknown_without_data if {
	not decide(req("tool.call", alice, {"tool": "time__get_current_time"})).allow
}

# --- The ops page --------------------------------------------------------------------

test_ops_admin_allowed if {
	every a in {"ops.read", "ops.act"} {
		decide(req(a, root, {})) == {"allow": true, "reason": "allowed: admin"}
	}
}

test_ops_user_denied if {
	every a in {"ops.read", "ops.act"} {
		decide(req(a, alice, {})) == {"allow": false, "reason": sprintf("denied: %v is for admins", [a])}
	}
}
