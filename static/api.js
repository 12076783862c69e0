// The page's access to the API: the client module's calls, with the page's token.

import { JobcastError, request as call } from './jobcast-client.js';

const TOKEN_KEY = 'jobcast.token';

/**
 * Fires `required` whenever the server answers 401, so the page can ask for a token;
 * `event.detail.refused` says whether the page had sent one.
 */
export const auth = new EventTarget();

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

let sessionToken = storedToken();

export function setToken(token) {
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage can be disabled; the token then lasts until the page reloads.
  }
  sessionToken = token;
}

/** Whether the page has a token to send. */
export function hasToken() {
  return Boolean(sessionToken);
}

/**
 * The client module's options for this page: its token. Streams need no token in their URL:
 * with reads protected, the module's first request sends it as a header, and the server
 * answers with an HttpOnly cookie that the EventSource then carries.
 */
export function connection() {
  return sessionToken ? { token: sessionToken } : {};
}

/** Raises the token prompt when `error` is a 401. */
export function noteRefusal(error) {
  if (error?.status === 401) auth.dispatchEvent(new CustomEvent('required', { detail: { refused: hasToken() } }));
}

/**
 * Calls the API and never throws: a failure comes back with `error`, a JobcastError (status
 * 0 when the server could not be reached). Resolves to {status, ok, data, error}.
 */
export async function request(method, path, body) {
  try {
    const { status, data } = await call(method, path, { ...connection(), body });
    return { status, ok: true, data, error: null };
  } catch (error) {
    if (!(error instanceof JobcastError)) throw error;
    noteRefusal(error);
    return { status: error.status, ok: false, data: error.body, error };
  }
}

/** What went wrong, as a sentence: the server's message (or the module's). */
export function detailText(error) {
  const text = error?.message || 'The server did not say why.';
  const sentence = text.charAt(0).toUpperCase() + text.slice(1);
  return /[.!?]$/.test(sentence) ? sentence : `${sentence}.`;
}
