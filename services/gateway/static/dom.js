// The few DOM helpers every module of the chat UI uses.

/** The element of the page with this id. */
export const $ = (id) => document.getElementById(id);

/** An element with attributes ("class", "text", "on<event>" handlers, others as given) and children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function show(node, visible = true) {
  node.hidden = !visible;
}
