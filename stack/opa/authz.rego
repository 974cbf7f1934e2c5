# a0 authorization policy.
#
# Services query POST /v1/data/a0/authz/decision with {"input": <input>} and read
# result = {"allow": bool, "reason": str}. The decision is always defined: anything
# not explicitly allowed is denied with a short human-readable reason.
#
# Input contract:
#   {
#     "action": "conversation.create" | "conversation.list" | "conversation.read"
#             | "conversation.write" | "conversation.cancel" | "conversation.delete"
#             | "tool.call"
#             | "credentials.read" | "credentials.set" | "credentials.delete"
#             | "credentials.use" | "credentials.egress"
#             | "ops.read" | "ops.act",
#     "subject": {"user_id": "alice", "roles": ["user"]},
#     "resource": {"owner_id": "alice", "conversation_id": "c1",
#                  "tool": "calculator", "provider": "openai",
#                  # credentials.egress: a base URL and the addresses its host resolves to
#                  "url": {"scheme": "https", "host": "api.example.com", "port": 443},
#                  "addresses": ["93.184.215.14"]}
#   }
#
# Data (data.json): data.a0.tools.allowed, data.a0.tools.restricted[tool] (roles
# of which the subject needs one), data.a0.credentials.providers,
# data.a0.credentials.egress.{private_allowed, reserved_ranges}; and, written by the
# local runtime for its own simulator, data.a0_local.egress_allowed; and, rendered from
# mcp.yaml (services/common/mcp_servers.py), data.a0_mcp.tools[tool] = {"server",
# "users", "roles"}: who may call each MCP server's tool.
package a0.authz

conversation_actions := {
	"conversation.create",
	"conversation.list",
	"conversation.read",
	"conversation.write",
	"conversation.cancel",
	"conversation.delete",
}

# Conversation actions an admin may perform on conversations of other users.
conversation_read_actions := {"conversation.list", "conversation.read"}

tool_actions := {"tool.call"}

credential_actions := {
	"credentials.read",
	"credentials.set",
	"credentials.delete",
	"credentials.use",
}

# Where a credential's base URL may point (asked before a key is verified or stored).
egress_actions := {"credentials.egress"}

# The ops page: reading the stack's figures, services, topics, traces and dead letters,
# and acting on dead letters. Admins only.
ops_actions := {"ops.read", "ops.act"}

known_actions := (((conversation_actions | tool_actions) | credential_actions) | egress_actions) | ops_actions

# --- The decision ------------------------------------------------------------

default decision := {"allow": false, "reason": "denied: invalid input"}

decision := refuse("missing action") if {
	action == ""
} else := refuse(sprintf("unknown action %v", [action])) if {
	not action in known_actions
} else := refuse("missing subject.user_id") if {
	not authenticated
} else := conversation_decision if {
	action in conversation_actions
} else := tool_decision if {
	action in tool_actions
} else := credentials_decision if {
	action in credential_actions
} else := egress_decision if {
	action in egress_actions
} else := ops_decision if {
	action in ops_actions
}

# Convenience views of the decision.
allow := decision.allow

reason := decision.reason

# --- Input accessors (tolerant of missing or mistyped fields) ----------------

default action := ""

action := input.action if is_string(input.action)

default user_id := ""

user_id := input.subject.user_id if is_string(input.subject.user_id)

authenticated if trim_space(user_id) != ""

default roles := set()

roles := {r | some r in input.subject.roles; is_string(r)} if is_array(input.subject.roles)

is_admin if "admin" in roles

default resource_field(_) := ""

resource_field(name) := input.resource[name] if is_string(input.resource[name])

owner_id := resource_field("owner_id")

conversation_id := resource_field("conversation_id")

tool := resource_field("tool")

provider := resource_field("provider")

is_owner if {
	owner_id != ""
	user_id == owner_id
}

permit(msg) := {"allow": true, "reason": concat("", ["allowed: ", msg])}

refuse(msg) := {"allow": false, "reason": concat("", ["denied: ", msg])}

# --- Conversations -------------------------------------------------------------

conversation_target := sprintf("conversation %v", [conversation_id]) if {
	conversation_id != ""
} else := sprintf("conversations of %v", [owner_id]) if {
	owner_id != ""
} else := "conversation with unknown owner"

