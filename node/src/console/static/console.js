// The Synod approver console's script: WebAuthn calls and the JSON calls behind the
// buttons. No framework, no build step, nothing kept in local storage: the session is an
// HttpOnly cookie this script cannot read. Every POST carries X-Synod-Console: 1, which a
// page of another site cannot send (the server's CSRF check).
"use strict";

// base64url (no padding) <-> bytes, as WebAuthn names binary fields.
function fromB64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "===".slice((b64.length + 3) % 4);
  const raw = atob(padded);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function toB64url(buffer) {
  const bytes = new Uint8Array(buffer);
  let raw = "";
  for (let i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
  return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Writes what happened into #message (as text, never as markup).
function say(text, isError) {
  const message = document.getElementById("message");
  if (!message) return;
  message.textContent = text;
  message.className = isError ? "error" : "ok";
}

// A JSON call to the console; resolves to the answer, or throws its {error}.
async function call(method, path, body) {
  const init = { method: method, credentials: "same-origin", headers: { "X-Synod-Console": "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let answer = {};
  try {
    answer = await response.json();
  } catch (_) {
    answer = {};
  }
  if (!response.ok) {
    throw new Error(answer.error || ("the node answered " + response.status));
  }
  return answer;
}

// navigator.credentials.get for `challenge` (base64url), user verification required. An empty
// `credentialIds` (a login) lets the browser offer the discoverable passkeys it holds.
async function assert(challenge, rpId, credentialIds) {
  const credential = await navigator.credentials.get({
    publicKey: {
      challenge: fromB64url(challenge),
      rpId: rpId,
      allowCredentials: credentialIds.map(function (id) { return { type: "public-key", id: fromB64url(id) }; }),
      userVerification: "required",
      timeout: 120000,
    },
  });
  if (!credential) throw new Error("no passkey answered");
  return {
    credential_id: toB64url(credential.rawId),
    authenticator_data: toB64url(credential.response.authenticatorData),
    client_data_json: toB64url(credential.response.clientDataJSON),
    signature: toB64url(credential.response.signature),
  };
}

function failed(what) {
  return function (error) { say(what + ": " + (error && error.message ? error.message : error), true); };
}

async function login(event) {
  event.preventDefault();
  const operator = document.getElementById("operator").value.trim();
  if (!operator) { say("Enter your operator name.", true); return; }
  say("Touch your passkey…");
  const begun = await call("POST", "/console/login/begin", { operator: operator });
  const assertion = await assert(begun.challenge, begun.rp_id, begun.credential_ids);
  await call("POST", "/console/login/finish", { operator: operator, assertion: assertion });
  say("Logged in.");
  window.location.assign("/console/requests");
}

async function register(event) {
  event.preventDefault();
  const operator = document.getElementById("operator").value.trim();
  const label = document.getElementById("label").value.trim();
  if (!operator || !label) { say("Enter your operator name and a name for the passkey.", true); return; }
  say("Create the passkey on your authenticator…");
  const begun = await call("POST", "/console/register/begin", { operator: operator });
  const credential = await navigator.credentials.create({
    publicKey: {
      challenge: fromB64url(begun.challenge),
      rp: { id: begun.rp_id, name: begun.rp_name },
      user: { id: fromB64url(begun.user_id), name: operator, displayName: operator },
      pubKeyCredParams: [{ type: "public-key", alg: -7 }, { type: "public-key", alg: -8 }],
      // Discoverable: a login names no credential (the node does not say who has which), so
      // the authenticator must find the passkey by the RP ID alone.
      authenticatorSelection: { userVerification: "required", residentKey: "required", requireResidentKey: true },
      attestation: "none",
      timeout: 120000,
    },
  });
  if (!credential) throw new Error("no passkey was created");
  const registration = {
    credential_id: toB64url(credential.rawId),
    client_data_json: toB64url(credential.response.clientDataJSON),
    attestation_object: toB64url(credential.response.attestationObject),
  };
  const done = await call("POST", "/console/register/finish", { operator: operator, label: label, registration: registration });
  document.getElementById("fingerprint").textContent = done.fingerprint;
  say(done.message || ("Ask an admin to approve passkey " + done.fingerprint));
}

// Approve or deny the request on this page: fetch its statement's challenge from the node,
// sign it with the passkey, and post the assertion.
async function verdict(kind) {
  const section = document.getElementById("request");
  const id = section.getAttribute("data-request-id");
  const path = "/console/requests/" + encodeURIComponent(id);
  let reason = "";
  if (kind === "deny") {
    reason = document.getElementById("reason").value.trim();
    if (!reason) { say("Say why you deny the request.", true); return; }
  }
  const statement = await call("GET", path + "/statement" + (kind === "deny" ? "?denial=1" : ""));
  const shown = document.getElementById("statement-sha256").textContent.trim();
  if (kind === "approve" && statement.statement_sha256 !== shown) {
    throw new Error("the statement changed since the page was loaded; reload the page and check it again");
  }
  say("Touch your passkey to " + kind + "…");
  const assertion = await assert(statement.challenge, statement.rp_id, statement.credential_ids);
  const body = kind === "deny" ? { reason: reason, assertion: assertion } : { assertion: assertion };
  const done = await call("POST", path + "/" + kind, body);
  document.getElementById("status").textContent = done.status;
  const progress = document.getElementById("progress");
  if (progress && done.approval_progress) progress.textContent = done.approval_progress.join("; ");
  say(done.message);
  for (const button of ["approve", "deny"]) {
    const element = document.getElementById(button);
    if (element) element.disabled = true;
  }
}

async function logout() {
  await call("POST", "/console/logout");
  window.location.assign("/console/login");
}

function on(id, event, handler, what) {
  const element = document.getElementById(id);
  if (!element) return;
  element.addEventListener(event, function (e) {
    Promise.resolve(handler(e)).catch(failed(what));
  });
}

document.addEventListener("DOMContentLoaded", function () {
  if (!window.PublicKeyCredential) {
    say("This browser offers no passkeys (WebAuthn); open the console in a current browser over HTTPS.", true);
  }
  on("login-form", "submit", login, "Login failed");
  on("register-form", "submit", register, "Registration failed");
  on("approve", "click", function () { return verdict("approve"); }, "Approval refused");
  on("deny", "click", function () { return verdict("deny"); }, "Denial refused");
  on("logout", "click", logout, "Logout failed");
});
