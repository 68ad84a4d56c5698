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
// Other requests go on unchanged. `init` parses the table once per instance
// and refuses a malformed one, saying which entry is wrong, so the host fails
// the load of the plugin instead of serving it. The component exports only
// `init` and `request-filter` (its world is
// examples/js-rewriter/wit/world.wit).

import { log } from "natsplug:plugin/host@0.2.0";

const VERSION = "1.0.0";

// Header values are bytes in the contract.
const encoder = new TextEncoder();

// This instance's table: empty until `init`, which the host calls on every
// new instance before its first call (the config is fixed for the life of an
// instance).
let routes = [];

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

/**
 * The `[name, value]` pairs (both Uint8Array) of a header buffer, in order.
 *
 * The layout is the one documented at `type fields` in wit/plugin.wit: for
 * each field, the name's length (u32, little endian), the name's bytes, the
 * value's length (u32, little endian), the value's bytes.
 */
export function* headerFields(buffer) {
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  let offset = 0;
  while (offset < view.byteLength) {
    const parts = [];
    for (let part = 0; part < 2; part++) {
      if (offset + 4 > view.byteLength) {
        throw new Error("header buffer ends inside a length");
      }
      const length = view.getUint32(offset, true);
      offset += 4;
      if (offset + length > view.byteLength) {
        throw new Error("header buffer ends inside a field");
      }
      parts.push(buffer.subarray(offset, offset + length));
      offset += length;
    }
    yield parts;
  }
}

/**
 * The value of the first header called `name` (compared case-insensitively),
 * decoded as UTF-8, or null.
 */
export function header(buffer, name) {
  const decoder = new TextDecoder();
  const wanted = name.toLowerCase();
  for (const [key, value] of headerFields(buffer)) {
    if (decoder.decode(key).toLowerCase() === wanted) {
      return decoder.decode(value);
    }
  }
  return null;
}

export const init = {
  init(config) {
    const spec = config.find(([key]) => key === "routes")?.[1] ?? "";
    try {
      routes = parseRoutes(spec);
    } catch (error) {
      // The host fails the load: "plugin `NAME` refused its configuration
      // in `init`: <this message>". The refusal is returned as the result's
      // error: an Error thrown out of `init` would trap the instance instead.
      return { tag: "err", val: `config \`routes\`: ${error.message}` };
    }
    return { tag: "ok", val: { version: VERSION } };
  },
};

export const requestFilter = {
  requestFilter(ctx, request) {
    const rewritten = rewritePath(routes, request.path);
    if (rewritten === null) {
      return { tag: "next", val: {} };
    }
    log("info", "rewrote the request path", [
      ["from", { tag: "text", val: request.path }],
      ["to", { tag: "text", val: rewritten }],
    ]);
    const query = request.query ? `?${request.query}` : "";
    return {
      tag: "next",
      val: {
        path: rewritten + query,
        headers: {
          set: [
            ["x-original-path", encoder.encode(request.path)],
            ["x-rewritten-path", encoder.encode(rewritten)],
          ],
          remove: [],
        },
      },
    };
  },
};
