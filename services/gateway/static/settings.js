// The Settings dialog: the user's LLM provider (base URL, API key, model).
//
// "Test connection" tries the key with the provider through the gateway without storing
// it (POST /v1/settings/credentials/openai/test) and fills the model list from the
// provider's /models; "Save" stores it (PUT, checked again by the gateway). The key is
// never kept by the page: the field is cleared after saving and nothing goes to storage.
// While the dialog is open, Tab and Shift+Tab stay inside it; Escape closes it.

import { el, show } from "./dom.js";

const PROVIDER = "openai";
const $ = (id) => document.getElementById(id);

export function initSettings({ api }) {
  const dialog = $("settings");
  const baseUrl = $("settings-base-url");
  const apiKey = $("settings-api-key");
  const model = $("settings-model");
  let opener = null;

  function message(kind, text, code) {
    const error = $("settings-error");
    const status = $("settings-status");
    error.textContent = kind === "error" ? text : "";
    status.textContent = kind === "status" ? text : "";
    if (kind === "error" && code) error.dataset.code = code;
    else delete error.dataset.code;
    show(error, kind === "error" && Boolean(text));
    show(status, kind === "status" && Boolean(text));
  }

  function setModels(ids, selected) {
    const options = ids.length ? ids : [];
    model.replaceChildren(
      ...(options.length
        ? options.map((id) => el("option", { value: id, text: id }))
        : [el("option", { value: "", text: "Test the connection to list the models" })]),
    );
    model.value = selected && options.includes(selected) ? selected : options[0] || "";
    model.disabled = options.length === 0;
  }

  function showCredential(credential) {
    $("settings-key-masked").textContent = credential ? credential.key_masked || "(stored)" : "none";
    $("settings-updated").textContent =
      credential && credential.updated_at ? `updated ${new Date(credential.updated_at).toLocaleString()}` : "";
    $("settings-remove").disabled = !credential;
    apiKey.placeholder = credential ? "Enter the key again to change anything" : "sk-…";
    if (credential) {
      baseUrl.value = credential.base_url || "";
      setModels(credential.model ? [credential.model] : [], credential.model);
    } else {
      setModels([], null);
    }
  }

  async function open() {
    opener = document.activeElement;
    message(null);
    apiKey.value = "";
    if (!dialog.open) dialog.showModal();
    $("settings-key-masked").textContent = "loading…";
    try {
      const answer = await api("GET", "/v1/settings/credentials");
      const credential = ((answer && answer.credentials) || []).find((c) => c.provider === PROVIDER) || null;
      showCredential(credential);
      if (!credential) message("status", "No key stored: the stack's default provider is used.");
    } catch (error) {
      $("settings-key-masked").textContent = "unknown";
      message("error", error.message, error.code);
    }
    ((baseUrl.value && apiKey) || baseUrl).focus();
  }

  function missing(fields) {
    const names = { baseUrl: "the base URL", apiKey: "the API key", model: "a model" };
    const values = { baseUrl: baseUrl.value.trim(), apiKey: apiKey.value.trim(), model: model.value };
    const first = fields.find((field) => !values[field]);
    return first ? names[first] : null;
  }

  async function busy(button, label, work) {
    const text = button.textContent;
    button.disabled = true;
    button.textContent = label;
    try {
      await work();
    } finally {
      button.disabled = false;
      button.textContent = text;
    }
  }

  async function testConnection() {
    const absent = missing(["baseUrl", "apiKey"]);
    if (absent) {
      message("error", `Enter ${absent}, then test the connection.`, "missing_field");
      return;
    }
    await busy($("settings-test"), "Testing…", async () => {
      message("status", "Trying the key with the provider…");
      try {
        const answer = await api("POST", `/v1/settings/credentials/${PROVIDER}/test`, {
          base_url: baseUrl.value.trim(),
          api_key: apiKey.value.trim(),
        });
        const models = (answer && answer.models) || [];
        setModels(models, model.value);
        message(
          "status",
          models.length
            ? `Connected. ${models.length} model${models.length === 1 ? "" : "s"} available: pick one, then Save.`
            : "Connected, but the provider lists no models.",
        );
        model.focus();
      } catch (error) {
        message("error", error.message, error.code);
      }
    });
  }

  async function save(event) {
    event.preventDefault();
    const absent = missing(["baseUrl", "apiKey", "model"]);
    if (absent) {
      const hint = absent === "a model" ? " Press Test connection to list the provider's models." : "";
      message("error", `Enter ${absent}.${hint}`, "missing_field");
      return;
    }
    await busy($("settings-save"), "Checking…", async () => {
      message("status", "Checking the key with the provider…");
      try {
        const saved = await api("PUT", `/v1/settings/credentials/${PROVIDER}`, {
          base_url: baseUrl.value.trim(),
          model: model.value,
          api_key: apiKey.value.trim(),
        });
        apiKey.value = "";
        showCredential(saved);
        message("status", "Saved. The next message uses this key.");
      } catch (error) {
        message("error", error.message, error.code);
      }
    });
  }

  async function remove() {
    const button = $("settings-remove");
    button.disabled = true;
    try {
      await api("DELETE", `/v1/settings/credentials/${PROVIDER}`);
      showCredential(null);
      apiKey.value = "";
      message("status", "Removed. The stack's default provider is used again.");
    } catch (error) {
      if (error.status === 404) {
        showCredential(null);
        message("status", "No key was stored.");
      } else {
        button.disabled = false;
        message("error", error.message, error.code);
      }
    }
    $("settings-close").focus();
  }

  // Tab from the last control goes to the first, Shift+Tab from the first to the last.
  function trapFocus(event) {
    if (event.key !== "Tab") return;
    const focusable = [...dialog.querySelectorAll("button, input, select, textarea, [tabindex]")].filter(
      (node) => !node.disabled && !node.hidden && node.tabIndex >= 0 && node.getClientRects().length > 0,
    );
    if (!focusable.length) return;
    const first = focusable[0];
    const last = focusable[focusable.length - 1];
    const inside = dialog.contains(document.activeElement);
    if (event.shiftKey && (document.activeElement === first || !inside)) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && (document.activeElement === last || !inside)) {
      event.preventDefault();
      first.focus();
    }
  }

  dialog.addEventListener("keydown", trapFocus);
  dialog.addEventListener("close", () => {
    apiKey.value = "";
    if (opener && document.contains(opener) && typeof opener.focus === "function") opener.focus();
    opener = null;
  });
  $("settings-close").addEventListener("click", () => dialog.close());
  $("settings-form").addEventListener("submit", save);
  $("settings-test").addEventListener("click", testConnection);
  $("settings-remove").addEventListener("click", remove);
  setModels([], null);

  return { open, close: () => dialog.open && dialog.close() };
}
