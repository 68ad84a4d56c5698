// natsplug example plugin in JavaScript: rewrites request paths by a prefix
// table.
//
// The table is the config value `routes`: comma-separated `from=to` pairs,
// e.g. "/old=/new,/api/v1=/v2". A request path matches `from` when it is
// `from` itself or continues it with `/` (so `/api/v1` matches `/api/v1` and
// `/api/v1/users`, never `/api/v10`); the longest matching `from` wins and
// is replaced by `to`. A matched request goes on (`next`) with
//
//   * `path` set to the new path, the request's query (if any) kept after `?`;
//   * request headers `x-original-path` and `x-rewritten-path` set to the old
//     and new paths, for the upstream and its logs.
//
// Other requests go on unchanged. A malformed table makes every call fail
// (`fail`) with a message saying which entry is wrong.

import { configGet, log } from "natsplug:plugin/host@0.1.0";

const VERSION = "1.0.0";

// Parsed on the first call: the config is fixed for the life of an instance.
let routes = null;
let routesError = null;

/**
 * Parse a `routes` value into `[from, to]` pairs, longest `from` first.
 * Trailing slashes are dropped, so the root route `/` becomes "".
 */
export function parseRoutes(spec) {
  const table = [];
  for (const entry of spec.split(",")) {
    const trimmed = entry.trim();
    if (trimmed === "") {
      continue;
    }
    const equals = trimmed.indexOf("=");
    if (equals < 0) {
      throw new Error(`route \`${trimmed}\` is not of the form /from=/to`);
    }
    const from = trimmed.slice(0, equals).trim();
    const to = trimmed.slice(equals + 1).trim();
    for (const side of [from, to]) {
      if (!side.startsWith("/") || /[\s?#\x00-\x1f\x7f]/.test(side)) {
        throw new Error(
          `route \`${trimmed}\`: \`${side}\` must start with / and hold no spaces, ? or #`,
        );
      }
    }
    table.push([stripTrailingSlashes(from), stripTrailingSlashes(to)]);
  }
  table.sort((a, b) => b[0].length - a[0].length);
  return table;
}

function stripTrailingSlashes(path) {
  return path.replace(/\/+$/, "");
}

/**
 * The mapping: the new path for `path` under `table`, or null when no route
 * matches or the route maps the path onto itself.
 */
export function rewritePath(table, path) {
  for (const [from, to] of table) {
    if (path === from || path.startsWith(from + "/")) {
      const rewritten = to + path.slice(from.length) || "/";
      return rewritten === path ? null : rewritten;
    }
  }
  return null;
}

function table() {
  if (routes === null && routesError === null) {
    try {
      routes = parseRoutes(configGet("routes") ?? "");
    } catch (error) {
      routesError = `config \`routes\`: ${error.message}`;
    }
  }
  return routes;
}

function decision(action, fields = {}) {
  return {
    action,
    requestHeaders: undefined,
    responseHeaders: undefined,
    status: undefined,
    body: undefined,
    error: undefined,
    path: undefined,
    state: undefined,
    ...fields,
  };
}

export const handler = {
  describe() {
    return { version: VERSION, phases: ["request-filter"] };
  },

  requestFilter(ctx, request) {
    const current = table();
    if (current === null) {
      log("error", routesError, []);
      return decision("fail", { error: routesError });
    }
    const rewritten = rewritePath(current, request.path);
    if (rewritten === null) {
      return decision("next");
    }
    log("info", "rewrote the request path", [
      ["from", { tag: "text", val: request.path }],
      ["to", { tag: "text", val: rewritten }],
    ]);
    const query = request.query ? `?${request.query}` : "";
    return decision("next", {
      path: rewritten + query,
      requestHeaders: {
        set: [
          ["x-original-path", request.path],
          ["x-rewritten-path", rewritten],
        ],
        remove: [],
      },
    });
  },

  // The phases below are not listed by `describe`, so the host never calls them.
  responseFilter() {
    return decision("next");
  },
  responseBodyFilter() {
    return decision("next");
  },
  logging() {},
};
