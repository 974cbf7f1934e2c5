// The chat's state that more than one module reads: who is signed in, which conversation
// is open, and the turns drawn of it. Each field has one or two writers, named beside
// it; the others only read it. (A module's own state stays private to that module.)

export const state = {
  token: null, // signin.js: the bearer token of the signed-in session
  user: null, // signin.js: the name shown in the sidebar
  admin: false, // app.js: the ops page is open to this user: each turn links to its trace there
  convId: null, // router.js, composer.js (which creates a conversation on its first message)
  convTitle: null, // router.js, composer.js
  loadGen: 0, // router.js, composer.js: bumps on every switch, so late answers of an older one are dropped
  lastSeq: 0, // transcript.js: the last event drawn (composer.js resets it for a new conversation)
  turns: new Map(), // transcript.js: turn_id → Turn
  pending: [], // composer.js, transcript.js: turns sent but not yet confirmed (no turn id yet)
};