conversation_decision := permit("authenticated user") if {
	action == "conversation.create"
} else := refuse("resource.owner_id missing") if {
	owner_id == ""
} else := permit("owner") if {
	is_owner
} else := permit("admin read") if {
	is_admin
	action in conversation_read_actions
} else := refuse(sprintf("admin %v may read but not modify %v", [user_id, conversation_target])) if {
	is_admin
} else := refuse(sprintf("user %v does not own %v", [user_id, conversation_target]))

# --- Tools ---------------------------------------------------------------------

tool_required_roles := {r | some r in data.a0.tools.restricted[tool]}

tool_decision := refuse("resource.tool missing") if {
	tool == ""
} else := mcp_tool_decision if {
	data.a0_mcp.tools[tool]
} else := refuse(sprintf("tool %v is not allowed", [tool])) if {
	not tool in data.a0.tools.allowed
} else := refuse(sprintf("tool %v requires one of roles %v", [tool, concat(", ", sort(tool_required_roles))])) if {
	data.a0.tools.restricted[tool]
	count(tool_required_roles & roles) == 0
} else := permit(sprintf("tool %v", [tool]))

# MCP servers' tools: mcp.yaml names the users and roles that may call them.
mcp_tool := data.a0_mcp.tools[tool]

mcp_tool_decision := permit(sprintf("%v is offered to user %v", [tool, user_id])) if {
	user_id in mcp_tool.users
} else := permit(sprintf("%v is offered to role %v", [tool, concat(", ", sort(roles & {r | some r in mcp_tool.roles}))])) if {
	count(roles & {r | some r in mcp_tool.roles}) > 0
} else := refuse(sprintf("user %v may not call %v (MCP server %v: mcp.yaml offers it to users [%v] and roles [%v])", [user_id, tool, mcp_tool.server, concat(", ", mcp_tool.users), concat(", ", mcp_tool.roles)]))

# --- Credentials -------------------------------------------------------------

# credentials.read may list every provider (no provider given); the others name one.
provider_required if action != "credentials.read"

credentials_decision := refuse("resource.owner_id missing") if {
	owner_id == ""
} else := refuse("resource.provider missing") if {
	provider == ""
	provider_required
} else := refuse(sprintf("provider %v is not supported", [provider])) if {
	provider != ""
	not provider in data.a0.credentials.providers
} else := permit("owner") if {
	is_owner
} else := permit("admin read (masked)") if {
	is_admin
	action == "credentials.read"
} else := refuse(sprintf("user %v does not own credentials of %v", [user_id, owner_id]))

# --- Where a credential's base URL may point ------------------------------------
#
# Public HTTPS by default. Loopback, private, link-local and other reserved ranges only
# for allow-listed host:port names (the simulator). The service resolves the host first
# and sends every address, so a public name that resolves inward is refused too. The
# reasons never depend on whether anything listens at the target.

default egress_url := {}

egress_url := input.resource.url if is_object(input.resource.url)

default egress_addresses := []

egress_addresses := input.resource.addresses if is_array(input.resource.addresses)

egress_target := sprintf("%v:%v", [lower(egress_url.host), egress_url.port])

egress_allow_listed contains name if {
	some name in data.a0.credentials.egress.private_allowed
}

egress_allow_listed contains name if {
	some name in data.a0_local.egress_allowed
}

egress_reserved(address) if {
	some cidr in data.a0.credentials.egress.reserved_ranges
	net.cidr_contains(cidr, address)
}

egress_decision := refuse("resource.url missing") if {
	not is_string(egress_url.host)
} else := refuse("the base URL's host has no address") if {
	count(egress_addresses) == 0
} else := permit(sprintf("%v is allow-listed", [egress_target])) if {
	egress_target in egress_allow_listed
} else := refuse("base URLs must use https") if {
	egress_url.scheme != "https"
} else := refuse("the base URL's host is a loopback, private or reserved address") if {
	some address in egress_addresses
	egress_reserved(address)
} else := permit("public https")

# --- The ops page --------------------------------------------------------------------

ops_decision := permit("admin") if {
	is_admin
} else := refuse(sprintf("%v is for admins", [action]))
