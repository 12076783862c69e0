// HTTP access to the jobcast API, with the optional bearer token.

const TOKEN_KEY = 'jobcast.token';

/** Fires `required` whenever the server answers 401, so the page can ask for a token. */
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

/**
 * Calls the API and never throws: network failures come back as status 0.
 * Resolves to {status, ok, data, headers}, `data` being the parsed JSON body (or its text).
 */
export async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (sessionToken) headers.Authorization = `Bearer ${sessionToken}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    return { status: 0, ok: false, data: null, headers: new Headers(), error };
  }
  if (response.status === 401) auth.dispatchEvent(new Event('required'));
  return { status: response.status, ok: response.ok, data: await readBody(response), headers: response.headers };
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** Whether the page has a token to send. */
export function hasToken() {
  return Boolean(sessionToken);
}

/**
 * The URL of a stream. EventSource cannot send headers; when the server protects reads, it
 * answers a request that sends the token with an HttpOnly cookie, which the EventSource then
 * carries. So the token never goes into a URL, where access logs and history would keep it.
 */
export function streamUrl(path, lastEventId) {
  const url = new URL(path, window.location.origin);
  if (lastEventId) url.searchParams.set('last_event_id', String(lastEventId));
  return url.pathname + url.search;
}

/** The server's explanation of a failed answer, as one line of text. */
export function detailText(response) {
  if (response.status === 0) return 'Could not reach the server. Check the connection and try again.';
  const data = response.data;
  const detail = data && typeof data === 'object' && 'detail' in data ? data.detail : data;
  if (typeof detail === 'string' && detail) return detail;
  if (Array.isArray(detail)) return detail.map((item) => item.msg ?? JSON.stringify(item)).join('; ');
  if (detail) return JSON.stringify(detail);
  return `The server answered ${response.status}.`;
}
